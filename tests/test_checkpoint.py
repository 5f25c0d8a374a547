"""safetensors headers → exact bytes per tensor and per device; every malformed header is refused clearly.

The fixture checkpoint is written with the safetensors package (the only use of it: writing), as
a tiny Llama in HF tensor names, sharded into two files with a model.safetensors.index.json. Its
per-device bytes under the default partition rules must equal geometry() for a ModelSpec built
directly from the same sizes. Corrupt headers are written byte by byte.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from estimator import Layout, ModelSpec, geometry
from estimator.core.partition_rules import default_rules, shard_weights, weight_bytes_per_stage
from estimator.model.checkpoint import (
    MAX_HEADER_BYTES,
    CheckpointTensor,
    read_checkpoint,
    read_header,
    read_index,
)
from meshes import InputError

safetensors_numpy = pytest.importorskip("safetensors.numpy")

TINY = ModelSpec(name="tiny-llama", model_type="llama", num_layers=3, hidden_size=64,
                 num_attention_heads=4, num_kv_heads=2, head_dim=16, vocab_size=250,
                 intermediate_size=96, max_position_embeddings=256, weight_dtype="float16")


def tiny_arrays(m: ModelSpec) -> dict[str, np.ndarray]:
    """HF Llama tensors of ``m`` ([out, in] linear weights), float16, filled with zeros."""
    h, q, kv, f = m.hidden_size, m.num_attention_heads * m.head_dim, m.num_kv_heads * m.head_dim, \
        m.intermediate_size
    shapes = {"model.embed_tokens.weight": (m.vocab_size, h), "model.norm.weight": (h,),
              "lm_head.weight": (m.vocab_size, h)}
    for i in range(m.num_layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                       p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                       p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
                       p + "mlp.down_proj.weight": (h, f)})
    return {name: np.zeros(shape, np.float16) for name, shape in shapes.items()}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """Two shards (embedding + layers 0-1 | layer 2 + norm + head) and their index."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    arrays = tiny_arrays(TINY)
    first = {k: v for k, v in arrays.items() if "embed" in k or ".layers.0." in k or ".layers.1." in k}
    second = {k: v for k, v in arrays.items() if k not in first}
    names = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    safetensors_numpy.save_file(first, folder / names[0], metadata={"format": "pt"})
    safetensors_numpy.save_file(second, folder / names[1], metadata={"format": "pt"})
    weight_map = {k: names[0] for k in first} | {k: names[1] for k in second}
    total = sum(a.nbytes for a in arrays.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return folder


def test_reads_every_tensor_of_a_sharded_checkpoint(sharded):
    ckpt = read_checkpoint(sharded)
    arrays = tiny_arrays(TINY)
    assert len(ckpt) == len(arrays) == 3 + 3 * 9
    assert ckpt.total_bytes == sum(a.nbytes for a in arrays.values())
    assert ckpt.bytes_by_dtype() == {"F16": ckpt.total_bytes}
    assert ckpt.parameter_count == sum(a.size for a in arrays.values())
    assert ckpt.metadata == {"format": "pt"} and ckpt.warnings == ()
    q = ckpt["model.layers.2.self_attn.q_proj.weight"]
    assert q == CheckpointTensor("model.layers.2.self_attn.q_proj.weight", "F16", (64, 64), 64 * 64 * 2,
                                 str(sharded / "model-00002-of-00002.safetensors"))
    assert read_checkpoint(sharded / "model.safetensors.index.json") == ckpt


def test_header_agrees_with_the_safetensors_library(sharded):
    from safetensors import safe_open

    for file in sorted(sharded.glob("*.safetensors")):
        header = read_header(file)
        with safe_open(file, framework="numpy") as f:
            assert sorted(f.keys()) == sorted(t.name for t in header.tensors)
            for t in header.tensors:
                assert list(f.get_slice(t.name).get_shape()) == list(t.shape)
                assert f.get_slice(t.name).get_dtype() == t.dtype
            assert f.metadata() == header.metadata


def test_only_the_header_is_read(sharded, monkeypatch):
    file = sharded / "model-00001-of-00002.safetensors"
    read: list[int] = []
    real_open = Path.open

    def counting_open(self, *args, **kwargs):
        handle = real_open(self, *args, **kwargs)
        real_read = handle.read

        class Spy:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                handle.close()

            def read(self, n=-1):
                data = real_read(n)
                read.append(len(data))
                return data

        return Spy()

    monkeypatch.setattr(Path, "open", counting_open)
    header = read_header(file)
    assert read == [8, header.header_bytes]
    assert header.data_bytes == file.stat().st_size - 8 - header.header_bytes > sum(read)


@pytest.mark.parametrize("tp", [1, 2, 4])  # TP4: 2 KV heads replicated, 250 vocab rows padded to 252
def test_per_device_bytes_equal_geometry(sharded, tp):
    ckpt = read_checkpoint(sharded)
    shards = shard_weights(ckpt.tensors, default_rules(TINY.head_dim), {"data": 1, "tensor": tp})
    assert shards.bytes_per_device == geometry(TINY, Layout(tensor=tp)).stages[0].weight_bytes
    assert shards.total_bytes == ckpt.total_bytes


@pytest.mark.parametrize("layout", [Layout(tensor=2, pipeline=2), Layout(data=2, tensor=4, pipeline=3)])
def test_per_stage_bytes_equal_geometry(sharded, layout):
    got = weight_bytes_per_stage(read_checkpoint(sharded).tensors, TINY, layout)
    assert got == {s.stage: s.weight_bytes for s in geometry(TINY, layout).stages}


def test_single_file_and_folder_without_index(tmp_path):
    arrays = tiny_arrays(TINY)
    safetensors_numpy.save_file(arrays, tmp_path / "model.safetensors")
    assert read_checkpoint(tmp_path).total_bytes == sum(a.nbytes for a in arrays.values())
    assert len(read_checkpoint(tmp_path / "model.safetensors")) == len(arrays)
    loose = tmp_path / "loose"
    loose.mkdir()
    safetensors_numpy.save_file({"a": np.zeros(3, np.float32)}, loose / "a.safetensors")
    safetensors_numpy.save_file({"b": np.zeros(2, np.int8)}, loose / "b.safetensors")
    ckpt = read_checkpoint(loose)
    assert ckpt.bytes_by_dtype() == {"F32": 12, "I8": 2} and "no index file" in ckpt.warnings[0]


def test_index_extras_and_total_size_mismatch_are_warnings(tmp_path):
    safetensors_numpy.save_file({"a": np.zeros(4, np.float32), "b": np.zeros(4, np.float32)},
                                tmp_path / "s.safetensors")
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 999}, "weight_map": {"a": "s.safetensors"}}))
    ckpt = read_index(index)
    assert ckpt.total_bytes == 32
    assert "1 tensors in the shards are not in" in ckpt.warnings[0]
    assert "total_size=999" in ckpt.warnings[1]


# ------------------------------------------------------------------------------------ bad input
def write_raw(path: Path, header: object, data: int = 0, *, length: int | None = None) -> Path:
    """A .safetensors file by hand: u64 header length, the header bytes, ``data`` zero bytes."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + bytes(data))
    return path


def entry(dtype="F32", shape=(2,), offsets=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


@pytest.mark.parametrize(("header", "data", "match"), [
    ([1, 2], 0, r"header='list' .* a JSON object"),
    (b"null", 0, r"header='NoneType' .* a JSON object"),  # not "nested too deep"
    (b"\xff\xfe{}", 0, r"header='4 bytes' .* UTF-8 JSON"),
    (b'{"w": ', 0, r"header='6 bytes' .* UTF-8 JSON"),
    (b'{"w": {}, "w": {}}', 0, r"duplicate key 'w'"),
    ({"w": entry("F12")}, 8, r"tensor 'w' dtype='F12' .* one of BOOL, F4"),
    ({"w": entry(["BF16"])}, 8, r"tensor 'w' dtype=\['BF16'\] .* one of BOOL, F4"),  # not hashable
    ({"w": entry(shape=(2, -1))}, 8, r"tensor 'w' shape=\[2, -1\]"),
    ({"w": entry(offsets=(8, 0))}, 8, r"tensor 'w' data_offsets=\[8, 0\] .* 0 ≤ begin ≤ end"),
    ({"w": entry(shape=(3,))}, 8, r"tensor 'w' data_offsets=\[0, 8\] .* \[3\] × F32 = 12 bytes \(got 8\)"),
    ({"w": entry(offsets=(8, 16))}, 8, r"tensor 'w' data_offsets=\[8, 16\] .* inside the data region of 8"),
    ({"a": entry(), "b": entry(offsets=(4, 12))}, 12, r"tensor 'b' data_offsets=\[4, 12\] .* overlap tensor 'a'"),
    ({"w": entry("F4", (3,), (0, 2))}, 2, r"tensor 'w' shape=\[3\] .* whole number of bytes of F4"),
    ({"w": {"dtype": "F32", "shape": [2]}}, 8, r"tensor 'w'=.* dtype, shape and data_offsets"),
    ({"__metadata__": {"format": 1}, "w": entry()}, 8, r"__metadata__=.* a JSON object of strings"),
])
def test_corrupt_headers_are_refused(tmp_path, header, data, match):
    file = write_raw(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(InputError, match=match) as err:
        read_header(file)
    assert str(file) in str(err.value)


def test_valid_hand_written_header_with_packed_dtype(tmp_path):
    file = write_raw(tmp_path / "ok.safetensors", {"__metadata__": {"k": "v"}, "w": entry("F4", (2, 3), (0, 3)),
                                                   "e": entry("BF16", (0, 4), (3, 3))}, 3)
    h = read_header(file)
    assert [(t.name, t.nbytes) for t in h.tensors] == [("w", 3), ("e", 0)] and h.metadata == {"k": "v"}


def test_truncated_files(tmp_path):
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x05\x00\x00")
    with pytest.raises(InputError, match=r"short.safetensors: file size='3 bytes'.*truncated"):
        read_header(short)
    cut = write_raw(tmp_path / "cut.safetensors", b'{"w": {}}', length=4096)
    with pytest.raises(InputError, match=r"cut.safetensors: header length=4096 .* truncated"):
        read_header(cut)


def test_header_size_is_capped(tmp_path):
    huge = write_raw(tmp_path / "huge.safetensors", b"{}", length=MAX_HEADER_BYTES + 1)
    with pytest.raises(InputError, match=r"header length=100000001 .* at most 100,000,000 bytes"):
        read_header(huge)
    small = write_raw(tmp_path / "small.safetensors", {"w": entry()}, 8)
    with pytest.raises(InputError, match=r"at most 16 bytes"):
        read_header(small, max_header_bytes=16)


def test_index_naming_a_missing_shard(sharded, tmp_path):
    for f in sharded.glob("*.safetensors"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = "model-00003-of-00003.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match=r"shard='model-00003-of-00003.safetensors' .*missing: .*"
                                         r"'model.norm.weight'"):
        read_checkpoint(tmp_path)


def test_index_naming_a_tensor_the_shard_lacks(sharded, tmp_path):
    for f in sharded.glob("*.safetensors"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.3.mlp.up_proj.weight"] = "model-00002-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match=r"tensor 'model.layers.3.mlp.up_proj.weight'="
                                         r"'model-00002-of-00002.safetensors'.*header of .* does not"):
        read_checkpoint(tmp_path)


@pytest.mark.parametrize(("index", "match"), [
    ({"weight_map": {}}, "weight_map"),
    ([], "weight_map"),
    ({"weight_map": {"w": "../outside.safetensors"}}, r"relative to the index's folder"),
    ({"weight_map": {"w": "/abs.safetensors"}}, r"relative to the index's folder"),
])
def test_bad_index_files(tmp_path, index, match):
    path = tmp_path / "model.safetensors.index.json"
    path.write_text(json.dumps(index))
    with pytest.raises(InputError, match=match):
        read_index(path)
    path.write_text("{not json")
    with pytest.raises(InputError, match="UTF-8 JSON"):
        read_index(path)


def test_tensor_stored_twice_is_refused(tmp_path):
    write_raw(tmp_path / "a.safetensors", {"w": entry()}, 8)
    write_raw(tmp_path / "b.safetensors", {"w": entry()}, 8)
    with pytest.raises(InputError, match=r"tensor 'w'='b.safetensors' .* stored once"):
        read_checkpoint(tmp_path)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "consolidated.00.pth",
                                  "pytorch_model.bin.index.json"])
def test_pickles_are_refused_unread(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x80\x04K\x2a.")  # a pickle; never opened
    with pytest.raises(InputError, match=r"pickle checkpoints .* are refused"):
        read_checkpoint(path)
    with pytest.raises(InputError, match=r"are refused .* \(found only"):
        read_checkpoint(tmp_path)


def test_missing_paths(tmp_path):
    with pytest.raises(InputError, match="an existing"):
        read_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(InputError, match="an existing"):
        read_checkpoint(tmp_path / "nope")
    with pytest.raises(InputError, match="refused"):
        read_checkpoint(tmp_path)  # an empty folder


# ------------------------------------------------------------------------- plan(weights=...)
def _plan_takes_weights() -> bool:
    import inspect

    from estimator.planning.plan import plan

    return "weights" in inspect.signature(plan).parameters


wired = pytest.mark.skipif(not _plan_takes_weights(),
                           reason="plan(weights=...) / kvfit plan --weights not wired yet")


@wired
def test_plan_charges_checkpoint_weights(sharded):
    from estimator import plan

    base = plan(TINY, "4xH100-80GB", "tp4", activation_bytes=0)
    from_ckpt = plan(TINY, "4xH100-80GB", "tp4", activation_bytes=0, weights=sharded)
    assert from_ckpt == base  # the checkpoint holds exactly what the analytic count charges
    more = base.devices[0].weights_bytes + 2**30
    heavier = plan(TINY, "4xH100-80GB", "tp4", activation_bytes=0, weights={0: more})
    assert {r.weights_bytes for r in heavier.devices} == {more}
    assert heavier.pages_per_replica < base.pages_per_replica
    assert "weights from the given table" in heavier.warnings[-1]
    with pytest.raises(InputError, match="weights"):
        plan(TINY, "4xH100-80GB", "tp4", weights={1: 0})


@wired
def test_cli_plan_weights_option(sharded, tmp_path):
    from typer.testing import CliRunner

    from estimator.cli.app import app

    folder = tmp_path / "tiny"
    folder.mkdir()
    for f in sharded.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "num_hidden_layers": 3, "hidden_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 250, "intermediate_size": 96,
        "max_position_embeddings": 256, "torch_dtype": "float16", "tie_word_embeddings": False}))
    args = ["plan", "--model", str(folder), "--mesh", "4xH100-80GB", "--tp", "4", "--json"]
    runner = CliRunner()
    base = runner.invoke(app, args)
    got = runner.invoke(app, [*args, "--weights", str(folder)])
    assert base.exit_code == got.exit_code == 0, got.output
    assert json.loads(got.stdout)["devices"] == json.loads(base.stdout)["devices"]
    bad = runner.invoke(app, [*args, "--weights", str(folder / "pytorch_model.bin")])
    assert bad.exit_code == 2 and "pickle checkpoints" in bad.output


@pytest.mark.parametrize("header", [{}, {"__metadata__": None}])
def test_a_checkpoint_without_tensors_is_refused(tmp_path, header):
    # 0 B of weights would be a number, silently wrong; an empty header is refused as a checkpoint
    write_raw(tmp_path / "model.safetensors", header)
    with pytest.raises(InputError, match="at least one tensor"):
        read_checkpoint(tmp_path)

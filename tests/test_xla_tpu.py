"""Deviceless TPU compiles (kvfit[tpu]): per-chip numbers from libtpu with no TPU attached.

Skipped unless the libtpu wheel is importable (``pip install 'kvfit[tpu]'``, or libtpu on
PYTHONPATH). Runs in a subprocess so libtpu's start-up does not touch this test session's JAX.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from meshes import InputError

HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(
    not HAVE_LIBTPU, reason="libtpu not installed: pip install 'kvfit[tpu]' (libtpu 0.0.42.* for "
                            "jax 0.10.2) to compile against deviceless TPU topologies")

SCRIPT = textwrap.dedent("""
    from estimator import ModelSpec, plan
    from estimator.xla import compile_report

    m = ModelSpec(name="tpu-tiny", model_type="llama", num_layers=2, hidden_size=512,
                  num_attention_heads=8, num_kv_heads=4, head_dim=128, vocab_size=32000,
                  intermediate_size=1024, max_position_embeddings=4096)
    PAGE, PAGES = 128, 512
    for mesh, layout, topology in (("v5e-4", "tp4", "v5e:2x2"), ("v5e-4", "dp2xtp2", "v5e:2x2"),
                                   ("v6e-4", "tp4", "v6e:2x2"), ("v5p-4", "tp4", "v5p:2x2x1")):
        p = plan(m, mesh, layout, page_size=PAGE)
        r = compile_report(m, mesh, layout, page_size=PAGE, pages_per_replica=PAGES,
                           prefill_tokens=512, decode_batch=8, decode_context_tokens=512)
        assert r.backend == "tpu" and r.topology == topology and not r.proxy, r
        assert "Deviceless TPU compile" in r.caveat
        heads = 4 // int(layout[-1])  # KV heads per chip
        pool = 2 * 2 * PAGES * PAGE * heads * 128 * 2
        for s in r.steps:
            assert s.weight_bytes == p.devices[0].weights_bytes, (mesh, layout, s)
            assert s.kv_pool_bytes == pool
            # XLA:TPU pads tiny 1-D inputs to a tile (s32[8] takes 512 B): a few hundred bytes
            assert 0 <= s.argument_bytes - (s.weight_bytes + pool + s.input_bytes) < 4096, s
            assert s.alias_bytes == pool, (mesh, layout, s)
            assert s.temp_bytes < pool // 4, (mesh, layout, s)  # no copy of the pool
            assert s.generated_code_bytes > 0
    r = compile_report(m, "v5e-4", "tp4", tpu_topology="v5e:2x4", steps=("decode",),
                       prefill_tokens=512, decode_batch=8)
    assert r.topology == "v5e:2x4"
    print("TPU-OK")
""")


@pytest.mark.oracle
@needs_libtpu
def test_deviceless_tpu_compiles_give_exact_per_chip_arguments():
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TPU_SKIP_MDS_QUERY="1", ALLOW_MULTIPLE_LIBTPU_LOAD="1")
    env.pop("JAX_PLATFORMS", None)  # conftest pins this session to the CPU; the topology needs libtpu
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=root,
                         env=env, timeout=300)
    assert out.returncode == 0 and "TPU-OK" in out.stdout, out.stdout + out.stderr[-5000:]


def test_topology_names_fit_the_chip_count():
    xla = pytest.importorskip("estimator.xla.compile")
    assert xla.topology_name("TPU-v5e", 1) == "v5e:2x2"
    assert xla.topology_name("TPU-v5e", 16) == "v5e:4x4"
    assert xla.topology_name("TPU-v6e", 8) == "v6e:2x4"
    assert xla.topology_name("TPU-v5p", 8) == "v5p:2x2x2"
    assert xla.topology_name("TPU-v4", 8) == "v4:2x2x1"  # v4 topologies list two devices a chip
    with pytest.raises(InputError, match="tpu_topology"):
        xla.topology_name("TPU-v5e", 1024)


@pytest.mark.skipif(HAVE_LIBTPU, reason="checks the message shown when libtpu is missing")
def test_tpu_mesh_without_libtpu_says_how_to_get_it():
    pytest.importorskip("flax")
    import estimator.xla as xla

    with pytest.raises(InputError, match=r"kvfit\[tpu\]"):
        xla.compile_report("llama-3.1-8b", "v5e-4", "tp4", prefill_tokens=128, decode_batch=4)

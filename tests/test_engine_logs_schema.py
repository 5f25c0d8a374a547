"""Schema and self-consistency of the public start-up log corpus (tests/engine_logs, see its README).

Checks that every entry has the documented keys and types, that every logged number is printed in one of
the entry's verbatim raw lines (so the data cannot drift from its source text), and a few identities the
engines' own log formats guarantee (e.g. vLLM's "GPU KV cache size" / request length = "Maximum concurrency").
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent / "engine_logs"
ENGINES = {"vllm", "sglang", "trtllm", "max", "tpu-inference"}
VLLM_BUCKETS = {"vllm V0", "vllm V1 <=0.9", "vllm 0.10-0.19", "vllm current (>=0.20)"}
KINDS = {"issue", "pr", "discussion", "docs", "page", "file"}
REQUIRED = {
    "id": str, "source": dict, "engine": str, "engine_version": str, "version_bucket": str, "version_evidence": str,
    "model": str,
    "gpu": str, "num_gpus": int, "parallel": dict, "flags": dict, "logged": dict, "raw_lines": list,
    "in_tests": bool, "notes": str,
}
NULLABLE_STR = ("dtype", "quantization", "kv_cache_dtype")
# at least one of these: the KV capacity the engine printed (blocks, tokens or bytes)
KV_KEYS = {"kv_cache_gib", "num_gpu_blocks", "kv_cache_tokens", "max_total_num_tokens", "kv_cache_max_tokens",
           "kv_cache_bytes", "trt_max_tokens", "blocks_primary_pool", "max_seq_len_kv_capacity_tokens"}

FILES = sorted(p for p in ROOT.glob("*/*.json"))


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _items(logged: dict):
    for key, val in logged.items():
        for item in val if isinstance(val, list) else [val]:
            yield key, item


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def test_corpus_is_indexed():
    index = _load(ROOT / "index.json")
    listed = {e["path"] for e in index["entries"]}
    on_disk = {str(p.relative_to(ROOT)) for p in FILES}
    assert listed == on_disk
    assert index["count"] == len(on_disk)
    ids = [e["id"] for e in index["entries"]]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_entry_schema(path: Path):
    e = _load(path)
    for key, typ in REQUIRED.items():
        assert isinstance(e.get(key), typ), (key, e.get(key))
    for key in NULLABLE_STR:
        assert key in e and (e[key] is None or isinstance(e[key], str)), key
    assert e["id"] == path.stem
    assert e["engine"] in ENGINES and path.parent.name == e["engine"]
    assert e["version_bucket"] in (VLLM_BUCKETS if e["engine"] == "vllm" else {e["engine"]})
    src = e["source"]
    assert src["kind"] in KINDS
    assert src["repo"] is None or (isinstance(src["repo"], str) and src["repo"].count("/") == 1)
    assert src["number"] is None or isinstance(src["number"], int)
    assert src["url"].startswith("https://") and isinstance(src["title"], str)
    if src["kind"] in ("issue", "pr"):
        assert src["repo"] and src["number"] and f"{src['repo']}/" in src["url"] and str(src["number"]) in src["url"]
    par = e["parallel"]
    assert set(par) >= {"tp", "pp", "dp", "ep"}
    assert all(isinstance(v, int) and v >= 1 for v in par.values())
    assert e["num_gpus"] >= par["tp"] * par["pp"]
    assert e["raw_lines"] and all(isinstance(ln, str) and ln for ln in e["raw_lines"])
    assert KV_KEYS & set(e["logged"]), "no KV capacity figure"
    if "gpu_total_memory_gib" in e:
        assert isinstance(e["gpu_total_memory_gib"], (int, float)) and 4 < e["gpu_total_memory_gib"] < 300


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_logged_numbers_are_in_raw_lines(path: Path):
    e = _load(path)
    for key, item in _items(e["logged"]):
        assert set(item) >= {"value", "text", "unit", "raw"}, key
        assert item["raw"] in e["raw_lines"], key
        assert item["text"] in item["raw"], key
        assert isinstance(item["value"], (int, float)) and not isinstance(item["value"], bool), key
        assert math.isclose(_num(item["text"]), item["value"]), key
    # SGLang's MLA pools print one 'KV size: X GB'; it must not also be read as a V size.
    for _, item in _items({"v_size_gb": e["logged"].get("v_size_gb", [])}):
        assert re.search(r"(?<!K)V size: " + re.escape(item["text"]), item["raw"]), "v_size_gb read from 'KV size'"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_log_identities(path: Path):
    """Identities that hold by construction of the engines' own log lines."""
    e = _load(path)
    lg, exempt = e["logged"], set(e.get("exempt_identities", []))
    # vLLM V1: "Maximum concurrency for L tokens per request: Xx" prints GPU KV cache size / L with 2 decimals
    conc_keys = ("kv_cache_tokens", "max_concurrency", "max_concurrency_request_tokens")
    if "concurrency" not in exempt and all(k in lg and not isinstance(lg[k], list) for k in conc_keys):
        ratio = lg["kv_cache_tokens"]["value"] / lg["max_concurrency_request_tokens"]["value"]
        assert abs(ratio - lg["max_concurrency"]["value"]) <= 0.0051 + 1e-9
    # SGLang MHA pools: K and V buffers are the same size
    if "k_size_gb" in lg and "v_size_gb" in lg and not isinstance(lg["k_size_gb"], list):
        assert lg["k_size_gb"]["value"] == lg["v_size_gb"]["value"]
    # TRT-LLM: "Allocated X GiB for max tokens in paged KV cache (N)": N is whole blocks
    if "kv_cache_max_tokens" in lg and "tokens_per_block" in lg and not isinstance(lg["tokens_per_block"], list):
        tpb = lg["tokens_per_block"]["value"]
        assert lg["kv_cache_max_tokens"]["value"] % tpb == 0
    # TRT-LLM (one attention window): the max-tokens figure is the primary pool's blocks x tokens per block
    trt_keys = ("kv_cache_max_tokens", "tokens_per_block", "blocks_primary_pool")
    if "trt_blocks" not in exempt and all(k in lg and not isinstance(lg[k], list) for k in trt_keys):
        blocks, tpb = lg["blocks_primary_pool"]["value"], lg["tokens_per_block"]["value"]
        assert blocks * tpb == lg["kv_cache_max_tokens"]["value"]
    # SGLang: the scheduler's max_total_num_tokens is the token count the pool was allocated with
    if "sglang_tokens" not in exempt and all(
        k in lg and not isinstance(lg[k], list) for k in ("max_total_num_tokens", "kv_cache_tokens")
    ):
        assert lg["max_total_num_tokens"]["value"] == lg["kv_cache_tokens"]["value"]

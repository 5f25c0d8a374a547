"""Generated inputs for the differential tests against MAX 26.7.0 (plain data, no kvfit, no MAX).

Every case is ``(oracle function name, keywords)`` in ``max_oracle``'s vocabulary; the same keywords
drive kvfit through ``kvfit_side.run``. Inputs are chosen to reach MAX's edges: every DType as a
cache dtype, every value/scale dtype pair (NVFP4 included), granularities that do and do not
divide the head dim, sliding windows, slots per page, speculative methods (an unknown one too),
connectors, budgets and lengths at 2^31, 2^32, 2^53 and whole-page multiples ± 1, negative budgets,
both KV managers (argument and raw ``MODULAR_USE_LEGACY_KV_CACHE`` values), disaggregation, vision
reservations, models without a KV cache and devices that report no stats.
"""

from __future__ import annotations

import math
import random

ALL_DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
              "float16", "float32", "float64", "bfloat16", "float4_e2m1fn", "float6_e2m3fn",
              "float6_e3m2fn", "float8_e8m0fnu", "float8_e4m3fn", "float8_e4m3fnuz",
              "float8_e5m2", "float8_e5m2fnuz"]
KV_DTYPES = ["bfloat16", "float32", "float16", "float8_e4m3fn", "float8_e4m3fnuz", "int8", "uint8"]
SCALE_DTYPES = ["float32", "float8_e8m0fnu", "float16", "float8_e4m3fn", "int8", "bfloat16"]
METHODS = [None, "eagle", "mtp", "dflash", "dflash2", "dspark", "eagle", "mtp", "dflash", "bogus"]
LEGACY_ENV_VALUES = ["1", "true", "TRUE", "Yes", "y", "0", "", "on", "no", "2"]
EDGES = [2**31 - 1, 2**31, 2**31 + 1, 2**32 - 1, 2**32, 2**32 + 1, 2**53 - 1, 2**53, 2**53 + 1]
MiB, GiB = 2**20, 2**30
TALLY: dict[str, list[int]] = {}  # family -> [cases ran, matched], filled by the tests, summarised


def _dtype_size(name: str) -> int:
    return {"int16": 2, "uint16": 2, "float16": 2, "bfloat16": 2, "int32": 4, "uint32": 4,
            "float32": 4, "int64": 8, "uint64": 8, "float64": 8}.get(name, 1)


def geometry(rng: random.Random, *, quantized_share: float = 0.45, plain: bool = False) -> dict:
    """One ``_make_params`` keyword set (may be one MAX refuses: that is part of the test)."""
    is_mla = rng.random() < 0.2
    dp = rng.choice([1, 1, 1, 2, 4])
    tp = rng.choice([1, 1, 2, 4, 8])
    kv = rng.choice([1, 2, 4, 8, 8, 8, 16, 32, 3 if rng.random() < 0.3 else 8])
    replicate = rng.random() < 0.85 if kv % tp else rng.random() < 0.1
    head_dim = rng.choice([64, 128, 128, 96, 80, 256, 576, 16, 48, 100])
    if is_mla:
        head_dim = rng.choice([576, 512, 64, head_dim])
    dtype = rng.choice(KV_DTYPES) if rng.random() < 0.8 else rng.choice(ALL_DTYPES)
    q_heads = rng.choice([tp, 8 * tp, 128, 128, 7 if rng.random() < 0.3 else 64])
    g = dict(n_kv_heads=kv, head_dim=head_dim,
             num_layers=rng.choice([1, 4, 32, 61, 80, rng.randint(1, 128)]),
             dtype=dtype, page_size=rng.choice([128, 128, 128, 256, 16, 64, 100]), n_devices=dp * tp,
             dp=dp, is_mla=is_mla, num_q_heads=q_heads if is_mla else None,
             allow_replication=replicate)
    if rng.random() < 0.03:
        g["dp"] = rng.choice([0, 3, dp * tp + 1])
    if plain:
        return g
    if rng.random() < quantized_share:
        if rng.random() < 0.2:  # NVFP4, sometimes with a wrong granularity
            g.update(dtype="uint8", quant_scale_dtype="float8_e4m3fn",
                     quant_granularity=rng.choice([16, 16, 16, 32]))
        else:
            g["dtype"] = rng.choice(["float8_e4m3fn", "float8_e4m3fnuz", "int8", dtype])
            g["quant_scale_dtype"] = (rng.choice(SCALE_DTYPES) if rng.random() < 0.85
                                      else rng.choice(ALL_DTYPES))
            g["quant_granularity"] = rng.choice([128, 128, 64, 32, 16, head_dim, 16,
                                                 rng.choice([3, 48, 256, 7])])
    if rng.random() < 0.12:
        g["slots_per_page"] = rng.choice([g["page_size"] // 2, g["page_size"] // 4, g["page_size"],
                                          rng.choice([3, 0])])
    if rng.random() < 0.15:
        g["window_size"] = rng.choice([2, 1, 512, 4096, 129, 8193])
    n_draft = rng.choice([0, 0, 0, 1, 2, 3, 5])
    if n_draft or rng.random() < 0.1:
        g["num_draft_tokens"] = n_draft
        g["speculative_method"] = rng.choice(METHODS)
    if rng.random() < 0.3:
        g["enable_prefix_caching"] = rng.random() < 0.5
    if rng.random() < 0.06:
        g["kv_connector"] = rng.choice(["tiered", "rust_tiered", "dkv"])
        g["enable_prefix_caching"] = rng.random() < 0.7
    if rng.random() < 0.1:
        g["per_layer_buffers"] = True
    return g


def page_bytes(g: dict) -> int:
    """Rough bytes of one page over all replicas (only to aim budgets near page multiples)."""
    tp = max(g["n_devices"] // max(g["dp"], 1), 1)
    heads = 1 if g["is_mla"] else max(g["n_kv_heads"] // tp, 1)
    kv_dim = 1 if g["is_mla"] else 2
    value = kv_dim * g["num_layers"] * g["page_size"] * heads * g["head_dim"] * _dtype_size(g["dtype"])
    scale = 0
    if g.get("quant_scale_dtype"):
        gran = max(g.get("quant_granularity", 128), 1)
        scale = (kv_dim * g["num_layers"] * g["page_size"] * heads * math.ceil(g["head_dim"] / gran)
                 * _dtype_size(g["quant_scale_dtype"]))
    return max((value + scale) * tp * max(g["dp"], 1), 1)


def budget(rng: random.Random, g: dict) -> int:
    """A KV budget: page multiples ± 1, the integer edges, negatives, or anything up to 2^62."""
    unit = page_bytes(g)
    pick = rng.random()
    if pick < 0.45:
        return rng.choice([0, 1, 2, 3, 5, 8, 40, 1000, rng.randint(0, 50000)]) * unit + rng.choice([-1, 0, 0, 1])
    if pick < 0.65:
        return rng.choice(EDGES) + rng.choice([0, 0, unit, -unit])
    if pick < 0.72:
        return rng.choice([-1, -unit, -unit - 1, -(2**40)])
    return rng.choice([rng.randint(0, 2**40), rng.randint(0, 2**50), rng.randint(0, 2**62)])


def length(rng: random.Random, page: int = 128) -> int:
    """A sequence length: small, page multiples ± 1, or the integer edges."""
    return rng.choice([1, 2, 127, 128, 129, 1000, 4096, 32768, 131072, 1 << 20,
                       page * rng.randint(1, 4096) + rng.choice([-1, 0, 1]),
                       rng.choice(EDGES), rng.randint(1, 300000)])


def legacy_choice(rng: random.Random):
    """False/True (explicit), or a raw MODULAR_USE_LEGACY_KV_CACHE value (read from the env)."""
    pick = rng.random()
    if pick < 0.55:
        return False
    if pick < 0.85:
        return True
    return rng.choice(LEGACY_ENV_VALUES)


def params_cases(rng: random.Random, n: int) -> list[tuple[str, dict]]:
    """Construction and every derived property of KVCacheParams."""
    return [("kv_params_info", geometry(rng)) for _ in range(n)]


def page_count_cases(rng: random.Random, n: int) -> list[tuple[str, dict]]:
    """compute_num_device_blocks / estimated_memory_size / compute_max_seq_len_fitting_in_cache."""
    out = []
    for _ in range(n):
        g = geometry(rng, quantized_share=0.3)
        k = budget(rng, g)
        null = rng.random() < 0.5
        fn = rng.choice(["num_device_blocks", "num_device_blocks", "estimated_memory_size",
                         "max_seq_len_fitting"])
        if fn == "max_seq_len_fitting":
            out.append((fn, dict(g, available_cache_memory=k, include_null_block=null)))
            continue
        batch = rng.choice([None, 1, 8, 512, 0, rng.randint(1, 4096), 2**31]) if fn == "num_device_blocks" \
            else rng.choice([1, 8, 512, rng.randint(1, 4096), 2**31])
        seq = rng.choice([None, length(rng, g["page_size"])]) if fn == "num_device_blocks" \
            else length(rng, g["page_size"])
        kw = dict(g, available_cache_memory=k, max_batch_size=batch, max_seq_len=seq,
                  include_null_block=null)
        if fn == "num_device_blocks":
            kw["require_max_seq_len_fits"] = rng.random() < 0.3
        out.append((fn, kw))
    return out


def manager_cases(rng: random.Random, n: int) -> list[tuple[str, dict]]:
    """The registry's Jenga/legacy pricing: kv_cache_memory_size and max_seq_len_fitting_in_cache."""
    out = []
    for _ in range(n):
        g = geometry(rng)
        g.pop("per_layer_buffers", None)
        k = budget(rng, g)
        extra = dict(legacy=legacy_choice(rng), is_di_enabled=rng.random() < 0.12)
        if rng.random() < 0.5:
            out.append(("kv_cache_memory_size",
                        dict(g, available_cache_memory=k, max_batch_size=rng.choice([1, 8, 512, 2**31]),
                             max_seq_len=length(rng, g["page_size"]), **extra)))
        else:
            out.append(("max_seq_len_fitting_in_cache", dict(g, available_cache_memory=k, **extra)))
    return out


def jenga_cases(rng: random.Random, n: int) -> list[tuple[str, dict]]:
    """Quantised (two-leaf) and windowed caches near Jenga's huge-block edges, both managers."""
    out = []
    for _ in range(n):
        g = geometry(rng, plain=True)
        g["dp"] = 1 if rng.random() < 0.7 else g["dp"]
        if g["n_devices"] % max(g["dp"], 1):
            g["dp"] = 1
        if rng.random() < 0.8:
            g.update(dtype=rng.choice(["float8_e4m3fn", "float8_e4m3fnuz", "int8"]),
                     quant_scale_dtype=rng.choice(["float32", "float8_e8m0fnu", "float16"]),
                     quant_granularity=rng.choice([16, 32, 64, 128]))
            g["head_dim"] = rng.choice([64, 128, 256, 576, 192])
        else:
            g.update(dtype="uint8", quant_scale_dtype="float8_e4m3fn", quant_granularity=16)
        if rng.random() < 0.25:
            g["window_size"] = rng.choice([512, 4096, 129])
        if rng.random() < 0.3:
            g.update(num_draft_tokens=rng.choice([1, 3]), speculative_method=rng.choice(["eagle", "dflash"]))
        per_device = page_bytes(g) // max(g["n_devices"], 1)
        k = rng.choice([rng.randint(0, 70), rng.randint(70, 5000), rng.randint(0, 3)]) * per_device \
            + rng.choice([-1, 0, 1, rng.randint(0, per_device)])
        k = max(k, 0) * g["n_devices"] + rng.choice([0, 0, 1, g["n_devices"] - 1])
        legacy = legacy_choice(rng)
        if rng.random() < 0.5:
            out.append(("kv_cache_memory_size",
                        dict(g, available_cache_memory=k, max_batch_size=rng.choice([1, 2, 8, 512]),
                             max_seq_len=length(rng, g["page_size"]), legacy=legacy)))
        else:
            out.append(("max_seq_len_fitting_in_cache", dict(g, available_cache_memory=k, legacy=legacy)))
    return out


def geometry_plan_cases(rng: random.Random, n: int) -> list[tuple[str, dict]]:
    """``plan_jenga_geometry`` on leaf sizes that do not divide each other, with padding allowed."""
    out = []
    for _ in range(n):
        leaves = {}
        for i in range(rng.choice([1, 2, 2, 3])):
            row = rng.choice([16, 48, 64, 96, 128, 192, 512, 576, 1152, 2048])
            leaves[f"leaf{i}"] = (rng.randint(1, 300) * row, row)
        if rng.random() < 0.05:
            leaves["leaf0"] = (leaves["leaf0"][0] + 1, leaves["leaf0"][1])  # not whole rows
        biggest = max(size for size, _ in leaves.values())
        pick = rng.random()
        if pick < 0.06:
            avail = rng.choice([0, -5])
        elif pick < 0.3:
            avail = rng.randint(0, 8 * biggest)
        else:
            avail = rng.randint(biggest, 2**34) if pick < 0.7 else rng.randint(2**30, 2**40)
        out.append(("jenga_geometry", dict(
            available_bytes=avail, cache_sizes={k: v[0] for k, v in leaves.items()},
            row_sizes={k: v[1] for k, v in leaves.items()},
            include_null_block=rng.random() < 0.8,
            max_padding_fraction=rng.choice([0.0, 0.0, 0.01, 0.05, 0.1, 0.25]))))
    return out


def footprint_case(rng: random.Random) -> tuple[str, dict]:
    """One ``plan_from_sizes`` configuration."""
    g = geometry(rng, quantized_share=0.3)
    n = g["n_devices"]
    per_device = rng.choice([rng.randint(MiB, GiB), rng.randint(GiB, 200 * GiB), 24 * GiB, 80 * GiB,
                             rng.choice(EDGES) // max(n, 1), 64 * MiB])
    free = [per_device] * n
    util = rng.choice([0.5, 0.9, 0.9, 0.95, 0.99, 1.0, 1.2, 1.5, 0.29, 0.7])
    w = rng.randint(0, int(per_device * n * rng.random() * 1.05))
    a = rng.choice([0, 0, rng.randint(0, max(per_device // 4, 1))])
    s = rng.choice([0, 294_387_728 * n if n > 1 else 0, 294_387_728])
    max_len = length(rng, g["page_size"]) if rng.random() < 0.9 else rng.choice([None, 4096, 4096])
    kw = dict(g, free_memory_per_device=free, utilization=util, weights=w, activations=a, signal=s,
              max_length=max_len, max_length_user_provided=rng.random() < 0.5,
              max_batch_size=rng.choice([None, None, None, 1, 8, 512, 9000]),
              max_batch_input_tokens=rng.choice([8192, 8192, 8192, 100, 1]),
              max_batch_total_tokens=rng.choice([None, None, None, 2048]),
              requires_max_batch_context_length=rng.random() < 0.3,
              draft_max_seq_len=rng.choice([None, None, None, rng.randint(1, 200000)]),
              total_memory_per_device=None, max_single_alloc_size_per_device=None,
              legacy=legacy_choice(rng), device_kind="cpu" if n == 1 and rng.random() < 0.25 else "gpu",
              with_arch=rng.random() < 0.9, arch_name=rng.choice(["kvfit_stub", "Qwen2_5_VLForConditionalGeneration"]),
              is_disaggregated=rng.random() < 0.08)
    if rng.random() < 0.1:
        kw["max_single_alloc_size_per_device"] = [rng.choice([GiB, 4 * GiB, per_device // 3 + 1])] * n
    if rng.random() < 0.2:  # a vision tower
        kw["vision_entry_bytes"] = rng.choice([1, 10**6])
        kw["vision_row_spec"] = rng.choice([[3584, "bfloat16"], [1280, "float32"], [10, "uint8"],
                                            [8192, "bfloat16"], None])
        kw["vision_cache_utilization"] = rng.choice([0.05, 0.05, 0.0, 0.001, 0.5, 1e-9])
    if rng.random() < 0.1:
        kw["has_kv_cache"] = False
    if rng.random() < 0.03:
        kw["virtual_devices"] = rng.choice([1, 8])
    if rng.random() < 0.04:
        kw["device_stats"] = rng.choice([{}, {"free_memory": 0, "total_memory": per_device},
                                         {"free_memory": 0}])
    return "estimate_footprint", kw


def footprint_cases(rng: random.Random, n: int) -> list[tuple[str, dict]]:
    return [footprint_case(rng) for _ in range(n)]


def available_cases(rng: random.Random, n: int) -> list[tuple[str, dict]]:
    """``_available_kv_cache_memory``: float truncation of free · util − static."""
    out = []
    for _ in range(n):
        free = [rng.choice([rng.randint(0, 2**37), rng.choice(EDGES)]) for _ in range(rng.randint(1, 8))]
        out.append(("available_kv_cache_memory", dict(
            free_memory_per_device=free,
            utilization=rng.choice([0.29, 0.7, 0.8, 0.9, 0.95, 1.0, 1.5, rng.random()]),
            weights=rng.randint(0, 2**36), activations=rng.randint(0, 2**32),
            signal=rng.randint(0, 2**29), total_memory_per_device=None)))
    return out

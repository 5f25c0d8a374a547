"""XLA-backed memory (estimator.xla): the reference decoder compiled abstractly on one CPU device.

Byte counts asserted here are computed independently (parameter counts, pool and input shapes by
hand); XLA's numbers must match them exactly. Multi-device meshes: test_xla_multidevice.py; TPU
topologies: test_xla_tpu.py.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from estimator import DeviceMesh, Layout, ModelSpec, geometry, parameter_count, plan
from estimator.core.partitioning import ShardedTensor
from meshes import InputError

ROOT = Path(__file__).resolve().parents[1]

TINY = ModelSpec(name="tiny", model_type="llama", num_layers=3, hidden_size=128,
                 num_attention_heads=4, num_kv_heads=2, head_dim=32, vocab_size=500,
                 intermediate_size=256, max_position_embeddings=4096)
TOKENS, BATCH, CONTEXT, PAGE, PAGES = 256, 8, 512, 16, 40


@pytest.fixture(scope="module")
def xla():
    pytest.importorskip("flax")
    import estimator.xla

    return estimator.xla


@pytest.fixture(scope="module")
def cpu1():
    return DeviceMesh.from_preset("1xCPU-host")


@pytest.fixture(scope="module")
def report(xla, cpu1):
    return xla.compile_report(TINY, cpu1, prefill_tokens=TOKENS, decode_batch=BATCH,
                              decode_context_tokens=CONTEXT, page_size=PAGE, pages_per_replica=PAGES)


def test_import_estimator_does_not_import_flax():
    code = ("import sys, estimator, estimator.planning.plan, estimator.core.partitioning; "
            "assert 'estimator.xla' not in sys.modules; "
            "from estimator.xla import XlaCompileError, CompileReport; "  # flax-free names
            "assert 'flax' not in sys.modules, 'flax imported'; print('light')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "light" in out.stdout, out.stderr


def test_weight_pool_and_input_arguments_are_exact(report, cpu1):
    weights = parameter_count(TINY) * 2  # bf16, one device: the whole model
    assert plan(TINY, cpu1, page_size=PAGE).devices[0].weights_bytes == weights
    pool = 2 * TINY.num_layers * PAGES * PAGE * TINY.num_kv_heads * TINY.head_dim * 2
    prefill_inputs = 4 * TOKENS * 4 + 4 * min(BATCH, TOKENS)  # ids, positions, segments, slots; samples
    decode_inputs = 4 * BATCH * 2 + 4 * BATCH * (CONTEXT // PAGE)  # ids, positions; page table
    for step, inputs in (("prefill", prefill_inputs), ("decode", decode_inputs)):
        s = report.step(step)
        assert s.weight_bytes == weights
        assert s.kv_pool_bytes == pool
        assert s.input_bytes == inputs
        assert s.argument_bytes == weights + pool + inputs  # XLA's own count
        assert s.alias_bytes >= pool and s.pool_donated  # the pool is donated, updated in place
        assert s.output_bytes >= pool and s.temp_bytes > 0
        assert s.total_bytes == s.generated_code_bytes + s.argument_bytes + s.output_bytes \
            - s.alias_bytes + s.temp_bytes


def test_report_says_what_compiled_it(report):
    assert report.backend == "cpu" and report.target_platform == "cpu" and not report.proxy
    assert "XLA:CPU upcasts bf16" in report.caveat
    assert report.activation_bytes == max(s.temp_bytes for s in report.steps)
    d = report.to_dict()
    assert d["activation_bytes"] == report.activation_bytes and len(d["steps"]) == 2
    md = report.to_markdown()
    assert "| prefill | 0 |" in md and "| decode | 0 |" in md


def test_temp_does_not_grow_with_the_pool(xla, cpu1, report):
    bigger = xla.compile_report(TINY, cpu1, prefill_tokens=TOKENS, decode_batch=BATCH,
                                decode_context_tokens=CONTEXT, page_size=PAGE,
                                pages_per_replica=4 * PAGES, steps=("decode",))
    assert bigger.step("decode").kv_pool_bytes == 4 * report.step("decode").kv_pool_bytes
    assert bigger.step("decode").temp_bytes == report.step("decode").temp_bytes


def test_plan_uses_xla_activations(xla, cpu1):
    p = plan(TINY, cpu1, page_size=PAGE, activations="xla", max_batch_input_tokens=TOKENS,
             max_batch_size=BATCH)
    expected = xla.xla_activation_bytes(geometry(TINY, Layout(), page_size=PAGE), cpu1,
                                        prefill_tokens=TOKENS, decode_batch=BATCH)
    assert p.devices[0].activation_bytes == expected > 0


def test_gpu_mesh_is_not_compiled_on_cpu_silently(xla):
    gpu = DeviceMesh.from_preset("1xH100-80GB")
    with pytest.raises(InputError, match="allow_cpu_proxy"):
        xla.compile_report(TINY, gpu, prefill_tokens=TOKENS, decode_batch=BATCH)
    with pytest.raises(InputError, match="CPU temp bytes are not a gpu budget"):
        plan(TINY, gpu, activations="xla", max_batch_input_tokens=TOKENS)
    with pytest.warns(RuntimeWarning, match="CPU proxy"):
        r = xla.compile_report(TINY, gpu, prefill_tokens=TOKENS, decode_batch=BATCH, page_size=PAGE,
                               decode_context_tokens=CONTEXT, steps=("decode",), allow_cpu_proxy=True)
    assert r.proxy and r.backend == "cpu" and r.target_platform == "gpu"
    assert r.caveat.startswith("PROXY") and "NOT a gpu budget" in r.caveat


def test_too_few_local_devices_says_how_to_get_them(xla):
    import jax

    if len(jax.devices("cpu")) >= 8:
        pytest.skip("this process already has 8 CPU devices")
    with pytest.raises(InputError, match="xla_force_host_platform_device_count=8"):
        xla.compile_report(TINY, "8xCPU-host", "tp2xdp4")


@pytest.mark.parametrize(("fields", "feature"), [
    (dict(kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128),
     "multi-head latent attention"),
    (dict(layer_types=("sliding_attention", "full_attention", "sliding_attention"), sliding_window=64),
     "sliding-window attention"),
    (dict(layer_types=("mamba", "full_attention", "mamba"), ssm_inner_size=256, ssm_state_size=16,
          ssm_conv_kernel=4), "recurrent 'mamba' layers"),
    (dict(weight_quant="fp8_block"), "quantised weights"),
])
def test_inexpressible_models_name_the_feature(xla, cpu1, fields, feature):
    spec = dataclasses.replace(TINY, **fields)
    with pytest.raises(InputError, match=feature) as err:
        xla.compile_report(spec, cpu1, prefill_tokens=TOKENS, decode_batch=BATCH)
    assert "not expressible yet" in str(err.value)
    assert xla.unsupported_features(geometry(spec, Layout(), page_size=PAGE))


def test_sharding_rules_must_map_every_axis_evenly(xla):
    from estimator.xla.compile import check_rules

    arrays = (ShardedTensor("w", 0, (8, 6), ("tensor", None), "bfloat16"),
              ShardedTensor("pool", 0, (10, 4), ("data", None), "bfloat16"))
    sizes = {"data": 2, "expert": 1, "tensor": 4}
    every = {"data": "data", "expert": "expert", "tensor": "tensor"}
    check_rules(every, arrays[:1], sizes)
    with pytest.raises(InputError, match="'tensor'.*unmapped"):
        check_rules({"data": "data", "expert": "expert"}, arrays, sizes)
    with pytest.raises(InputError, match="distinct mesh axis"):
        check_rules({"data": "x", "expert": "e", "tensor": "x"}, arrays, sizes)
    with pytest.raises(InputError, match="logical axes"):
        check_rules({**every, "pipeline": "p"}, arrays, sizes)
    with pytest.raises(InputError, match=r"pool\(10, 4\).*divisible by 4"):
        check_rules({"data": "d", "expert": "e", "tensor": "t"}, arrays, {"data": 4, "expert": 1, "tensor": 4})


def test_renamed_mesh_axes_compile_the_same(xla, cpu1, report):
    r = xla.compile_report(TINY, cpu1, prefill_tokens=TOKENS, decode_batch=BATCH, page_size=PAGE,
                           decode_context_tokens=CONTEXT, pages_per_replica=PAGES, steps=("decode",),
                           rules={"data": "batch", "tensor": "model"})
    assert r.step("decode").argument_bytes == report.step("decode").argument_bytes


def test_compile_failure_is_one_error_naming_step_and_mesh(xla, cpu1, monkeypatch):
    from estimator.xla import decoder

    def broken(self, *args):
        raise TypeError("planted failure")

    monkeypatch.setattr(decoder.Decoder, "decode", broken)
    with pytest.raises(xla.XlaCompileError, match=r"decode step \(pipeline stage 0\).*1 x cpu") as err:
        xla.compile_report(TINY, cpu1, prefill_tokens=TOKENS, decode_batch=BATCH, steps=("decode",))
    assert "planted failure" in str(err.value) and err.value.step == "decode"


def test_bad_options_are_refused(xla, cpu1):
    with pytest.raises(InputError, match="steps"):
        xla.compile_report(TINY, cpu1, steps=("train",))
    with pytest.raises(InputError, match="layer_loop"):
        xla.compile_report(TINY, cpu1, layer_loop="vmap")
    with pytest.raises(InputError, match="prefill_tokens"):
        xla.compile_report(TINY, cpu1, prefill_tokens=0)
    with pytest.raises(InputError, match="tpu_topology"):
        xla.compile_report(TINY, cpu1, tpu_topology="v5e:2x2")


def test_attention_blocks_match_dense_attention(xla):
    """The blockwise prefill and the page-by-page decode equal plain softmax attention."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from estimator.xla.decoder import _flash_prefill, _paged_decode

    rng = np.random.default_rng(0)
    t, kv, g, d = 37, 2, 3, 8
    q = rng.standard_normal((t, kv, g, d)).astype(np.float32)
    k, v = (rng.standard_normal((t, kv, d)).astype(np.float32) for _ in range(2))
    seg = np.array([0] * 20 + [1] * 17, np.int32)
    sinks = rng.standard_normal(kv * g).astype(np.float32)

    def dense(qi, ki, vi, mask, sink):
        s = np.einsum("qkgd,pkd->kgqp", qi, ki) / np.sqrt(d)
        s = np.where(mask, s, -np.inf)
        logits = s if sink is None else np.concatenate(
            [s, np.broadcast_to(sink.reshape(kv, g, 1, 1), (*s.shape[:3], 1))], -1)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p = (p / p.sum(-1, keepdims=True))[..., : s.shape[-1]]
        return np.einsum("kgqp,pkd->qkgd", p, vi)

    causal = (seg[:, None] == seg[None, :]) & (np.arange(t)[None, :] <= np.arange(t)[:, None])
    for sink in (None, sinks):
        got = _flash_prefill(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(seg),
                             None if sink is None else jnp.asarray(sink), block=8)
        np.testing.assert_allclose(np.asarray(got), dense(q, k, v, causal, sink), rtol=2e-5, atol=2e-5)

    page, pages = 4, 12
    pool = rng.standard_normal((2, 1, pages, page, kv, d)).astype(np.float32)
    table = np.array([[3, 7, 1], [0, 5, 9]], np.int32)
    context = np.array([10, 5], np.int32)
    qd = rng.standard_normal((2, kv, g, d)).astype(np.float32)
    got = _paged_decode(jnp.asarray(qd), jnp.asarray(pool), 0, jnp.asarray(table), jnp.asarray(context),
                        page, jnp.asarray(sinks), lambda x, dt: x.astype(dt))
    for b in range(2):
        keys = pool[0, 0, table[b]].reshape(-1, kv, d)[: context[b]]
        vals = pool[1, 0, table[b]].reshape(-1, kv, d)[: context[b]]
        want = dense(qd[b][None], keys, vals, np.ones((1, context[b]), bool), sinks)[0]
        np.testing.assert_allclose(np.asarray(got[b]), want, rtol=2e-5, atol=2e-5)
    jax.block_until_ready(got)


def test_compiled_steps_run_and_write_their_slots(xla, cpu1):
    """Run the compiled prefill and decode with real arrays: only the addressed slots change."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    steps, _ = xla.compile_steps(TINY, cpu1, prefill_tokens=32, decode_batch=2,
                                 decode_context_tokens=2 * PAGE, page_size=PAGE,
                                 pages_per_replica=8, kv_cache_dtype="float32")
    prefill, decode = steps
    weights, pool, *_ = prefill.args
    key = iter(jax.random.split(jax.random.key(0), 64))
    params = jax.tree.map(lambda s: 0.1 * jax.random.normal(next(key), s.shape, s.dtype), weights)
    kv = jnp.zeros(pool.shape, pool.dtype)  # XLA:CPU types the pool as its uint32 view
    slots = np.arange(32, dtype=np.int32) + 2 * PAGE  # pages 2 and 3
    tokens, kv = prefill.compiled(params, kv, np.arange(32, dtype=np.int32) % 500,
                                  np.arange(32, dtype=np.int32) % 16, np.arange(32, dtype=np.int32) // 16,
                                  slots, np.array([15, 31], np.int32))
    assert tokens.shape == (2,) and int(tokens.min()) >= 0 and int(tokens.max()) < TINY.vocab_size
    written = np.asarray(jax.lax.bitcast_convert_type(kv, jnp.float32))
    touched = np.any(written != 0, axis=(0, 1, 3, 4, 5))
    assert touched.tolist() == [False, False, True, True, False, False, False, False]
    assert np.isfinite(written).all()
    table = np.array([[2, 3], [2, 3]], np.int32)
    tokens, kv = decode.compiled(params, kv, np.asarray(tokens), np.array([16, 17], np.int32), table)
    after = np.asarray(jax.lax.bitcast_convert_type(kv, jnp.float32))
    changed = np.argwhere(np.any(after != written, axis=(0, 1, 4, 5)))
    assert changed.tolist() == [[3, 0], [3, 1]]  # positions 16, 17 → page table[.,1] = 3


@pytest.mark.parametrize("fields", [
    dict(norms_per_layer=4, qk_norm=True, tie_word_embeddings=True),  # Gemma-style sandwich norms
    dict(norms_per_layer=1, layernorm_bias=True, gated_mlp=False, mlp_bias=True, attention_bias=True,
         attention_out_bias=True, lm_head_bias=True),  # phi-2: parallel block, LayerNorm, fc1/fc2
    dict(gated_attention=True, attention_sinks=True, vision_params=1000),  # gated heads, sinks
    dict(num_experts=4, num_experts_per_token=2, moe_intermediate_size=64, router_bias=True,
         expert_bias=True, num_shared_experts=1, shared_expert_gate=True, first_dense_layers=1),
    dict(num_experts=4, num_experts_per_token=1, moe_intermediate_size=64, num_shared_experts=1,
         moe_layer_step=2),  # Llama-4 Maverick: MoE every second layer, dense MLP between
], ids=["sandwich-norms", "phi2-parallel", "gated-sinks-vision", "moe-shared", "moe-interleaved"])
def test_feature_variants_compile_with_exact_weights(xla, cpu1, fields):
    spec = dataclasses.replace(TINY, **fields)
    weights = plan(spec, cpu1, page_size=PAGE).devices[0].weights_bytes
    assert weights == parameter_count(spec) * 2
    r = xla.compile_report(spec, cpu1, prefill_tokens=64, decode_batch=4, page_size=PAGE,
                           decode_context_tokens=2 * PAGE, pages_per_replica=8, steps=("decode",))
    s = r.step("decode")
    assert s.weight_bytes == weights
    assert s.argument_bytes == weights + s.kv_pool_bytes + s.input_bytes


@pytest.mark.parametrize("tokens,local,rank,block", [(13, 4, 0, 4), (5, 6, 1, 8), (40, 3, 0, 64)])
def test_moe_dispatch_equals_every_expert_weighted(xla, tokens, local, rank, block, monkeypatch):
    """The sorted, block-grouped dispatch computes what a dense loop over experts computes: each
    token's output is the routing-weighted sum of its top-k experts' SwiGLU (experts of other
    shards contribute zero), here against a NumPy loop over every (token, expert) pair."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from estimator.xla import decoder as dec

    monkeypatch.setattr(dec, "MOE_BLOCK_ROWS", block)
    experts, k, hidden, inter = local * 2, 3, 16, 8
    rng = np.random.default_rng(tokens)
    x = rng.standard_normal((tokens, hidden)).astype(np.float32)
    router = rng.standard_normal((experts, hidden)).astype(np.float32)
    gate_up = rng.standard_normal((2, local, 2 * inter, hidden)).astype(np.float32) / 4  # 2 layers
    down = rng.standard_normal((2, local, hidden, inter)).astype(np.float32) / 4
    cfg = dataclasses.replace(
        dec.StageConfig(name="m", stage=0, first=True, last=True, layers=(0,), hidden=hidden,
                        head_dim=8, q_heads=1, kv_heads=1, vocab=10, tensor=1, data=1,
                        expert_axes=("tensor",), experts=experts, experts_per_token=k,
                        gated_mlp=True, gated_attention=False, attention_sinks=False, qk_norm=False,
                        norms_per_layer=2, tie_embeddings=False, page_size=4, kv_dtype="float32",
                        act_dtype="float32"))

    class Fake:
        pass

    fake = Fake()
    fake.cfg = cfg

    def local_fn(xx):
        p = {"mlp.router": jnp.asarray(router),
             "mlp.experts.gate_up_proj": dec._Indexed(jnp.asarray(gate_up), 1),
             "mlp.experts.down_proj": dec._Indexed(jnp.asarray(down), 1)}
        # this shard holds experts [rank·local, (rank+1)·local): fake the axis index
        with jax.named_scope("moe"):
            return dec.Decoder._moe(fake, p, xx)

    def with_rank(xx):
        real = jax.lax.axis_index
        jax.lax.axis_index = lambda name: jnp.int32(rank) if name == "tensor" else real(name)
        try:
            return local_fn(xx)
        finally:
            jax.lax.axis_index = real

    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "tensor"))
    spec = jax.sharding.PartitionSpec()
    got = jax.jit(jax.shard_map(with_rank, mesh=mesh, in_specs=spec, out_specs=spec,
                                check_vma=False))(jnp.asarray(x))

    logits = x @ router.T
    prob = np.exp(logits - logits.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    want = np.zeros_like(x)
    for t in range(tokens):
        top = np.argsort(-prob[t], kind="stable")[:k]
        norm = prob[t, top].sum()
        for e in top:
            if not rank * local <= e < (rank + 1) * local:
                continue
            h = gate_up[1, e - rank * local] @ x[t]
            g, u = h[:inter], h[inter:]
            act = g / (1 + np.exp(-g)) * u
            want[t] += prob[t, e] / norm * (down[1, e - rank * local] @ act)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-4)


def test_analytic_moe_term_charges_vllms_fused_moe_caches():
    """Qwen3-30B-A3B (hidden 2048, 8 of 128 experts of width 768) at 8,192 tokens on one device:
    residual + normed copy 8192·2·2048 values, and per (token, expert) pair the fused-MoE caches
    2·768 + 768 + 2048 values (vLLM fused_experts_impl), bf16 — worked out by hand."""
    from estimator import load_preset
    from estimator.planning.activations import analytic_activation_bytes, moe_dispatch_bytes

    geom = geometry(load_preset("qwen3-30b-a3b"), Layout.parse("tp1"))
    pairs = 8192 * 8
    assert moe_dispatch_bytes(geom, 8192, 2) == pairs * (3 * 768 + 2048) * 2 == 570_425_344
    assert analytic_activation_bytes(geom, 8192, 1) == 8192 * 2 * 2048 * 2 + 570_425_344
    dense = geometry(load_preset("llama-3.1-8b"), Layout.parse("tp1"))
    assert moe_dispatch_bytes(dense, 8192, 2) == 0
    # tp8 · ep2: 64 experts per device, each a quarter of its width (768 / 4 = 192)
    ep2 = geometry(load_preset("qwen3-30b-a3b"), Layout.parse("tp8xep2"))
    assert moe_dispatch_bytes(ep2, 8192, 2) == pairs * (3 * 192 + 2048) * 2
    # dp4 · tp2 · ep4: each expert group spans 2 replicas, which gather their tokens; whole experts
    spans2 = geometry(load_preset("qwen3-30b-a3b"), Layout.parse("dp4xtp2xep4"))
    assert moe_dispatch_bytes(spans2, 8192, 2) == 2 * pairs * (3 * 768 + 2048) * 2

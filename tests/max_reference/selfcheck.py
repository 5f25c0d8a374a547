# ruff: noqa  (diagnostic script, not a test module)
"""Self-check of max_oracle against MAX 26.7.0. Run: KVFIT_MAX_PYTHON=/tmp/maxenv/bin/python python3 selfcheck.py"""

import json
import os
import sys
import time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import max_oracle as mo
print("available:", mo.available())
t=time.perf_counter(); print("max version:", mo.max_version(), "(worker start %.2fs)"%(time.perf_counter()-t))
MiB=2**20; GiB=2**30
L8 = dict(n_kv_heads=8, head_dim=128, num_layers=32, dtype="bf16", page_size=128)
def show(label, f, **kw):
    try:
        r = f(**kw)
    except Exception as e:
        r = f"{type(e).__name__}: {e}"
    print(f"{label}: {r}")
show("L8B bpb TP1", mo.bytes_per_block, **L8)
show("L8B bpb TP2", mo.bytes_per_block, **L8, n_devices=2)
show("L8B bpb TP8", mo.bytes_per_block, **L8, n_devices=8)
show("L8B bpb DP2", mo.bytes_per_block, **L8, n_devices=2, dp=2)
show("L8B bpb TP16 (no replication)", mo.bytes_per_block, **L8, n_devices=16)
show("L8B bpb TP16 replication", mo.bytes_per_block, **L8, n_devices=16, allow_replication=True)
show("L8B bpb f32", mo.bytes_per_block, **dict(L8, dtype="f32"))
show("L8B bpb fp8 (no scales)", mo.bytes_per_block, **dict(L8, dtype="fp8"))
show("L8B info fp8 + f32 scales g128 TP2", mo.kv_params_info, **dict(L8, dtype="fp8"), n_devices=2, quant_scale_dtype="f32")
show("L8B info TP2", mo.kv_params_info, **L8, n_devices=2)
DS = dict(n_kv_heads=1, head_dim=576, num_layers=61, dtype="bf16", is_mla=True, num_q_heads=128)
show("DSv3 MLA bpb TP1", mo.bytes_per_block, **DS)
show("DSv3 MLA bpb TP8", mo.bytes_per_block, **DS, n_devices=8)
show("DSv3 MLA info TP8", mo.kv_params_info, **DS, n_devices=8)
show("MLA q heads 7 TP2", mo.bytes_per_block, **dict(DS, num_q_heads=7), n_devices=2)
show("dp 3 on 4 devices", mo.bytes_per_block, **L8, n_devices=4, dp=3)
show("dp 4 on 2 devices", mo.bytes_per_block, **L8, n_devices=2, dp=4)
show("dp 0", mo.bytes_per_block, **L8, n_devices=2, dp=0)
for n, m in [(0,None),(1,None),(3,None),(3,"eagle"),(1,"eagle"),(3,"mtp"),(3,"dflash"),(3,"dflash2"),(1,"dflash")]:
    show(f"slack n={n} {m}", mo.spec_slack, **L8, num_draft_tokens=n, speculative_method=m)
K=56*GiB
show("L8B blocks K=56GiB B=512 L=131072", mo.num_device_blocks, **L8, available_cache_memory=K, max_batch_size=512, max_seq_len=131072)
show("  + null", mo.num_device_blocks, **L8, available_cache_memory=K, max_batch_size=512, max_seq_len=131072, include_null_block=True)
show("L8B blocks K=56GiB B=1 L=4096 null", mo.num_device_blocks, **L8, available_cache_memory=K, max_batch_size=1, max_seq_len=4096, include_null_block=True)
show("L8B blocks K=56GiB unlimited", mo.num_device_blocks, **L8, available_cache_memory=K, max_batch_size=None, max_seq_len=None)
show("L8B blocks K=56GiB unlimited null", mo.num_device_blocks, **L8, available_cache_memory=K, max_batch_size=None, max_seq_len=None, include_null_block=True)
show("L8B blocks K=15MiB", mo.num_device_blocks, **L8, available_cache_memory=15*MiB, max_batch_size=1, max_seq_len=128)
show("L8B blocks K=17MiB null limited", mo.num_device_blocks, **L8, available_cache_memory=17*MiB, max_batch_size=1, max_seq_len=128, include_null_block=True)
show("L8B blocks K=17MiB null unlimited", mo.num_device_blocks, **L8, available_cache_memory=17*MiB, max_batch_size=None, max_seq_len=None, include_null_block=True)
show("L8B blocks TP2 K=24MiB (across 2 devices)", mo.num_device_blocks, **L8, n_devices=2, available_cache_memory=24*MiB, max_batch_size=1, max_seq_len=128)
show("L8B blocks require fits", mo.num_device_blocks, **L8, available_cache_memory=100*MiB, max_batch_size=1, max_seq_len=1000, require_max_seq_len_fits=True)
show("L8B blocks require fits, slack", mo.num_device_blocks, **L8, num_draft_tokens=3, speculative_method="eagle", available_cache_memory=100*MiB, max_batch_size=1, max_seq_len=1000, require_max_seq_len_fits=True)
show("L8B blocks DP2 K=56GiB B=512 L=131072", mo.num_device_blocks, **L8, n_devices=2, dp=2, available_cache_memory=K, max_batch_size=512, max_seq_len=131072)
show("L8B blocks spec eagle n=3 B=2 L=1000", mo.num_device_blocks, **L8, num_draft_tokens=3, speculative_method="eagle", available_cache_memory=K, max_batch_size=2, max_seq_len=1000)
show("L8B estimated K=56GiB B=512 L=131072", mo.estimated_memory_size, **L8, available_cache_memory=K, max_batch_size=512, max_seq_len=131072)
show("L8B estimated K=56GiB B=1 L=4096", mo.estimated_memory_size, **L8, available_cache_memory=K, max_batch_size=1, max_seq_len=4096)
show("  + null", mo.estimated_memory_size, **L8, available_cache_memory=K, max_batch_size=1, max_seq_len=4096, include_null_block=True)
show("L8B estimated DP2 B=1 L=4096 null", mo.estimated_memory_size, **L8, n_devices=2, dp=2, available_cache_memory=K, max_batch_size=1, max_seq_len=4096, include_null_block=True)
show("L8B maxlen K=56GiB", mo.max_seq_len_fitting, **L8, available_cache_memory=K)
show("L8B maxlen K=56GiB null", mo.max_seq_len_fitting, **L8, available_cache_memory=K, include_null_block=True)
show("L8B maxlen K=56GiB null eagle n=3", mo.max_seq_len_fitting, **L8, available_cache_memory=K, include_null_block=True, num_draft_tokens=3, speculative_method="eagle")
show("L8B maxlen K=16MiB eagle n=100 (floor at 1)", mo.max_seq_len_fitting, **L8, available_cache_memory=16*MiB, num_draft_tokens=100, speculative_method="eagle")
show("L8B maxlen K=16MiB null", mo.max_seq_len_fitting, **L8, available_cache_memory=16*MiB, include_null_block=True)
show("L8B maxlen K=0", mo.max_seq_len_fitting, **L8, available_cache_memory=0)
show("registry maxlen Jenga K=56GiB", mo.max_seq_len_fitting_in_cache, **L8, available_cache_memory=K)
show("registry maxlen legacy K=56GiB", mo.max_seq_len_fitting_in_cache, **L8, available_cache_memory=K, legacy=True)
show("registry maxlen Jenga K=16MiB", mo.max_seq_len_fitting_in_cache, **L8, available_cache_memory=16*MiB)
show("registry maxlen legacy K=16MiB", mo.max_seq_len_fitting_in_cache, **L8, available_cache_memory=16*MiB, legacy=True)
show("registry maxlen Jenga K=32MiB", mo.max_seq_len_fitting_in_cache, **L8, available_cache_memory=32*MiB)
show("registry kvsize Jenga K=56GiB+5 B=512 L=131072", mo.kv_cache_memory_size, **L8, available_cache_memory=K+5, max_batch_size=512, max_seq_len=131072)
show("registry kvsize legacy same", mo.kv_cache_memory_size, **L8, available_cache_memory=K+5, max_batch_size=512, max_seq_len=131072, legacy=True)
show("registry kvsize Jenga K=56GiB B=1 L=4096", mo.kv_cache_memory_size, **L8, available_cache_memory=K, max_batch_size=1, max_seq_len=4096)
show("registry kvsize legacy same", mo.kv_cache_memory_size, **L8, available_cache_memory=K, max_batch_size=1, max_seq_len=4096, legacy=True)
show("signal NUM_BYTES", mo.signal_buffer_num_bytes)
show("avail 80GiB util .9 w16GiB", mo.available_kv_cache_memory, free_memory_per_device=[80*GiB], utilization=0.9, weights=16*GiB)
show("avail 100 util .29 w0 (float truncation)", mo.available_kv_cache_memory, free_memory_per_device=[100], utilization=0.29, weights=0)
show("avail free=0 -> total", mo.available_kv_cache_memory, free_memory_per_device=[0], total_memory_per_device=[1000], utilization=0.5, weights=0)

D = dict(n_kv_heads=8, head_dim=128, num_layers=4, dtype="bf16", page_size=128)
def fp(label, **kw):
    try:
        r = mo.estimate_footprint(**D, **kw)
    except Exception as e:
        r = f"{type(e).__name__}: {e}"
    print(f"{label}: {json.dumps(r)}")
for legacy in (False, True):
    print(f"--- estimate_footprint legacy={legacy}")
    fp("M1 cpu", free_memory_per_device=[64*MiB], utilization=0.9, weights=1000, max_length=4096, max_length_user_provided=False, device_kind="cpu", requires_max_batch_context_length=True, legacy=legacy)
    fp("M1 gpu (B inferred 512)", free_memory_per_device=[64*MiB], utilization=0.9, weights=1000, max_length=4096, max_length_user_provided=False, legacy=legacy)
    fp("M2 cpu", free_memory_per_device=[64*MiB], utilization=1.5, weights=10*MiB, activations=40*MiB, max_length=4096, max_length_user_provided=False, device_kind="cpu", legacy=legacy)
    fp("M2 cpu user max_length", free_memory_per_device=[64*MiB], utilization=1.5, weights=10*MiB, activations=40*MiB, max_length=4096, max_length_user_provided=True, device_kind="cpu", legacy=legacy)
    fp("M2 cpu user max_length+batch 4", free_memory_per_device=[64*MiB], utilization=1.5, weights=10*MiB, activations=40*MiB, max_length=4096, max_length_user_provided=True, max_batch_size=4, device_kind="cpu", legacy=legacy)
    fp("M2 cpu default max_length, user batch 4", free_memory_per_device=[64*MiB], utilization=1.5, weights=10*MiB, activations=40*MiB, max_length=4096, max_length_user_provided=False, max_batch_size=4, device_kind="cpu", legacy=legacy)
fp("M3 draft 1500", free_memory_per_device=[100*GiB], utilization=0.9, weights=GiB, max_length=4096, max_length_user_provided=False, draft_max_seq_len=1500, device_kind="cpu")
fp("M4 weights>free", free_memory_per_device=[5*MiB], utilization=0.9, weights=50*MiB, max_length=4096, max_length_user_provided=False, device_kind="cpu")
fp("M4b w+a>free", free_memory_per_device=[5*MiB], utilization=0.9, weights=3*MiB, activations=3*MiB, max_length=4096, max_length_user_provided=False, device_kind="cpu")
fp("no room", free_memory_per_device=[64*MiB], utilization=0.5, weights=40*MiB, max_length=4096, max_length_user_provided=False, device_kind="cpu")
fp("K < 1 page (Jenga)", free_memory_per_device=[64*MiB], utilization=0.9, weights=56*MiB, max_length=4096, max_length_user_provided=False, device_kind="cpu")
fp("K < 1 page (legacy)", free_memory_per_device=[64*MiB], utilization=0.9, weights=56*MiB, max_length=4096, max_length_user_provided=False, device_kind="cpu", legacy=True)
fp("K = 1 page + (Jenga)", free_memory_per_device=[64*MiB], utilization=0.9, weights=55*MiB, max_length=4096, max_length_user_provided=False, device_kind="cpu")
fp("K = 1 page + (legacy)", free_memory_per_device=[64*MiB], utilization=0.9, weights=55*MiB, max_length=4096, max_length_user_provided=False, device_kind="cpu", legacy=True)
fp("max_length None", free_memory_per_device=[64*MiB], utilization=0.9, weights=1000, max_length=None, max_length_user_provided=False, device_kind="cpu")
fp("B > max_batch_input_tokens", free_memory_per_device=[64*MiB], utilization=0.9, weights=1000, max_length=4096, max_length_user_provided=False, max_batch_input_tokens=100)
L8F = dict(n_kv_heads=8, head_dim=128, num_layers=32, dtype="bf16", page_size=128)
def fp8b(label, **kw):
    try:
        r = mo.estimate_footprint(**L8F, **kw)
    except Exception as e:
        r = f"{type(e).__name__}: {e}"
    print(f"{label}: {json.dumps(r)}")
fp8b("M11 L8B 1xGPU 80GiB w16GiB L131072 (Jenga)", free_memory_per_device=[80*GiB], utilization=0.9, weights=16*GiB, max_length=131072, max_length_user_provided=False)
fp8b("M11 L8B 1xGPU 80GiB w16GiB L131072 (legacy)", free_memory_per_device=[80*GiB], utilization=0.9, weights=16*GiB, max_length=131072, max_length_user_provided=False, legacy=True)
fp8b("L8B TP2 2x80GiB w16GiB sig 2*NUM_BYTES", free_memory_per_device=[80*GiB]*2, utilization=0.9, weights=16*GiB, signal=2*294387728, max_length=131072, max_length_user_provided=False)
fp8b("L8B DP2 2x80GiB w32GiB", free_memory_per_device=[80*GiB]*2, dp=2, utilization=0.9, weights=32*GiB, max_length=131072, max_length_user_provided=False)
fp8b("L8B 1xGPU 24GiB w16GiB util .95", free_memory_per_device=[24*GiB], utilization=0.95, weights=16*GiB, max_length=131072, max_length_user_provided=False)
fp8b("L8B 1xGPU 24GiB w16GiB util .99 user B=8 L=131072", free_memory_per_device=[24*GiB], utilization=0.99, weights=16*GiB, max_length=131072, max_length_user_provided=True, max_batch_size=8)
fp8b("L8B 1xGPU 24GiB w16GiB util 1.2 default L, B=512", free_memory_per_device=[24*GiB], utilization=1.2, weights=16*GiB, max_length=131072, max_length_user_provided=False)
fp8b("L8B 1xGPU 24GiB w16GiB util 1.2 user L", free_memory_per_device=[24*GiB], utilization=1.2, weights=16*GiB, max_length=131072, max_length_user_provided=True)
fp8b("L8B single_alloc cap 4GiB", free_memory_per_device=[80*GiB], max_single_alloc_size_per_device=[4*GiB], utilization=0.9, weights=16*GiB, max_length=131072, max_length_user_provided=False)
fp8b("L8B eagle n=3", free_memory_per_device=[80*GiB], utilization=0.9, weights=16*GiB, max_length=131072, max_length_user_provided=False, num_draft_tokens=3, speculative_method="eagle")
mo.shutdown()

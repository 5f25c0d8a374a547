"""Peer-to-peer allreduce signal buffers (MAX ``Signals.NUM_BYTES``), charged per GPU of a TP group.

MAX 26.7.0's layout (modular/modular, max/nn/comm/allreduce.py): barrier counters for 8 domains ×
1024 blocks × 8 GPUs, a Lamport region of 3 × 8 × 1 MiB and a 256 MiB scratch buffer.
"""

from __future__ import annotations

MAX_GPUS = 8
MAX_NUM_BLOCKS = 1024
NUM_BARRIER_DOMAINS = MAX_GPUS
LAMPORT_OFFSET = NUM_BARRIER_DOMAINS * 3 * MAX_NUM_BLOCKS * MAX_GPUS * 4 + 16
LAMPORT_BYTES = 3 * MAX_GPUS * 2**20
SCRATCH_BYTES = 256 * 2**20
SIGNAL_BUFFER_BYTES = LAMPORT_OFFSET + LAMPORT_BYTES + SCRATCH_BYTES  # 294,387,728 B


def signal_buffer_bytes(platform: str, group_size: int) -> int:
    """Bytes one device reserves for allreduce signals: GPUs in a group of more than one."""
    return SIGNAL_BUFFER_BYTES if platform == "gpu" and group_size > 1 else 0

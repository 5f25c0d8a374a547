"""How large a mesh a CPU-proxy compile takes (imported without JAX, so the CLI can refuse first).

A proxy compile gives every mesh device an XLA:CPU device in this one process. Past 2,048 of them
XLA:CPU fails ("Multiprocess computations aren't implemented on the CPU backend" at 4,096) or
stalls (16,384), so larger meshes are refused before JAX starts.
"""

from __future__ import annotations

MAX_CPU_PROXY_DEVICES = 2048

__all__ = ["MAX_CPU_PROXY_DEVICES"]

"""MAX's log lines, re-emitted by kvfit: one named logger and a per-call record of what it said.

Modular MAX 26.7.0 logs its planner and page-math lines on the ``max.pipelines`` logger
(``pipelines/lib/memory_estimation.py``, ``nn/kv_cache/cache_params.py``,
``pipelines/kv_cache/registry.py``). kvfit emits the same levels and words on ``kvfit.max``;
``collect()`` also hands a caller the ``(level name, message)`` pairs of one call, so a plan can
carry them (``EstimatedPlan.logs``) without the caller configuring logging.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

LOGGER_NAME = "kvfit.max"
logger = logging.getLogger(LOGGER_NAME)
# a library's loggers print nothing until the application configures logging (Python's logging
# HOWTO, "Configuring Logging for a Library"); records still propagate to its handlers
logging.getLogger("kvfit").addHandler(logging.NullHandler())

_sinks: ContextVar[tuple[list[tuple[str, str]], ...]] = ContextVar("kvfit_max_sinks", default=())


def emit(level: int, message: str, *args: object) -> None:
    """Log ``message % args`` (as ``logging`` formats it) on ``kvfit.max`` and record it."""
    text = message % args if args else message
    for sink in _sinks.get():
        sink.append((logging.getLevelName(level), text))
    logger.log(level, message, *args)


@contextmanager
def collect() -> Iterator[list[tuple[str, str]]]:
    """Record the ``(level, message)`` lines emitted inside the block (nested blocks see theirs)."""
    lines: list[tuple[str, str]] = []
    token = _sinks.set((*_sinks.get(), lines))
    try:
        yield lines
    finally:
        _sinks.reset(token)

"""Progress for long work: nested, timed steps on stderr."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger("hardhost")

_depth = 0


@dataclass
class StepTiming:
    name: str
    seconds: float = 0.0
    note: str = ""


@contextmanager
def complete_step(text: str, done: str | None = None) -> Iterator[StepTiming]:
    """Log `text` when the step starts and its duration when it ends.

    The yielded `StepTiming` lets the caller attach a note (e.g. "cached") and read the time.
    """
    global _depth
    indent = "  " * _depth
    timing = StepTiming(text)
    log.info("%s▸ %s", indent, text)
    start = time.monotonic()
    _depth += 1
    try:
        yield timing
    finally:
        _depth -= 1
        timing.seconds = time.monotonic() - start
    suffix = f", {timing.note}" if timing.note else ""
    log.info("%s✓ %s (%.1fs%s)", indent, done or text, timing.seconds, suffix)


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # paramiko logs every transport event, and the tracebacks of connections the waiting
    # loop abandons; hardhost reports connection failures itself.
    logging.getLogger("paramiko").setLevel(logging.DEBUG if verbose else logging.CRITICAL)

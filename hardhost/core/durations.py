"""Durations a user gives (timeouts, waits): finite, more than zero, and below a maximum.

`float()` takes "nan", "inf" and "-1", and each of them breaks a wait in its own way: NaN
compares false with everything (a loop that waits `while elapsed < timeout` never waits),
infinity waits forever, and zero or a negative number makes a socket non-blocking or makes
`settimeout` raise. So every duration is checked once, where it enters.
"""

from __future__ import annotations

import math

from hardhost.core.errors import UsageError

# An hour bounds connecting, one command on a host, a host's return after a reboot and a
# VM's boot: each takes seconds to minutes, and a wait past an hour is a hang.
MAX_TIMEOUT = 3600.0
# A recording runs a workload for as long as its test takes; a day is ample.
MAX_RECORDING = 86400.0


def duration(value: object, *, what: str, maximum: float = MAX_TIMEOUT) -> float:
    """`value` (a number, or its text) as seconds; `UsageError` naming `what` unless it is
    finite, more than zero and at most `maximum`."""
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or not 0 < number <= maximum:
        raise UsageError(f"{what}: {str(value)[:40]!r} is not a duration: give seconds, "
                         f"more than 0 and at most {maximum:g}")
    return number

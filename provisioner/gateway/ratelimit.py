"""Requests a minute per key (pure): the generic cell rate algorithm (GCRA).

A key of ``rpm`` N may send N requests at once (a full minute's burst), then one every
60/N seconds. Each decision needs one float per key (its theoretical arrival time), and
a refusal knows exactly when the next request would pass: the 429's ``Retry-After``.
"""

from __future__ import annotations

import math


class RateLimiter:
    def __init__(self) -> None:
        self._tat: dict[str, float] = {}  # key -> theoretical arrival time

    def take(self, key: str, rpm: int, now: float) -> float | None:
        """None if a request of ``key`` passes now (and counts it); else the seconds
        until one would."""
        interval = 60.0 / rpm
        burst = 60.0 - interval  # how far ahead of now the schedule may run
        tat = max(self._tat.get(key, now), now)
        if tat - now > burst:
            return tat - now - burst
        self._tat[key] = tat + interval
        return None


def retry_after(seconds: float) -> int:
    """The whole seconds a ``Retry-After`` says (never 0: a client would retry at once)."""
    return max(1, math.ceil(seconds))

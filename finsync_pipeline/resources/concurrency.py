"""An adaptive limit on one system's requests in flight, shared by a run's workers.

An ERP limits concurrent requests per account (NetSuite: 5 to 140, by service tier and
SuiteCloud Plus licenses) and answers 429 past it. Other integrations share that limit, so
finsync cannot know how much of it is free: it learns it, the way TCP learns a path's capacity
(additive increase, multiplicative decrease):

- every request takes a slot, and waits while every slot is taken;
- a 429 cuts the slots to ``DECREASE`` of what they were, once per round: the 429s of requests
  already in flight when the limit was cut carry no news. A ``Retry-After`` holds every new
  request until it has passed (NetSuite sends none; other ERPs do);
- every other answer gives back a fraction of a slot: one slot per window of answers while the
  limit is above the level of the last 429, and ``SLOW_PROBE`` times slower up to that level,
  so a limit that sits just below the ERP's does not probe it into a 429 storm. It never grows
  above the configured concurrency.

A 503 (maintenance) and a request that got no answer leave the limit alone: they say nothing
about concurrency.
"""

import threading
import time
from collections.abc import Callable

DECREASE = 0.7
SLOW_PROBE = 8
THROTTLED = 429
# A wait is re-checked at least this often (a clock moved by a test, a lost wake-up).
_MAX_WAIT_S = 1.0


class AdaptiveConcurrency:
    """Slots for requests in flight to one system, cut on 429 and grown back on answers.

    Args:
        ceiling: The configured concurrency: the most slots there can ever be.
        clock: Monotonic seconds, for Retry-After.

    Attributes:
        throttled: 429 answers seen so far.
        cuts: How many times the limit was cut.
    """

    def __init__(self, ceiling: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if ceiling < 1:
            raise ValueError(f"a concurrency limit must be at least 1, got {ceiling}")
        self.ceiling = ceiling
        self._clock = clock
        self._slots = float(ceiling)
        self._plateau = float("inf")
        self._round = 0
        self._in_use = 0
        self._resume_at = 0.0
        self._changed = threading.Condition()
        self.throttled = 0
        self.cuts = 0

    @property
    def limit(self) -> int:
        """The requests that may be in flight now."""
        return max(1, int(self._slots))

    def acquire(self) -> int:
        """Wait for a slot; return the round it was taken in (give it back to ``release``)."""
        with self._changed:
            while True:
                hold = self._resume_at - self._clock()
                if hold <= 0 and self._in_use < self.limit:
                    self._in_use += 1
                    return self._round
                self._changed.wait(min(_MAX_WAIT_S, hold) if hold > 0 else _MAX_WAIT_S)

    def release(
        self, taken_in: int, *, status: int | None, retry_after_s: float | None = None
    ) -> None:
        """Give a slot back with what the system answered (``status`` None: no answer)."""
        with self._changed:
            self._in_use -= 1
            if status == THROTTLED:
                self._throttle(taken_in, retry_after_s)
            elif status is not None and status < 500:
                self._grow()
            self._changed.notify_all()

    def wake(self) -> None:
        """Make waiting requests look at the clock again."""
        with self._changed:
            self._changed.notify_all()

    def _throttle(self, taken_in: int, retry_after_s: float | None) -> None:
        self.throttled += 1
        if retry_after_s:
            self._resume_at = max(self._resume_at, self._clock() + retry_after_s)
        if taken_in != self._round:
            return
        self._plateau = self._slots
        self._slots = max(1.0, self._slots * DECREASE)
        self._round += 1
        self.cuts += 1

    def _grow(self) -> None:
        window = self._slots if self._slots > self._plateau else self._slots * SLOW_PROBE
        self._slots = min(float(self.ceiling), self._slots + 1.0 / window)

"""The feed of a continuous pool of posting workers: claimed documents, claimed ahead.

A posting level (one document type, one customer depth) is worked by a pool of workers that
take documents one at a time from one feed. When fewer than ``low_water`` documents are
queued, the worker taking one claims the next batch first (one claim at a time; the others go
on taking what is queued), so no worker waits for another's batch to finish: there is no
barrier per batch.

A document taken stays *unsettled* until its outcome is committed to the ledger. The level is
done when a claim finds nothing due and no document is unsettled. Because an outcome can make
other documents due (a posted customer wakes the invoices waiting for it), each settlement
lets the feed claim again.
"""

import threading
from collections import deque
from collections.abc import Callable
from enum import Enum
from typing import Generic, TypeVar

T = TypeVar("T")


class _Next(Enum):
    TAKE = "take"
    CLAIM = "claim"
    FLUSH = "flush"
    WAIT = "wait"
    DONE = "done"


class ClaimFeed(Generic[T]):
    """Claimed documents of one level, handed out to the workers of a pool.

    Args:
        claim: Claims the next batch (committed) and returns it; empty when nothing is due.
        flush: Commits the outcomes workers sent but have not recorded yet, and settles them.
            Called before the feed claims with nothing queued, and before a worker waits, so
            every unsettled document is either being sent or about to be recorded.
        low_water: Claim ahead when fewer than this many documents are queued.
    """

    def __init__(
        self, claim: Callable[[], list[T]], flush: Callable[[], None], *, low_water: int
    ) -> None:
        self._claim = claim
        self._flush = flush
        self._low_water = max(1, low_water)
        self._queue: deque[T] = deque()
        self._changed = threading.Condition()
        self._unsettled = 0
        self._settlements = 0
        self._claiming = False
        self._dry = False
        self._stopped = False

    def take(self) -> T | None:
        """The next document to send, or None when the level is done or stopped."""
        flushed = False
        while True:
            with self._changed:
                step = self._next(flushed)
                if step is _Next.TAKE:
                    self._unsettled += 1
                    return self._queue.popleft()
                if step is _Next.DONE:
                    return None
                if step is _Next.WAIT:
                    self._changed.wait()
                    flushed = False
                    continue
                empty = not self._queue
            if step is _Next.FLUSH:
                self._flush()
                flushed = True
                continue
            self._claim_ahead(flush_first=empty)

    def settle(self, count: int = 1) -> None:
        """``count`` documents taken have their outcome committed."""
        if count <= 0:
            return
        with self._changed:
            self._unsettled -= count
            self._settlements += 1
            self._dry = False
            self._changed.notify_all()

    def put_back(self, item: T) -> None:
        """Send a document taken again later in this level (the ERP refused it for now)."""
        with self._changed:
            self._unsettled -= 1
            self._queue.append(item)
            self._changed.notify_all()

    def stop(self) -> list[T]:
        """Claim nothing more; return the documents still queued (for the caller to release)."""
        with self._changed:
            self._stopped = True
            left = list(self._queue)
            self._queue.clear()
            self._changed.notify_all()
            return left

    def _next(self, flushed: bool) -> _Next:
        if self._stopped:
            return _Next.DONE
        if not self._claiming and not self._dry and len(self._queue) < self._low_water:
            self._claiming = True
            return _Next.CLAIM
        if self._queue:
            return _Next.TAKE
        if self._dry and not self._claiming and self._unsettled == 0:
            return _Next.DONE
        return _Next.WAIT if flushed else _Next.FLUSH

    def _claim_ahead(self, *, flush_first: bool) -> None:
        batch: list[T] = []
        with self._changed:
            settlements = self._settlements
        try:
            if flush_first:
                # Outcomes first: a document they make due is claimed in this same batch.
                self._flush()
            batch = self._claim()
        finally:
            with self._changed:
                self._claiming = False
                self._queue.extend(batch)
                # A settlement committed while the claim ran may have made more due.
                self._dry = not batch and self._settlements == settlements
                self._changed.notify_all()

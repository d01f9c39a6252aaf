"""The adaptive concurrency limit: it backs off on 429, waits out Retry-After, and recovers."""

import threading

import pytest

from finsync_pipeline.resources.concurrency import AdaptiveConcurrency


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_429_cuts_the_limit_once_per_round_of_requests() -> None:
    limit = AdaptiveConcurrency(8)
    tokens = [limit.acquire() for _ in range(8)]
    # Six of the eight requests in flight come back 429: one signal, one cut.
    for token in tokens[:6]:
        limit.release(token, status=429)
    assert limit.limit == 5
    assert limit.throttled == 6
    # A 429 of a request sent after the cut is news: it cuts again.
    limit.release(tokens[6], status=200)
    limit.release(tokens[7], status=200)
    again = limit.acquire()
    limit.release(again, status=429)
    assert limit.limit == 3


def test_answers_recover_the_limit_gradually_and_slowly_near_the_last_429() -> None:
    limit = AdaptiveConcurrency(10)
    limit.release(limit.acquire(), status=429)
    assert limit.limit == 7
    answered = 0
    while limit.limit < 9:
        limit.release(limit.acquire(), status=200)
        answered += 1
    # Far below the level of the last 429 one slot per window comes back; near it, slowly.
    assert answered > 7 * 4, answered
    for _ in range(10_000):
        limit.release(limit.acquire(), status=200)
    assert limit.limit == 10, "never above the configured concurrency"


def test_the_limit_never_falls_below_one() -> None:
    limit = AdaptiveConcurrency(2)
    for _ in range(10):
        limit.release(limit.acquire(), status=429)
    assert limit.limit == 1


def test_retry_after_holds_every_new_request_until_it_has_passed() -> None:
    clock = Clock()
    limit = AdaptiveConcurrency(4, clock=clock)
    limit.release(limit.acquire(), status=429, retry_after_s=30)
    entered = threading.Event()

    def send() -> None:
        limit.release(limit.acquire(), status=200)
        entered.set()

    worker = threading.Thread(target=send)
    worker.start()
    assert not entered.wait(0.3), "a request went out during the Retry-After"
    clock.now += 31
    limit.wake()
    assert entered.wait(10)
    worker.join()


def test_slots_beyond_the_limit_wait_for_one_to_free() -> None:
    limit = AdaptiveConcurrency(1)
    token = limit.acquire()
    entered = threading.Event()

    def second() -> None:
        limit.release(limit.acquire(), status=200)
        entered.set()

    worker = threading.Thread(target=second)
    worker.start()
    assert not entered.wait(0.3)
    limit.release(token, status=200)
    assert entered.wait(10)
    worker.join()


@pytest.mark.parametrize("ceiling", [0, -1])
def test_a_ceiling_below_one_is_refused(ceiling: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        AdaptiveConcurrency(ceiling)

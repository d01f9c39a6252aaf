"""Fixtures for the connector tests: a scripted local HTTP server and the finsync sandbox."""

import datetime
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from finsync_pipeline.resources.http import HttpOptions
from finsync_pipeline.sandbox.generator import Company, CompanySpec, generate
from finsync_pipeline.sandbox.server import Sandbox
from finsync_tests.resources.hostile import (  # noqa: F401  (hostile is a fixture)
    HostileServer,
    Reply,
    Request,
    hostile,
)


@dataclass
class Scripted:
    """One canned answer of the scripted server."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


Seen = Request  # what the scripted server received, as the hostile one records it


class ScriptedServer(HostileServer):
    """Answers each request with the next scripted response (the last one repeats)."""

    def __init__(self) -> None:
        super().__init__()
        self._answers: list[Scripted] = []
        self._lock = threading.Lock()
        self.script = self._next

    def _next(self, request: Request) -> Reply:
        with self._lock:
            answer = self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]
        if answer.delay_s:
            time.sleep(answer.delay_s)
        body = b"" if answer.body is None else answer.body
        return Reply(answer.status, body, answer.headers)

    def answer(self, *responses: Scripted) -> None:
        self._answers = list(responses)
        self.seen = []


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    yield server
    server.close()


# A fixed history (reproducible on any day). 150 accounts give more than 200 opportunities, so
# a Salesforce query at batch_size=200 spans two batches.
SPEC = CompanySpec(accounts=150, months=3, seed=1, end=datetime.date(2026, 10, 31))


@pytest.fixture(scope="session")
def company() -> Company:
    return generate(SPEC)


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory, company: Company) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path_factory.mktemp("connector-sandbox"))
    box.seed(company)
    box.start()
    yield box
    box.stop()


@pytest.fixture(autouse=True)
def _no_leftover_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "sandbox" in request.fixturenames:
        request.getfixturevalue("sandbox").faults.clear()


@pytest.fixture
def sleeps() -> list[float]:
    """Waits a client asked for, recorded instead of slept."""
    return []


@pytest.fixture
def options(sleeps: list[float]) -> HttpOptions:
    """Client options that record backoff waits instead of sleeping (seeded jitter)."""
    return HttpOptions(timeout=(5.0, 30.0), sleep=sleeps.append, rng=random.Random(3))

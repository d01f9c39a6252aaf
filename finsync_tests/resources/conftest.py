"""Fixtures for the connector tests: a scripted local HTTP server and the finsync sandbox."""

import datetime
import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from finsync_pipeline.resources.http import HttpOptions
from finsync_pipeline.sandbox.generator import Company, CompanySpec, generate
from finsync_pipeline.sandbox.server import Sandbox


@dataclass
class Scripted:
    """One canned answer of the scripted server."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class ScriptedServer:
    """Answers each request with the next scripted response (the last one repeats)."""

    def __init__(self) -> None:
        self.script: list[Scripted] = []
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with outer._lock:
                    outer.seen.append(Seen(self.command, self.path, dict(self.headers), body))
                    answer = outer.script.pop(0) if len(outer.script) > 1 else outer.script[0]
                if answer.delay_s:
                    time.sleep(answer.delay_s)
                payload = b"" if answer.body is None else json.dumps(answer.body).encode()
                try:
                    self.send_response(answer.status)
                    for k, v in answer.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def answer(self, *responses: Scripted) -> None:
        self.script = list(responses)
        self.seen = []

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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

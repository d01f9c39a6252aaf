"""Fixtures: a small seeded company and a running sandbox, shared across the sandbox tests."""

import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from finsync_pipeline.sandbox.generator import Company, CompanySpec, generate
from finsync_pipeline.sandbox.server import Sandbox

# History ending yesterday so the Stripe events of the last 30 days are listable.
SPEC = CompanySpec(
    accounts=150,
    months=6,
    seed=11,
    end=datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=1),
)


@pytest.fixture(scope="session")
def company() -> Company:
    return generate(SPEC)


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory, company: Company) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path_factory.mktemp("sandbox"))
    box.seed(company)
    with box:
        yield box


@pytest.fixture(autouse=True)
def _no_leftover_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "sandbox" in request.fixturenames:
        request.getfixturevalue("sandbox").faults.clear()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def serving(path: Path, company: Company, *, tls: bool = False) -> Iterator[Sandbox]:
    """A sandbox seeded with ``company``, serving (over HTTPS with ``tls``) until closed."""
    box = Sandbox(path, tls=tls)
    box.seed(company)
    with box:
        yield box


def fresh_sandbox(path: Path, company: Company) -> Sandbox:
    box = Sandbox(path)
    box.seed(company)
    return box

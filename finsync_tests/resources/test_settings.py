"""FINSYNC_NETSUITE_CONCURRENCY: NetSuite's default, the account's range, one line when wrong."""

import pytest

from finsync_pipeline.errors import ConfigurationError
from finsync_pipeline.resources.settings import (
    NETSUITE_CONCURRENCY_ENV,
    PipelineSettings,
    netsuite_concurrency_from_env,
)


def test_netsuite_concurrency_defaults_to_the_standard_tier_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(NETSUITE_CONCURRENCY_ENV, raising=False)
    assert netsuite_concurrency_from_env() == 5
    assert PipelineSettings().netsuite_concurrency == 5


@pytest.mark.parametrize("value", ["1", "15", " 140 "])
def test_netsuite_concurrency_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(NETSUITE_CONCURRENCY_ENV, value)
    assert netsuite_concurrency_from_env() == int(value)


@pytest.mark.parametrize("value", ["0", "141", "4.5", "many", "-3"])
def test_a_wrong_netsuite_concurrency_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(NETSUITE_CONCURRENCY_ENV, value)
    with pytest.raises(ConfigurationError) as raised:
        netsuite_concurrency_from_env()
    (line,) = str(raised.value).splitlines()
    assert line.startswith(f"{NETSUITE_CONCURRENCY_ENV} is '{value}': set it to")
    assert "from 1 to 140" in line

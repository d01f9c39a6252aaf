"""Pipeline settings that operations tune without a code change."""

import os
from collections.abc import Callable
from typing import TypeVar

import dagster as dg
from pydantic import Field

from finsync_pipeline.errors import ConfigurationError
from finsync_pipeline.ledger import DEFAULT_LEASE_S
from finsync_pipeline.sources import OPTIONAL_SOURCES, SOURCES_OFF_ENV

NETSUITE_CONCURRENCY_ENV = "FINSYNC_NETSUITE_CONCURRENCY"
# NetSuite's Standard tier allows 5 concurrent requests per account; Ultimate with its 12
# SuiteCloud Plus licenses, the most there is, 20 + 12 x 10.
NETSUITE_DEFAULT_CONCURRENCY = 5
NETSUITE_MAX_CONCURRENCY = 140


class PipelineSettings(dg.ConfigurableResource):
    """Thresholds and limits of the pipeline.

    Attributes:
        max_bad_share: The share of a partition's records that may break their contract before
            the blocking contract check fails the run. Below it, bad rows go to quarantine and
            the run goes on.
        min_bad_records: How many records must break their contract before the share counts:
            on a quiet day of three invoices one malformed record is a third of the day, which
            says nothing about the feed, so it goes to quarantine and the run goes on.
        posting_max_attempts: Sends before a transiently failing document is declared dead.
        posting_batch_size: Ledger rows claimed per transaction.
        posting_lease_s: Seconds a posting run's claim on a document stays its own without a
            renewal (``FINSYNC_POSTING_LEASE_S``). The run renews it every third of that while
            it works; a claim whose lease expired is settled by the next run by looking the
            document up in the ERP, whatever the orchestrator says about its holder. Shorter
            recovers a killed run's documents sooner; it must outlast the longest pause a live
            run can take (a long GC, a stalled disk) or the live run loses its claims.
        tax_tolerance_minor_per_line: How far billed tax may differ from the tax engine's, per
            invoice line, in minor units (finance-approved: 1, an engine rounding differently).
        avalara_concurrency: AvaTax estimates in flight at once.
        netsuite_concurrency: Requests a NetSuite posting run sends at once, at most
            (``FINSYNC_NETSUITE_CONCURRENCY``, default 5, from 1 to 140). NetSuite limits
            concurrent requests per account: 5 on the Standard tier, 15 on Premium, 20 on
            Enterprise and Ultimate, plus 10 per SuiteCloud Plus license (at most 140). Set it
            to the account's limit, or to the share of it finsync may take; the run backs off
            on 429 below it when other integrations use part of the limit.
        stripe_max_lookups: Stripe requests a run may spend finding invoices the warehouse
            does not hold (those of payments and credit notes made before finsync's first
            day); the rest wait for the next run.
        salesforce_max_quota_share: The share of the Salesforce org's daily API limit the
            extracts may bring its usage to. Other integrations share that limit; an extract
            that would pass it stops cleanly, lands what it read and resumes on the next run.
        sources_off: The optional sources the company does not have (``metering``, ``cpq``;
            ``FINSYNC_SOURCES_OFF``): their extracts land nothing and send no request.
    """

    max_bad_share: float = Field(default=0.05, ge=0.0, le=1.0)
    min_bad_records: int = Field(default=5, ge=1)
    posting_max_attempts: int = Field(default=8, ge=1)
    posting_batch_size: int = Field(default=50, ge=1)
    posting_lease_s: float = Field(default=DEFAULT_LEASE_S, ge=1.0, le=3600.0)
    tax_tolerance_minor_per_line: int = Field(default=1, ge=0)
    avalara_concurrency: int = Field(default=4, ge=1, le=16)
    netsuite_concurrency: int = Field(
        default=NETSUITE_DEFAULT_CONCURRENCY, ge=1, le=NETSUITE_MAX_CONCURRENCY
    )
    stripe_max_lookups: int = Field(default=200, ge=0)
    salesforce_max_quota_share: float = Field(default=0.5, gt=0.0, le=1.0)
    sources_off: list[str] = Field(default_factory=list)

    def source_on(self, source: str) -> bool:
        """Whether the optional ``source`` (a key of ``OPTIONAL_SOURCES``) is switched on."""
        if source not in OPTIONAL_SOURCES:
            raise ValueError(f"{source!r} is not an optional source")
        unknown = set(self.sources_off) - set(OPTIONAL_SOURCES)
        if unknown:
            # A typo must not leave a source on that the operator meant to switch off.
            raise ConfigurationError(
                f"sources_off names {', '.join(sorted(unknown))}; the optional sources are "
                f"{', '.join(OPTIONAL_SOURCES)} (set {SOURCES_OFF_ENV})"
            )
        return source not in self.sources_off

    def feed_is_broken(self, bad: int, share: float) -> bool:
        """Whether ``bad`` records breaking their contract, ``share`` of those checked, should
        stop the run: too many to be a few bad rows, and too large a share to be noise."""
        return bad >= self.min_bad_records and share > self.max_bad_share


LEASE_ENV = "FINSYNC_POSTING_LEASE_S"
MAX_BAD_SHARE_ENV = "FINSYNC_MAX_BAD_SHARE"
MIN_BAD_RECORDS_ENV = "FINSYNC_MIN_BAD_RECORDS"
DEFAULT_MAX_BAD_SHARE = 0.05
DEFAULT_MIN_BAD_RECORDS = 5


_N = TypeVar("_N", int, float)


def _whole(text: str) -> int:
    if not text.isdigit():
        raise ValueError(text)
    return int(text)


def _ranged_env(
    name: str, default: _N, parse: Callable[[str], _N], *, low: _N, high: _N | None, says: str
) -> _N:
    """The number in variable ``name`` (``default`` when unset), or one line saying what to set:
    ``says``, what the number is, followed by its range and default."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = parse(text)
    except ValueError:
        value = None
    # NaN fails the comparisons too.
    if value is None or not low <= value or (high is not None and not value <= high):
        span = f"from {low:g}" + (f" to {high:g}" if high is not None else "")
        raise ConfigurationError(
            f"{name} is {text!r}: set it to {says}, {span} (default {default:g})"
        )
    return value


def max_bad_share_from_env() -> float:
    """``FINSYNC_MAX_BAD_SHARE`` (default 0.05), or one line saying what to set."""
    says = (
        "the share of a day's records that may break their contract before the run stops, a share"
    )
    return _ranged_env(
        MAX_BAD_SHARE_ENV, DEFAULT_MAX_BAD_SHARE, float, low=0.0, high=1.0, says=says
    )


def min_bad_records_from_env() -> int:
    """``FINSYNC_MIN_BAD_RECORDS`` (default 5), or one line saying what to set."""
    says = (
        f"how many records must break their contract before {MAX_BAD_SHARE_ENV} counts, "
        "a whole number"
    )
    return _ranged_env(
        MIN_BAD_RECORDS_ENV, DEFAULT_MIN_BAD_RECORDS, _whole, low=1, high=None, says=says
    )


def lease_from_env() -> float:
    """``FINSYNC_POSTING_LEASE_S`` as seconds (default 120), or one line saying what to set."""
    says = "the seconds a posting claim lasts without a renewal"
    return _ranged_env(LEASE_ENV, DEFAULT_LEASE_S, float, low=1.0, high=3600.0, says=says)


def netsuite_concurrency_from_env() -> int:
    """``FINSYNC_NETSUITE_CONCURRENCY`` (default 5), or one line saying what to set."""
    says = (
        "the requests a posting run sends to NetSuite at once, at most the account's "
        "concurrency limit"
    )
    return _ranged_env(
        NETSUITE_CONCURRENCY_ENV,
        NETSUITE_DEFAULT_CONCURRENCY,
        _whole,
        low=1,
        high=NETSUITE_MAX_CONCURRENCY,
        says=says,
    )


FUTURE_SKEW_ENV = "FINSYNC_MAX_FUTURE_SKEW_S"
DEFAULT_FUTURE_SKEW_S = 86400.0


def future_skew_from_env() -> float:
    """``FINSYNC_MAX_FUTURE_SKEW_S`` (default 86400): how far into the future a record's
    creation or change time may lie before the record is quarantined, or one line saying what
    to set."""
    text = os.environ.get(FUTURE_SKEW_ENV, "").strip()
    if not text:
        return DEFAULT_FUTURE_SKEW_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0.0 <= seconds <= 366 * 86400.0:
        raise ConfigurationError(
            f"{FUTURE_SKEW_ENV} is {text!r}: set it to the seconds a source's clock may run "
            "ahead of finsync's, from 0 to 31622400 (default 86400)"
        )
    return seconds

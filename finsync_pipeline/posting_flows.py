"""Which posting flows are near real time and which wait for a batch window.

A flow is one document type on the posting ledger. By default every flow posts in near real
time: the posting sensor launches a run as soon as the ledger holds due documents. A flow named
in ``FINSYNC_POSTING_BATCH_WINDOWS`` instead waits for its window, a cron schedule (UTC), e.g.::

    FINSYNC_POSTING_BATCH_WINDOWS='{"credit_memo": "0 3 * * *", "customer_payment": "0 3 * * *"}'

Flows that share a cron share one schedule. A document of a near-real-time flow that waits for
one of a batch flow (an invoice for its customer) posts once that one has.
"""

import json
import os
from collections.abc import Mapping

import dagster as dg
import sqlalchemy as sa

from finsync_pipeline.errors import ConfigurationError

POSTING_FLOWS = ("customer", "invoice", "credit_memo", "customer_payment", "customer_refund")
BATCH_WINDOWS_ENV = "FINSYNC_POSTING_BATCH_WINDOWS"
FLOWS_TAG = "finsync/posting_flows"

_EXAMPLE = '{"credit_memo": "0 3 * * *"}'


def batch_windows(raw: str | None = None) -> dict[str, str]:
    """Flow -> cron of the flows configured as batch (from the environment when ``raw`` is None).

    Raises:
        ConfigurationError: The setting is not a JSON object of known flows to cron strings.
    """
    text = os.environ.get(BATCH_WINDOWS_ENV, "") if raw is None else raw
    if not text.strip():
        return {}
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigurationError(
            f"{BATCH_WINDOWS_ENV} is not JSON ({e.msg}); set it to an object such as {_EXAMPLE}"
        ) from None
    if not isinstance(parsed, dict):
        raise ConfigurationError(
            f"{BATCH_WINDOWS_ENV} must be a JSON object of flow to cron, such as {_EXAMPLE}"
        )
    windows: dict[str, str] = {}
    for flow, cron in parsed.items():
        if flow not in POSTING_FLOWS:
            raise ConfigurationError(
                f"{BATCH_WINDOWS_ENV}: unknown flow {flow!r}; "
                f"the flows are {', '.join(POSTING_FLOWS)}"
            )
        if not isinstance(cron, str) or not valid_cron(cron):
            raise ConfigurationError(
                f"{BATCH_WINDOWS_ENV}: {flow} has {cron!r}, not a cron of 5 fields "
                "such as '0 3 * * *'"
            )
        windows[flow] = cron
    return windows


def realtime_flows(windows: dict[str, str]) -> list[str]:
    """The flows the posting sensor posts as soon as they are due, in posting order."""
    return [f for f in POSTING_FLOWS if f not in windows]


def flows_of_run(tags: Mapping[str, str], windows: dict[str, str]) -> list[str]:
    """The flows a posting run posts, in posting order: those its tag names (the sensor's and
    each window's runs name them; so can a run launched by hand), else the near-real-time
    flows, so that a nightly or backfill run leaves batch flows to their windows."""
    named = tags.get(FLOWS_TAG)
    if named is None:
        return realtime_flows(windows)
    wanted = {f.strip() for f in named.split(",") if f.strip()}
    return [f for f in POSTING_FLOWS if f in wanted]


def valid_cron(cron: str) -> bool:
    """Whether Dagster accepts ``cron`` as a schedule's cron."""
    try:
        dg.ScheduleDefinition(name="cron_check", cron_schedule=cron, target=dg.AssetSelection.all())
    except dg.DagsterInvalidDefinitionError:
        return False
    return True


def awaiting_windows(conn: sa.Connection, erp: str, windows: dict[str, str]) -> dict[str, str]:
    """External id -> cron of every unposted ledger document that waits for a batch window:
    one of a batch flow, or one waiting for a document of a batch flow (an invoice for its
    customer). Reconciliation shows these as ``awaiting_window``, not as missing."""
    if not windows:
        return {}
    rows = conn.execute(
        sa.text(
            "SELECT doc_type, external_id, waiting_for FROM posting_ledger "
            "WHERE erp = :erp AND state IN ('pending', 'in_flight')"
        ),
        {"erp": erp},
    )
    awaiting: dict[str, str] = {}
    for doc_type, external_id, waiting_for in rows:
        flow = doc_type if doc_type in windows else str(waiting_for or "").split(":", 1)[0]
        if flow in windows:
            awaiting[str(external_id)] = windows[flow]
    return awaiting

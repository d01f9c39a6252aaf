"""Every connector against bodies no real system sends: too deep, wrongly shaped, or holding
numbers JSON should not. A page that cannot be read is finsync's own ``UpstreamError`` naming
the system and the field; a value a record cannot hold reaches the contract check (and from
there quarantine) instead of failing the whole read."""

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from finsync_pipeline.errors import UpstreamError
from finsync_pipeline.resources.http import NOT_A_NUMBER
from finsync_tests.resources.hostile import HostileServer, Reply
from finsync_tests.resources.test_hostile import (
    avalara,
    metering,
    netsuite,
    salesforce,
    stripe,
    token_or,
)

DEEP = b"[" * 100_000 + b"]" * 100_000
MINUTE = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)

Read = Callable[[HostileServer], Any]

READS: dict[str, tuple[str, Read]] = {
    "stripe list": ("stripe", lambda s: list(stripe(s).list_charges())),
    "stripe events": (
        "stripe",
        lambda s: stripe(s).events_after("evt_1", types=["invoice.paid"], limit=10),
    ),
    "stripe retrieve": ("stripe", lambda s: stripe(s).retrieve("charges", "ch_1")),
    "salesforce query": (
        "salesforce",
        lambda s: list(salesforce(s).query("SELECT Id FROM Account")),
    ),
    "netsuite suiteql": (
        "netsuite",
        lambda s: list(netsuite(s).suiteql("SELECT id FROM customer ORDER BY id")),
    ),
    "netsuite record": ("netsuite", lambda s: netsuite(s).get("customer", "12")),
    "metering events": ("metering", lambda s: list(metering(s).list_events(MINUTE))),
    "avalara ping": ("avalara", lambda s: avalara(s).ping()),
    "avalara sales order": (
        "avalara",
        lambda s: avalara(s).create_sales_order({"type": "SalesOrder", "lines": []}),
    ),
}


def _answer(server: HostileServer, system: str, reply: Reply) -> None:
    # Salesforce reads its token first; only the query answers the body under test.
    server.script = token_or(server.url, reply) if system == "salesforce" else lambda r: reply


@pytest.mark.parametrize("name", list(READS))
def test_a_body_nested_too_deep_is_an_upstream_error_naming_the_system(
    hostile: HostileServer, name: str
) -> None:
    system, read = READS[name]
    _answer(hostile, system, Reply(200, DEEP))
    with pytest.raises(UpstreamError) as info:
        read(hostile)
    assert info.value.system == system
    assert "nested too deep" in str(info.value)


# (read, body, the field the error must name)
SHAPES: list[tuple[str, Any, str]] = [
    ("stripe list", [], "(body)"),
    ("stripe list", {"object": "list", "data": {"id": "ch_1"}, "has_more": False}, "data"),
    ("stripe list", {"object": "list", "data": [], "has_more": "yes"}, "has_more"),
    ("stripe events", [], "(body)"),
    ("stripe events", {"object": "list", "data": "none"}, "data"),
    ("stripe retrieve", [{"id": "ch_1"}], "(body)"),
    ("salesforce query", [], "(body)"),
    ("salesforce query", {"done": True, "records": {"Id": "001"}, "totalSize": 1}, "records"),
    ("salesforce query", {"done": True, "records": [], "totalSize": "many"}, "totalSize"),
    ("salesforce query", {"done": "no", "records": [], "totalSize": 0}, "done"),
    ("netsuite suiteql", [], "(body)"),
    ("netsuite suiteql", {"items": [], "hasMore": False, "count": "ten"}, "count"),
    ("netsuite suiteql", {"items": [], "hasMore": "maybe", "count": 0}, "hasMore"),
    ("netsuite record", [], "(body)"),
    ("metering events", {"events": []}, "(body)"),
    ("avalara ping", [], "(body)"),
    ("avalara sales order", [], "(body)"),
]


@pytest.mark.parametrize(
    ("name", "body", "field"), SHAPES, ids=[f"{n}-{f}-{i}" for i, (n, _, f) in enumerate(SHAPES)]
)
def test_a_wrongly_shaped_page_is_an_upstream_error_naming_system_and_field(
    hostile: HostileServer, name: str, body: Any, field: str
) -> None:
    system, read = READS[name]
    _answer(hostile, system, Reply(200, body))
    with pytest.raises(UpstreamError) as info:
        read(hostile)
    assert info.value.system == system
    assert info.value.field == field, str(info.value)


def test_a_salesforce_token_answer_of_the_wrong_shape_names_the_system(
    hostile: HostileServer,
) -> None:
    hostile.script = lambda request: Reply(200, [{"access_token": "x"}])
    with pytest.raises(UpstreamError) as info:
        list(salesforce(hostile).query("SELECT Id FROM Account"))
    assert info.value.system == "salesforce" and info.value.field == "(body)"


def test_nan_in_a_record_is_read_as_a_value_the_contract_refuses(hostile: HostileServer) -> None:
    # Python's json accepts NaN and Infinity; neither may become a float in an amount's path,
    # and neither may stop the page: the record carries a marker its contract check names.
    body = (
        b'{"object": "list", "has_more": false, "data": [{"id": "ch_1", "amount": NaN}, '
        b'{"id": "ch_2", "amount": -Infinity}, {"id": "ch_3", "amount": 100}]}'
    )
    hostile.script = lambda request: Reply(200, body)
    charges = list(stripe(hostile).list_charges())
    assert [c["id"] for c in charges] == ["ch_1", "ch_2", "ch_3"]
    assert charges[0]["amount"] == NOT_A_NUMBER + "NaN"
    assert charges[1]["amount"] == NOT_A_NUMBER + "-Infinity"
    assert charges[2]["amount"] == 100


@pytest.mark.parametrize(
    "total", [b"NaN", b"1e30", b'"12.00"', b"Infinity"], ids=["nan", "huge", "text", "infinity"]
)
def test_an_avatax_total_that_is_no_amount_names_the_document_and_field(
    hostile: HostileServer, total: bytes
) -> None:
    hostile.script = lambda request: Reply(200, b'{"code": "in_1", "totalTax": ' + total + b"}")
    with pytest.raises(UpstreamError) as info:
        avalara(hostile).create_sales_order({"type": "SalesOrder", "code": "in_1", "lines": []})
    assert info.value.system == "avalara" and info.value.field == "totalTax"
    assert "in_1" in str(info.value)

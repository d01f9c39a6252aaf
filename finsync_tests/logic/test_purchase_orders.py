"""The PO of an invoice read from the Salesforce Opportunity or CPQ quote it bills."""

from typing import Any

import pandas as pd
import pytest

from finsync_pipeline.logic.purchase_orders import crm_frames, crm_purchase_orders
from finsync_pipeline.po_source import PoSource

OPP_SOURCE = PoSource("salesforce_opportunity", "PO_Number__c")
QUOTE_SOURCE = PoSource("salesforce_quote", "PO_Number__c")
ACCOUNT = "001A"
# The term of 2026-03-01 (a renewal with PO 4500000002), and the one a year before.
RENEWAL, NEW = "006RENEWAL", "006NEW"


def _opp(oid: str, contract: str | None, close: str, po: str | None, **extra: Any) -> dict:
    return {
        "Id": oid,
        "AccountId": ACCOUNT,
        "Type": "Renewal",
        "StageName": "Closed Won",
        "CloseDate": close,
        "CurrencyIsoCode": "USD",
        "Amount": 1200,
        "IsWon": True,
        "ContractId": contract,
        "PO_Number__c": po,
        **extra,
    }


def _quote(qid: str, opp: str, po: str | None, primary: bool = True) -> dict:
    return {
        "Id": qid,
        "SBQQ__Opportunity2__c": opp,
        "SBQQ__Account__c": ACCOUNT,
        "SBQQ__Primary__c": primary,
        "PO_Number__c": po,
    }


OPPS = [
    _opp(NEW, "800NEW", "2025-02-20", "4500000001"),
    _opp(RENEWAL, "800RENEWAL", "2026-02-20", "4500000002"),
    # Lost and open opportunities bill nothing, whatever their dates.
    _opp("006LOST", None, "2026-03-01", "4599999999", IsWon=False, StageName="Closed Lost"),
]
CONTRACTS = [
    {"Id": "800NEW", "AccountId": ACCOUNT, "StartDate": "2025-03-01", "EndDate": "2026-02-28"},
    {"Id": "800RENEWAL", "AccountId": ACCOUNT, "StartDate": "2026-03-01", "EndDate": "2027-02-28"},
]
QUOTES = [
    _quote("a0QOLD", RENEWAL, "Q-OLD", primary=False),
    _quote("a0QRENEWAL", RENEWAL, "Q-4500000002"),
    _quote("a0QNEW", NEW, None),
]


def _invoices(*rows: tuple[str, str, str | None]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"invoice_id": i, "customer_key": ACCOUNT, "invoice_date": d, "opportunity_id": o}
            for i, d, o in rows
        ],
        columns=["invoice_id", "customer_key", "invoice_date", "opportunity_id"],
    )


def _resolve(source: PoSource, invoices: pd.DataFrame, **frames: Any) -> dict[str, tuple]:
    opps, quotes = crm_frames(
        frames.get("opps", OPPS), CONTRACTS, frames.get("quotes", QUOTES), source.name
    )
    out = crm_purchase_orders(invoices, opps, quotes, source)
    assert list(out["invoice_id"]) == list(invoices["invoice_id"])
    return {
        r.invoice_id: (None if pd.isna(r.po_number) else r.po_number, r.po_where)
        for r in out.itertuples(index=False)
    }


@pytest.mark.parametrize(
    ("invoice_date", "link", "po"),
    [
        # Monthly invoices in the middle of a term find it by the link alone.
        pytest.param("2026-07-01", RENEWAL, "4500000002", id="linked-mid-term"),
        pytest.param("2026-07-01", NEW, "4500000001", id="the-link-wins-over-dates"),
        pytest.param("2026-03-01", None, "4500000002", id="term-starts-on-the-invoice-date"),
        pytest.param("2026-03-04", None, "4500000002", id="within-the-grace-days"),
        pytest.param("2025-03-02", None, "4500000001", id="the-earlier-term"),
    ],
)
def test_the_po_is_the_field_of_the_opportunity_the_invoice_bills(
    invoice_date: str, link: str | None, po: str
) -> None:
    got = _resolve(OPP_SOURCE, _invoices(("in_1", invoice_date, link)))
    assert got["in_1"][0] == po


def test_an_unlinked_invoice_outside_every_term_start_has_no_opportunity() -> None:
    # Five days after the term started: past the 3 grace days renewal reconciliation allows.
    got = _resolve(OPP_SOURCE, _invoices(("in_1", "2026-03-06", None)))
    po, where = got["in_1"]
    assert po is None
    assert "metadata key 'salesforce_opportunity_id'" in where
    assert f"account {ACCOUNT}" in where
    assert "PO_Number__c" in where


def test_an_opportunity_without_the_field_says_which_record_and_field() -> None:
    opps = [_opp(RENEWAL, "800RENEWAL", "2026-02-20", "  ")]
    got = _resolve(OPP_SOURCE, _invoices(("in_1", "2026-07-01", RENEWAL)), opps=opps)
    po, where = got["in_1"]
    assert po is None
    assert where == f"field PO_Number__c on Salesforce Opportunity {RENEWAL}"


def test_a_link_to_an_opportunity_finsync_does_not_hold_names_it() -> None:
    got = _resolve(OPP_SOURCE, _invoices(("in_1", "2026-03-01", "006GONE")))
    po, where = got["in_1"]
    assert po is None
    assert "006GONE" in where and "salesforce_opportunity_id" in where


def test_the_quote_source_reads_the_primary_quote_of_the_opportunity() -> None:
    got = _resolve(
        QUOTE_SOURCE,
        _invoices(("in_1", "2026-07-01", RENEWAL), ("in_2", "2025-04-01", NEW)),
    )
    assert got["in_1"][0] == "Q-4500000002"
    po, where = got["in_2"]
    assert po is None
    assert where == (
        f"field PO_Number__c on the primary CPQ quote a0QNEW (SBQQ__Quote__c) of Salesforce "
        f"Opportunity {NEW}"
    )


def test_an_opportunity_without_a_primary_quote_says_so() -> None:
    quotes = [_quote("a0QOLD", RENEWAL, "Q-OLD", primary=False)]
    got = _resolve(QUOTE_SOURCE, _invoices(("in_1", "2026-07-01", RENEWAL)), quotes=quotes)
    po, where = got["in_1"]
    assert po is None
    assert f"Opportunity {RENEWAL}, which has none" in where


def test_no_invoices_is_an_empty_frame() -> None:
    got = _resolve(OPP_SOURCE, _invoices())
    assert got == {}


def test_a_numeric_field_is_read_as_its_digits() -> None:
    opps = [_opp(RENEWAL, "800RENEWAL", "2026-02-20", None, PO_Number__c=4500012345)]
    got = _resolve(OPP_SOURCE, _invoices(("in_1", "2026-07-01", RENEWAL)), opps=opps)
    assert got["in_1"][0] == "4500012345"

"""Reconcile billing against the ERP: every status, each explained with both sides."""

import pandas as pd
import pytest

from finsync_pipeline.logic.normalize import correlation_id
from finsync_pipeline.logic.reconcile import (
    ALL_STATUSES,
    DRIFT_STATUSES,
    RECON_COLUMNS,
    credit_note_voids_expected,
    expected_erp_remaining,
    out_of_band_payments_expected,
    reconcile_invoices,
    summarize,
)
from finsync_tests.golden import assert_golden, frame_to_plain


def corr(invoice_id: str) -> str:
    return correlation_id("stripe", "invoice", invoice_id)


# invoice id, currency, total
BILLING = [
    ("in_match", "USD", 1000),
    ("in_missing", "USD", 2000),
    ("in_held", "USD", 3000),
    ("in_held_eid", "JPY", 3000),
    ("in_held_but_posted", "USD", 3500),
    ("in_amount", "USD", 4000),
    ("in_currency", "USD", 5000),
    ("in_dup_eid", "USD", 6000),
    ("in_dup_memo", "USD", 7000),
]
# internal id, external id, currency, total, memo
ERP_DOCS = [
    ("5001", "STRIPE_in_match", "USD", 1000, f"finsync {corr('in_match')} stripe invoice"),
    ("5002", "STRIPE_in_amount", "USD", 4001, None),
    ("5003", "STRIPE_in_currency", "EUR", 5000, None),
    ("5004", "STRIPE_in_dup_eid", "USD", 6000, None),
    ("5005", "STRIPE_in_dup_eid", "USD", 6000, None),
    ("5006", "STRIPE_in_dup_memo", "USD", 7000, None),
    # Keyed by hand, but its memo carries the invoice's correlation id.
    ("5007", None, "USD", 7000, f"re-keyed, see {corr('in_dup_memo')}"),
    ("5008", "STRIPE_in_held_but_posted", "USD", 3500, None),
    ("5009", "STRIPE_in_unknown", "GBP", 900, None),
    ("5010", None, "USD", 50, "manual journal"),
]
HELD = {"in_held", "STRIPE_in_held_eid", "in_held_but_posted"}


def billing() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "external_id": [f"STRIPE_{b[0]}" for b in BILLING],
            "invoice_id": [b[0] for b in BILLING],
            "partition_date": "2026-10-01",
            "currency": [b[1] for b in BILLING],
            "total_minor": pd.array([b[2] for b in BILLING], dtype="Int64"),
            "correlation_id": [corr(b[0]) for b in BILLING],
        }
    )


def erp() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source_id": [d[0] for d in ERP_DOCS],
            "external_id": [d[1] for d in ERP_DOCS],
            "tran_date": "2026-10-01",
            "currency": [d[2] for d in ERP_DOCS],
            "total_minor": pd.array([d[3] for d in ERP_DOCS], dtype="Int64"),
            "memo": [d[4] for d in ERP_DOCS],
        }
    )


@pytest.fixture
def recon() -> pd.DataFrame:
    return reconcile_invoices(billing(), erp(), HELD)


def test_reconciliation_matches_the_golden_file(recon: pd.DataFrame) -> None:
    # The hand-keyed document 5010 has no external id; the golden file holds "erp:5010" for it
    # (the warehouse key cannot be null). Regenerate only once the output says so too.
    assert_golden("reconcile_invoices", frame_to_plain(recon))


@pytest.mark.parametrize(
    ("external_id", "status", "erp_ids"),
    [
        pytest.param("STRIPE_in_match", "matched", "5001", id="matched"),
        pytest.param("STRIPE_in_missing", "missing_in_erp", None, id="missing"),
        pytest.param("STRIPE_in_held", "held_by_exception", None, id="held-by-invoice-id"),
        pytest.param("STRIPE_in_held_eid", "held_by_exception", None, id="held-by-external-id"),
        pytest.param("STRIPE_in_held_but_posted", "matched", "5008", id="held-yet-posted"),
        pytest.param("STRIPE_in_amount", "amount_mismatch", "5002", id="amount"),
        pytest.param("STRIPE_in_currency", "currency_mismatch", "5003", id="currency"),
        pytest.param("STRIPE_in_dup_eid", "duplicate_in_erp", "5004,5005", id="dup-external-id"),
        pytest.param("STRIPE_in_dup_memo", "duplicate_in_erp", "5006,5007", id="dup-by-memo"),
        pytest.param("STRIPE_in_unknown", "extra_in_erp", "5009", id="extra"),
        pytest.param("erp:5010", "extra_in_erp", "5010", id="extra-without-external-id"),
    ],
)
def test_each_invoice_gets_its_status(
    recon: pd.DataFrame, external_id: str, status: str, erp_ids: str | None
) -> None:
    hit = recon[recon["external_id"] == external_id]
    assert len(hit) == 1
    row = hit.iloc[0]
    assert row["status"] == status
    assert (None if pd.isna(row["erp_internal_ids"]) else row["erp_internal_ids"]) == erp_ids


@pytest.mark.parametrize(
    ("external_id", "explanation"),
    [
        pytest.param(
            "STRIPE_in_amount",
            "billing 4000 USD (minor units), ERP 4001 USD (minor units)",
            id="amount",
        ),
        pytest.param(
            "STRIPE_in_currency",
            "billing 5000 USD (minor units), ERP 5000 EUR (minor units)",
            id="currency",
        ),
        pytest.param(
            "STRIPE_in_missing",
            "billing has 2000 USD (minor units); the ERP has no document",
            id="missing",
        ),
        pytest.param("STRIPE_in_match", "both 1000 USD (minor units)", id="matched"),
        pytest.param(
            "STRIPE_in_dup_memo", "the ERP holds 2 documents (5006,5007) for it", id="duplicate"
        ),
        pytest.param(
            "STRIPE_in_unknown",
            "the ERP holds 900 GBP (minor units) that no billing document accounts for",
            id="extra",
        ),
    ],
)
def test_explanations_name_both_sides(
    recon: pd.DataFrame, external_id: str, explanation: str
) -> None:
    row = recon.set_index("external_id").loc[external_id]
    assert row["explanation"] == explanation


def test_a_mismatch_carries_both_figures(recon: pd.DataFrame) -> None:
    row = recon.set_index("external_id").loc["STRIPE_in_amount"]
    assert (row["billing_total_minor"], row["erp_total_minor"]) == (4000, 4001)
    assert (row["billing_currency"], row["erp_currency"]) == ("USD", "USD")
    assert row["correlation_id"] == corr("in_amount")


def test_every_document_appears_exactly_once(recon: pd.DataFrame) -> None:
    assert list(recon.columns) == RECON_COLUMNS
    assert not recon["external_id"].duplicated().any()
    assert len(recon) == len(BILLING) + 2
    # Every ERP document is accounted for by exactly one row.
    ids = [i for cell in recon["erp_internal_ids"].dropna() for i in cell.split(",")]
    assert sorted(ids) == sorted(d[0] for d in ERP_DOCS)


def test_summarize_counts_every_status(recon: pd.DataFrame) -> None:
    assert summarize(recon) == {
        "matched": 2,
        "held_by_exception": 2,
        "missing_in_erp": 1,
        "amount_mismatch": 1,
        "currency_mismatch": 1,
        "duplicate_in_erp": 2,
        "extra_in_erp": 2,
        "status_mismatch": 0,
        "awaiting_window": 0,
        "balance_mismatch": 0,
        "quarantined": 0,
    }


def _balances(
    rows: list[tuple[str, str, int | None, int | None]],
    pending: dict[str, tuple[str, str]] | None = None,
) -> pd.DataFrame:
    """Reconcile invoices of 1000 USD that both sides hold, each with billing's status and
    amount remaining and the ERP's amount remaining: (invoice, status, billing, ERP)."""
    expected = pd.DataFrame(
        {
            "external_id": [f"STRIPE_{r[0]}" for r in rows],
            "invoice_id": [r[0] for r in rows],
            "partition_date": "2026-10-01",
            "currency": "USD",
            "total_minor": pd.array([1000] * len(rows), dtype="Int64"),
            "correlation_id": [corr(r[0]) for r in rows],
            "status": [r[1] for r in rows],
            "remaining_minor": [expected_erp_remaining(r[1], r[2]) for r in rows],
        }
    )
    erp_side = pd.DataFrame(
        {
            "source_id": [str(6000 + n) for n in range(len(rows))],
            "external_id": [f"STRIPE_{r[0]}" for r in rows],
            "tran_date": "2026-10-01",
            "currency": "USD",
            "total_minor": pd.array([1000] * len(rows), dtype="Int64"),
            "remaining_minor": pd.array([r[3] for r in rows], dtype="Int64"),
            "status": ["Open" if r[3] else "Paid In Full" for r in rows],
            "memo": None,
        }
    )
    return reconcile_invoices(expected, erp_side, set(), None, pending).set_index("invoice_id")


def test_same_totals_with_different_balances_are_drift_with_both_sides() -> None:
    recon = _balances(
        [
            ("in_paid", "paid", 0, 0),
            ("in_part", "open", 400, 400),
            # Paid in billing (from the customer's credit balance, out of band...), open in the
            # ERP: the totals agree, but the ERP still expects 1000 from the customer.
            ("in_paid_open", "paid", 0, 1000),
            # Marked uncollectible in billing but never written off in the ERP.
            ("in_bad_debt", "uncollectible", 1000, 1000),
            ("in_part_paid_erp", "open", 1000, 250),
        ]
    )
    assert recon["status"].to_dict() == {
        "in_paid": "matched",
        "in_part": "matched",
        "in_paid_open": "balance_mismatch",
        "in_bad_debt": "balance_mismatch",
        "in_part_paid_erp": "balance_mismatch",
    }
    row = recon.loc["in_paid_open"]
    assert (row["billing_remaining_minor"], row["erp_remaining_minor"]) == (0, 1000)
    assert (row["billing_status"], row["erp_status"]) == ("paid", "Open")
    assert row["explanation"] == (
        "billing (paid) leaves 0 USD (minor units) to collect, the ERP (Open) 1000 USD "
        "(minor units); both total 1000 USD (minor units)"
    )
    assert row["correlation_id"] == corr("in_paid_open")
    assert "balance_mismatch" in DRIFT_STATUSES


def test_a_balance_a_document_on_its_way_explains_is_not_drift() -> None:
    pending = {
        "in_paid_open": ("awaiting_window", "STRIPE_ch_1 is queued for posting (pending)"),
        "in_bad_debt": ("held_by_exception", "an open uncollectible_invoice exception"),
    }
    recon = _balances(
        [("in_paid_open", "paid", 0, 1000), ("in_bad_debt", "uncollectible", 1000, 1000)],
        pending,
    )
    assert recon["status"].to_dict() == {
        "in_paid_open": "awaiting_window",
        "in_bad_debt": "held_by_exception",
    }
    assert recon.at["in_paid_open", "explanation"].endswith(
        "STRIPE_ch_1 is queued for posting (pending)"
    )


def test_a_document_queued_for_its_batch_window_is_awaiting_not_missing() -> None:
    awaiting = {"STRIPE_in_missing": "0 3 * * *", "STRIPE_in_held": "0 3 * * *"}
    recon = reconcile_invoices(billing(), erp(), HELD, awaiting).set_index("invoice_id")
    assert recon.at["in_missing", "status"] == "awaiting_window"
    assert "0 3 * * *" in recon.at["in_missing", "explanation"]
    # An open exception explains a document first: it is what a person must act on.
    assert recon.at["in_held", "status"] == "held_by_exception"
    assert summarize(recon.reset_index())["missing_in_erp"] == 0


def test_summarize_of_nothing_is_all_zero() -> None:
    empty = reconcile_invoices(billing().iloc[0:0], erp().iloc[0:0], set())
    assert empty.empty
    assert summarize(empty) == dict.fromkeys(ALL_STATUSES, 0)


def test_payments_reconcile_with_the_invoice_classification() -> None:
    import pandas as pd

    from finsync_pipeline.logic.reconcile import reconcile_payments, summarize

    expected = pd.DataFrame(
        [
            {
                "external_id": "STRIPE_ch_1",
                "payment_id": "ch_1",
                "partition_date": "2026-10-02",
                "currency": "USD",
                "total_minor": 5000,
                "correlation_id": "fs-" + "a" * 20,
            },
            {
                "external_id": "STRIPE_ch_2",
                "payment_id": "ch_2",
                "partition_date": "2026-10-02",
                "currency": "USD",
                "total_minor": 7000,
                "correlation_id": "fs-" + "b" * 20,
            },
            {
                "external_id": "STRIPE_ch_3",
                "payment_id": "ch_3",
                "partition_date": "2026-10-02",
                "currency": "EUR",
                "total_minor": 100,
                "correlation_id": "fs-" + "c" * 20,
            },
        ]
    )
    erp = pd.DataFrame(
        [
            {
                "source_id": "9001",
                "external_id": "STRIPE_ch_1",
                "tran_date": "2026-10-02",
                "currency": "USD",
                "total_minor": 5000,
                "memo": None,
            },
            {
                "source_id": "9002",
                "external_id": "STRIPE_ch_2",
                "tran_date": "2026-10-02",
                "currency": "USD",
                "total_minor": 6999,
                "memo": None,
            },
        ]
    )
    recon = reconcile_payments(expected, erp, held_ids={"ch_3"})
    assert "payment_id" in recon.columns and "invoice_id" not in recon.columns
    by_id = dict(zip(recon["payment_id"], recon["status"], strict=True))
    assert by_id == {"ch_1": "matched", "ch_2": "amount_mismatch", "ch_3": "held_by_exception"}
    assert summarize(recon)["amount_mismatch"] == 1


@pytest.mark.parametrize(
    ("invoice", "erp", "status"),
    [
        (
            {"invoice_date": "2026-10-01", "currency": "EUR", "subtotal_minor": 1062600},
            "matched",
            "matched",
        ),
        (
            {"invoice_date": "2026-10-02", "currency": "EUR", "subtotal_minor": 1062600},
            None,
            "missing_in_erp",
        ),
        (
            {"invoice_date": "2026-10-01", "currency": "EUR", "subtotal_minor": 999},
            "matched",
            "amount_mismatch",
        ),
        (
            {"invoice_date": "2026-10-01", "currency": "USD", "subtotal_minor": 1062600},
            "matched",
            "currency_mismatch",
        ),
        (
            {"invoice_date": "2026-11-15", "currency": "EUR", "subtotal_minor": 1062600},
            "matched",
            "missing_in_billing",
        ),
        (
            {"invoice_date": "2026-10-01", "currency": "EUR", "subtotal_minor": 1062600},
            "held_by_exception",
            "held_by_exception",
        ),
        (
            {"invoice_date": "2026-10-01", "currency": "EUR", "subtotal_minor": 1062600},
            "awaiting_window",
            "awaiting_window",
        ),
        (
            {
                "invoice_date": "2026-10-01",
                "currency": "EUR",
                "subtotal_minor": 1062600,
                "status": "void",
            },
            None,
            "status_mismatch",
        ),
        (
            {
                "invoice_date": "2026-10-01",
                "currency": "USDX",
                "subtotal_minor": 1062600,
                "status": "quarantined",
            },
            None,
            "held_by_exception",
        ),
    ],
    ids=[
        "agree",
        "not-in-erp",
        "amount",
        "currency",
        "no-invoice-in-term",
        "held",
        "awaiting-window",
        "voided",
        "quarantined",
    ],
)
def test_a_renewal_is_checked_against_billing_and_the_erp(
    invoice: dict, erp: str | None, status: str
) -> None:
    import pandas as pd

    from finsync_pipeline.logic.reconcile import reconcile_renewals

    renewals = pd.DataFrame(
        [
            {
                "opportunity_id": "006R",
                "account_id": "001A",
                "close_date": "2026-09-28",
                "term_start": "2026-10-01",
                "currency": "EUR",
                "amount_minor": 1062600,
            }
        ]
    )
    invoices = pd.DataFrame([{"invoice_id": "in_1", "customer_key": "001A", **invoice}])
    recon = reconcile_renewals(renewals, invoices, {"in_1": erp} if erp else {}, set())
    row = recon.iloc[0]
    assert row["status"] == status
    assert row["explanation"]


def test_a_renewal_on_a_quarantined_account_is_held_not_missing() -> None:
    import pandas as pd

    from finsync_pipeline.logic.reconcile import reconcile_renewals

    renewals = pd.DataFrame(
        [
            {
                "opportunity_id": f"006{a}",
                "account_id": f"001{a}",
                "close_date": "2026-09-28",
                "term_start": "2026-10-01",
                "currency": "EUR",
                "amount_minor": 1062600,
            }
            for a in ("Q", "M")
        ]
    )
    no_invoices = pd.DataFrame(
        columns=["invoice_id", "customer_key", "invoice_date", "currency", "subtotal_minor"]
    )
    recon = reconcile_renewals(renewals, no_invoices, {}, set(), quarantined_accounts={"001Q"})
    by_id = dict(zip(recon["opportunity_id"], recon["status"], strict=True))
    assert by_id == {"006Q": "held_by_exception", "006M": "missing_in_billing"}
    held = recon[recon["opportunity_id"] == "006Q"].iloc[0]
    assert "quarantine" in held["explanation"]


def test_a_renewal_the_crm_and_billing_disagree_on_goes_to_revops() -> None:
    from finsync_pipeline.logic.reconcile import RENEWAL_COLUMNS, renewal_exceptions

    base = dict.fromkeys(RENEWAL_COLUMNS)
    recon = pd.DataFrame(
        [
            {
                **base,
                "opportunity_id": "006A",
                "account_id": "001A",
                "term_start": "2026-10-01",
                "status": "status_mismatch",
                "explanation": "billing voided its invoice",
            },
            {
                **base,
                "opportunity_id": "006B",
                "account_id": "001B",
                "term_start": "2026-10-01",
                "status": "matched",
                "explanation": "agree",
            },
            # The ERP side of a renewal is its invoice's difference, already reconciled there.
            {
                **base,
                "opportunity_id": "006C",
                "account_id": "001C",
                "term_start": "2026-10-01",
                "status": "missing_in_erp",
                "explanation": "the ERP has nothing",
            },
        ]
    )
    (problem,) = renewal_exceptions(recon).to_dict("records")
    assert (problem["kind"], problem["owner_queue"], problem["source_id"]) == (
        "renewal_mismatch",
        "revops",
        "006A",
    )
    assert "001A" in problem["detail"] and "billing voided its invoice" in problem["detail"]


def test_a_receipt_outside_stripe_is_expected_in_the_erp_only_when_finance_posts_it() -> None:
    invoices = pd.DataFrame(
        [
            # Paid 10000 by wire after a 4000 card charge; paid by card; still open.
            ("in_wire", "2026-10-02", "EUR", "paid", 1, 10000, "fs-w"),
            ("in_card", "2026-10-02", "EUR", "paid", 0, 5000, "fs-c"),
            ("in_open", "2026-10-02", "EUR", "open", 0, 0, "fs-o"),
        ],
        columns=[
            "invoice_id",
            "partition_date",
            "currency",
            "status",
            "paid_out_of_band",
            "amount_paid_minor",
            "correlation_id",
        ],
    )
    collected = {"in_wire": 4000, "in_card": 5000}
    expected = out_of_band_payments_expected(invoices, collected, posted=True)
    assert expected.to_dict("records") == [
        {
            "payment_id": "in_wire",
            "external_id": "OOB_in_wire",
            "partition_date": "2026-10-02",
            "currency": "EUR",
            "total_minor": 6000,
            "correlation_id": "fs-w",
        }
    ]
    # Without a clearing account finance records the receipt by hand: nothing is expected.
    assert out_of_band_payments_expected(invoices, collected, posted=False).empty


@pytest.mark.parametrize(
    ("erp_left", "memo_state", "held", "status"),
    [
        pytest.param(0, "posted", set(), "matched", id="closed-by-its-memo"),
        pytest.param(5474, "pending", set(), "awaiting_window", id="memo-on-its-way"),
        pytest.param(5474, "rejected", {"STRIPE_cn_v"}, "held_by_exception", id="memo-refused"),
        pytest.param(5474, "posted", set(), "balance_mismatch", id="left-open"),
    ],
)
def test_the_invoice_compensating_a_voided_credit_note_leaves_nothing_to_collect(
    erp_left: int, memo_state: str, held: set[str], status: str
) -> None:
    compensations = pd.DataFrame(
        [
            {
                "external_id": "CNVOID_cn_v",
                "credit_note_id": "cn_v",
                "partition_date": "2026-10-19",
                "currency": "EUR",
                "total_minor": 5474,
                "correlation_id": "fs-cnv",
                "memo_state": memo_state,
            }
        ]
    )
    expected, pending = credit_note_voids_expected(compensations, held)
    erp_side = pd.DataFrame(
        {
            "source_id": ["5100"],
            "external_id": ["CNVOID_cn_v"],
            "tran_date": ["2026-10-19"],
            "currency": ["EUR"],
            "total_minor": pd.array([5474], dtype="Int64"),
            "remaining_minor": pd.array([erp_left], dtype="Int64"),
            "status": ["Paid In Full" if erp_left == 0 else "Open"],
            "memo": ["finsync fs-cnv void of stripe credit note cn_v"],
        }
    )
    (row,) = reconcile_invoices(expected, erp_side, held, {}, pending).to_dict("records")
    assert (row["status"], row["invoice_id"], row["erp_remaining_minor"]) == (
        status,
        "cn_v",
        erp_left,
    )
    assert row["billing_total_minor"] == row["erp_total_minor"] == 5474
    if status == "balance_mismatch":
        assert "5474 EUR (minor units)" in row["explanation"]

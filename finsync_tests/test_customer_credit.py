"""A downgrade's credit, end to end over HTTP against the sandbox: the net-negative invoice
reaches NetSuite as a credit memo for its credit, the customer's next invoice (paid partly from
that credit in Stripe) has it applied in NetSuite, and running again posts nothing twice."""

import dagster as dg
import sqlalchemy as sa

from finsync_pipeline.money import to_minor
from finsync_pipeline.resources.warehouse import create_engine
from finsync_pipeline.sandbox.server import Sandbox
from finsync_tests.conftest import TEST_END
from finsync_tests.defs.test_assets import _resources
from finsync_tests.test_daily_runs import FIRST_DAY, _daily, instance, sandbox

__all__ = ["instance", "sandbox"]


def _ledger(url: str) -> list[tuple[str, str, str]]:
    with create_engine(url).connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text(
                    "SELECT doc_type, external_id, state FROM posting_ledger "
                    "WHERE doc_type <> 'customer' ORDER BY doc_type, external_id"
                )
            )
        ]


def test_a_downgrade_credit_reaches_netsuite_and_pays_the_next_invoice_as_stripe_did(
    sandbox: Sandbox, sqlite_url: str, instance: dg.DagsterInstance
) -> None:
    planted = sandbox.planted()
    (down,) = [p["id"] for p in planted["net_negative"]]
    (later,) = [p["id"] for p in planted["paid_from_balance"]]
    resources = _resources(sandbox.env, sqlite_url)
    stripe = resources["stripe"].get_client()
    netsuite = resources["netsuite"].get_client()
    down_in_stripe = stripe.retrieve("invoices", down)
    later_in_stripe = stripe.retrieve("invoices", later)
    currency = str(down_in_stripe["currency"]).upper()

    def minor(amount: object) -> int:
        return to_minor(str(amount), currency)

    credit = -down_in_stripe["total"]
    assert credit > 0 and down_in_stripe["amount_due"] == 0
    assert later_in_stripe["starting_balance"] == -credit
    assert later_in_stripe["amount_due"] == later_in_stripe["total"] - credit

    _daily(sandbox, sqlite_url, FIRST_DAY, instance, last_day=TEST_END)

    # No negative invoice: a credit memo of the credit, left as credit on account.
    assert netsuite.get_by_external_id("invoice", f"STRIPE_{down}") is None
    memo = netsuite.get_by_external_id("creditmemo", f"STRIPE_CREDIT_{down}")
    assert memo is not None
    assert minor(memo["total"]) == credit
    # The next invoice posts for its total, its charge for what Stripe charged, and the
    # credit for what Stripe applied: NetSuite's amount remaining is Stripe's.
    invoice = netsuite.get_by_external_id("invoice", f"STRIPE_{later}")
    assert invoice is not None
    assert minor(invoice["total"]) == later_in_stripe["total"]
    assert minor(invoice["amountRemaining"]) == later_in_stripe["amount_remaining"]
    application = netsuite.get_by_external_id("customerpayment", f"BALANCE_{later}")
    assert application is not None and minor(application["payment"]) == 0
    assert [c["doc"]["id"] for c in application["credit"]["items"]] == [memo["id"]]
    memo_now = netsuite.get("creditmemo", memo["id"])
    assert memo_now is not None and minor(memo_now["amountRemaining"]) == 0

    with create_engine(sqlite_url).connect() as conn:
        recon = dict(
            conn.execute(
                sa.text(
                    "SELECT invoice_id, status FROM invoice_reconciliation "
                    "WHERE invoice_id IN (:a, :b)"
                ),
                {"a": down, "b": later},
            ).fetchall()
        )
        payments = dict(
            conn.execute(
                sa.text(
                    "SELECT external_id, status FROM payment_reconciliation WHERE external_id = :e"
                ),
                {"e": f"BALANCE_{later}"},
            ).fetchall()
        )
        drift = conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM invoice_reconciliation WHERE status IN "
                "('missing_in_erp', 'extra_in_erp', 'amount_mismatch')"
            )
        ).scalar_one()
        balance_exceptions = conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM finance_exceptions WHERE status = 'open' "
                "AND kind = 'customer_balance_unmatched'"
            )
        ).scalar_one()
    assert recon == {down: "matched", later: "matched"}
    assert payments == {f"BALANCE_{later}": "matched"}
    assert drift == 0
    assert balance_exceptions == 0

    # Running the same days again posts nothing twice.
    before = _ledger(sqlite_url)
    records = {
        rtype: len(sandbox.netsuite_records(rtype))
        for rtype in ("invoice", "creditmemo", "customerpayment")
    }
    _daily(sandbox, sqlite_url, FIRST_DAY, instance, last_day=TEST_END)
    assert _ledger(sqlite_url) == before
    assert {
        rtype: len(sandbox.netsuite_records(rtype))
        for rtype in ("invoice", "creditmemo", "customerpayment")
    } == records
    again = netsuite.get_by_external_id("invoice", f"STRIPE_{later}")
    assert again is not None and again["amountRemaining"] == invoice["amountRemaining"]

"""Reconcile billing against the ERP. Pure: every difference is classified and explained.

Statuses:
    matched            the ERP holds exactly one document, same currency and total.
    missing_in_erp     billing has a postable document the ERP lacks, and nothing explains why.
    held_by_exception  billing has a document the ERP lacks because an open finance exception
                       holds it; it is tracked in the exceptions queue, so it is not drift.
    awaiting_window    billing has a document the ERP lacks because its posting flow is batch
                       and it waits on the ledger for the flow's window; not drift.
    amount_mismatch    one ERP document, different total.
    currency_mismatch  one ERP document, different currency.
    duplicate_in_erp   more than one ERP document carries the source's external or correlation id.
    extra_in_erp       an ERP document that no billing document accounts for.
    status_mismatch    voided in billing after posting, but not yet reversed in the ERP.
    balance_mismatch   same total, but what is left to collect differs: billing's amount
                       remaining (0 once paid, written off or voided) against the ERP's.
    quarantined        billing has an invoice that failed its contract and sits in quarantine:
                       not drift the ERP can fix, but money the ERP does not have, so it is
                       reported with its amount (the reason says what to fix).

A balance difference that a document still on its way explains (a payment or credit note held
by an open exception, or queued for posting) is reported as held or awaiting, not as drift.
"""

from collections.abc import Mapping

import pandas as pd

from finsync_pipeline.logic.derive import (
    LIVE_INVOICE_STATUSES,
    ExceptionRows,
    balance_application_external_id,
    balance_applied,
    credit_memo_external_id,
    net_negative_external_id,
    out_of_band_payment_external_id,
    paid_outside_stripe,
)

DRIFT_STATUSES = (
    "missing_in_erp",
    "status_mismatch",
    "balance_mismatch",
    "amount_mismatch",
    "currency_mismatch",
    "duplicate_in_erp",
    "extra_in_erp",
)
ALL_STATUSES = ("matched", "held_by_exception", "awaiting_window", "quarantined", *DRIFT_STATUSES)
CORRELATION_PATTERN = r"(fs-[0-9a-f]{20})"
# The documents that move an invoice's balance in the ERP, as (invoice_id, doc_id) with doc_id
# the ledger's source_id: its payments, its credit notes, and what is filed under the invoice
# itself (a reversal, a write-off, a credit applied from the customer's balance).
BALANCE_DOCUMENTS_SQL = (
    "SELECT invoice_id, payment_id AS doc_id FROM payments WHERE invoice_id IS NOT NULL "
    "UNION ALL SELECT invoice_id, credit_note_id FROM credit_notes "
    "UNION ALL SELECT invoice_id, invoice_id FROM invoices"
)
RECON_COLUMNS = [
    "partition_date",
    "external_id",
    "invoice_id",
    "erp_internal_ids",
    "status",
    "billing_currency",
    "billing_total_minor",
    "erp_currency",
    "erp_total_minor",
    "billing_status",
    "billing_remaining_minor",
    "erp_status",
    "erp_remaining_minor",
    "correlation_id",
    "explanation",
]


def _fmt(minor: object, currency: object) -> str:
    # A column with a null in it reaches here as floats: minor units are whole numbers.
    amount = "no amount" if _na(minor) else int(minor)  # type: ignore[call-overload]
    return f"{amount} {currency} (minor units)"


def _na(value: object) -> bool:
    return value is None or bool(pd.isna(value))


def expected_erp_remaining(status: object, amount_remaining_minor: object) -> int:
    """What the ERP should have left to collect on a posted invoice of this billing state.

    An open invoice owes what billing says it owes; a paid one nothing; an uncollectible one
    nothing either once it is written off (finance's policy decides how: a write-off credit
    memo, or an exception finance works by hand).
    """
    return 0 if status != "open" or _na(amount_remaining_minor) else int(amount_remaining_minor)  # type: ignore[call-overload]


def reconcile_invoices(
    expected: pd.DataFrame,
    erp: pd.DataFrame,
    held_ids: set[str],
    awaiting: Mapping[str, str] | None = None,
    balance_pending: Mapping[str, tuple[str, str]] | None = None,
) -> pd.DataFrame:
    """Classify every billing invoice and every ERP invoice of a date range.

    Args:
        expected: Live billing invoices of the range: external_id, invoice_id, partition_date,
            currency, total_minor, correlation_id; with ``status`` and ``remaining_minor`` (what
            the ERP should have left to collect, null when not judged) balances are compared.
        erp: ERP invoices of the range: source_id, external_id, tran_date, currency,
            total_minor, memo; with ``remaining_minor`` and ``status`` for balances.
        held_ids: Invoice or external ids an open finance exception holds back.
        awaiting: External id -> the batch window (a cron) its ledger row waits for.
        balance_pending: Invoice id -> (held_by_exception or awaiting_window, why) for an
            invoice whose balance a document still on its way explains.
    """
    awaiting = awaiting or {}
    balance_pending = balance_pending or {}
    rows: list[dict[str, object]] = []
    erp = erp.copy()
    erp["matched_to"] = None
    # The memo carries the correlation id, so a document posted twice under different external
    # ids (or keyed by hand in the ERP) is still found.
    erp["memo_correlation"] = erp["memo"].fillna("").str.extract(CORRELATION_PATTERN)[0]
    by_external = {k: g for k, g in erp.groupby("external_id", dropna=True)}
    by_correlation = {k: g for k, g in erp.groupby("memo_correlation", dropna=True)}
    none = erp.iloc[0:0]

    def docs_for(external_id: str, correlation: str) -> pd.DataFrame:
        found = pd.concat(
            [by_external.get(external_id, none), by_correlation.get(correlation, none)]
        )
        return found.drop_duplicates("source_id")

    def classify(doc: pd.Series, is_held: bool) -> None:
        external_id = str(doc["external_id"])
        found = docs_for(external_id, str(doc["correlation_id"] or ""))
        erp.loc[erp["source_id"].isin(found["source_id"]), "matched_to"] = external_id
        base: dict[str, object] = {
            "partition_date": doc["partition_date"],
            "external_id": external_id,
            "invoice_id": doc["invoice_id"],
            "erp_internal_ids": ",".join(sorted(found["source_id"].astype(str))) or None,
            "billing_currency": doc["currency"],
            "billing_total_minor": doc["total_minor"],
            "erp_currency": None,
            "erp_total_minor": None,
            "billing_status": doc.get("status"),
            "billing_remaining_minor": doc.get(
                "amount_remaining_minor", doc.get("remaining_minor")
            ),
            "erp_status": None,
            "erp_remaining_minor": None,
            "correlation_id": doc["correlation_id"],
        }
        billing = _fmt(doc["total_minor"], doc["currency"])
        if found.empty:
            if is_held:
                status, why = "held_by_exception", "not posted: an open finance exception holds it"
            elif external_id in awaiting:
                status = "awaiting_window"
                why = f"queued for the batch posting window ({awaiting[external_id]}, UTC)"
            else:
                status, why = "missing_in_erp", f"billing has {billing}; the ERP has no document"
        elif len(found) > 1:
            status = "duplicate_in_erp"
            why = f"the ERP holds {len(found)} documents ({base['erp_internal_ids']}) for it"
        else:
            hit = found.iloc[0]
            base["erp_currency"] = hit["currency"]
            base["erp_total_minor"] = None if pd.isna(hit["total_minor"]) else hit["total_minor"]
            base["erp_status"] = None if _na(hit.get("status")) else hit.get("status")
            erp_left = hit.get("remaining_minor")
            base["erp_remaining_minor"] = None if _na(erp_left) else int(erp_left)
            erp_side = _fmt(base["erp_total_minor"], hit["currency"])
            billing_left = doc.get("remaining_minor")
            if hit["currency"] != doc["currency"]:
                status, why = "currency_mismatch", f"billing {billing}, ERP {erp_side}"
            elif base["erp_total_minor"] != doc["total_minor"]:
                status, why = "amount_mismatch", f"billing {billing}, ERP {erp_side}"
            elif (
                _na(billing_left)
                or base["erp_remaining_minor"] is None
                or int(billing_left) == base["erp_remaining_minor"]
            ):
                status, why = "matched", f"both {billing}"
            else:
                balances = (
                    f"billing ({doc.get('status')}) leaves {_fmt(billing_left, doc['currency'])} "
                    f"to collect, the ERP ({base['erp_status'] or 'no status'}) "
                    f"{_fmt(base['erp_remaining_minor'], hit['currency'])}; both total {billing}"
                )
                if base["billing_remaining_minor"] != billing_left:
                    # Uncollectible: billing still shows the debt, the ERP should have it
                    # written off.
                    balances += (
                        f" (billing shows {_fmt(base['billing_remaining_minor'], doc['currency'])}"
                        " unpaid, which the ERP must write off)"
                    )
                pending = balance_pending.get(str(doc["invoice_id"]))
                if pending is not None:
                    status, why = pending[0], f"{balances}: {pending[1]}"
                else:
                    status, why = "balance_mismatch", balances
        rows.append({**base, "status": status, "explanation": why})

    for doc in expected.sort_values("external_id").to_dict("records"):
        held = doc["invoice_id"] in held_ids or doc["external_id"] in held_ids
        classify(pd.Series(doc), is_held=held)
    for extra in erp[erp["matched_to"].isna()].sort_values("source_id").to_dict("records"):
        rows.append(
            {
                "partition_date": extra["tran_date"],
                "external_id": f"erp:{extra['source_id']}"
                if pd.isna(extra["external_id"])
                else extra["external_id"],
                "invoice_id": None,
                "erp_internal_ids": str(extra["source_id"]),
                "status": "extra_in_erp",
                "billing_currency": None,
                "billing_total_minor": None,
                "erp_currency": extra["currency"],
                "erp_total_minor": extra["total_minor"],
                "billing_status": None,
                "billing_remaining_minor": None,
                "erp_status": None if _na(extra.get("status")) else extra.get("status"),
                "erp_remaining_minor": None
                if _na(extra.get("remaining_minor"))
                else extra.get("remaining_minor"),
                "correlation_id": None,
                "explanation": "the ERP holds "
                + _fmt(extra["total_minor"], extra["currency"])
                + " that no billing document accounts for",
            }
        )
    return pd.DataFrame(rows, columns=RECON_COLUMNS)


def summarize(recon: pd.DataFrame) -> dict[str, int]:
    """Counts per status, every status present (zero when absent)."""
    counts = recon["status"].value_counts()
    return {status: int(counts.get(status, 0)) for status in ALL_STATUSES}


def reconcile_payments(
    expected: pd.DataFrame,
    erp: pd.DataFrame,
    held_ids: set[str],
    awaiting: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Classify every collected gateway payment and every ERP customer payment of a range.

    The same statuses and explanations as invoices: a payment is one document on each side,
    keyed by its external id and found again by the correlation id in the ERP memo.

    Args:
        expected: Collected payments: external_id, payment_id, partition_date, currency,
            total_minor, correlation_id.
        erp: ERP customer payments of the range (the columns of ``reconcile_invoices``).
        held_ids: Payment or external ids an open finance exception holds back.
        awaiting: External id -> the batch window (a cron) its ledger row waits for.
    """
    as_documents = expected.rename(columns={"payment_id": "invoice_id"})
    recon = reconcile_invoices(as_documents, erp, held_ids, awaiting)
    return recon.rename(columns={"invoice_id": "payment_id"})


RENEWAL_STATUSES = (
    "matched",
    "held_by_exception",
    "awaiting_window",
    "missing_in_billing",
    "missing_in_erp",
    "amount_mismatch",
    "currency_mismatch",
    "status_mismatch",
)
RENEWAL_DRIFT = tuple(
    s for s in RENEWAL_STATUSES if s not in ("matched", "held_by_exception", "awaiting_window")
)
RENEWAL_COLUMNS = [
    "opportunity_id",
    "account_id",
    "close_date",
    "term_start",
    "status",
    "crm_currency",
    "crm_amount_minor",
    "invoice_id",
    "billing_currency",
    "billing_subtotal_minor",
    "erp_status",
    "explanation",
]


# Renewal differences between the CRM and billing: revops works them in the exceptions queue
# (a renewal missing in the ERP is the invoice's own difference, in invoice reconciliation).
RENEWAL_EXCEPTION_STATUSES = (
    "missing_in_billing",
    "amount_mismatch",
    "currency_mismatch",
    "status_mismatch",
)


def renewal_exceptions(recon: pd.DataFrame) -> pd.DataFrame:
    """A ``renewal_mismatch`` exception for each renewal the CRM and billing disagree on."""
    problems = ExceptionRows([])
    for r in recon[recon["status"].isin(RENEWAL_EXCEPTION_STATUSES)].to_dict("records"):
        problems.add(
            "renewal_mismatch",
            "salesforce",
            r["opportunity_id"],
            f"Closed-won renewal {r['opportunity_id']} of account {r['account_id']} "
            f"({r['status']}): {r['explanation']}",
            partition_date=r["term_start"],
        )
    return problems.frame()


# Days after a term starts that its first invoice may be dated (billing runs on its own clock).
TERM_GRACE_DAYS = 3


def reconcile_renewals(
    renewals: pd.DataFrame,
    invoices: pd.DataFrame,
    erp_status: dict[str, str],
    held_ids: set[str],
    *,
    quarantined_accounts: frozenset[str] | set[str] = frozenset(),
    grace_days: int = TERM_GRACE_DAYS,
    billed_through: tuple[str, str] | None = None,
) -> pd.DataFrame:
    """Each closed-won renewal in the CRM against its first invoice in billing and the ERP.

    The renewal's new term starts on its contract's start date; its first invoice is the
    account's invoice dated that day (or within ``grace_days`` after), whose subtotal must equal
    the renewal's amount in the same currency, and which must be in the ERP.

    Args:
        renewals: opportunity_id, account_id, close_date, term_start, currency, amount_minor.
        invoices: Finalized invoices: invoice_id, customer_key, invoice_date, currency,
            subtotal_minor, status (a void one means billing undid the renewal).
        erp_status: invoice_id -> its status in invoice reconciliation (matched, ...).
        held_ids: Records an open finance exception holds back.
        quarantined_accounts: CRM accounts in quarantine: their invoices have no customer key,
            so a renewal on one is held (see the quarantine reason), not missing.
        billed_through: The first and last day of billing history extracted; a renewal whose
            term starts outside it cannot be judged from this history and is left out.
    """
    if billed_through is not None:
        starts = renewals["term_start"].fillna(renewals["close_date"])
        inside = (starts >= billed_through[0]) & (starts <= billed_through[1])
        renewals = renewals[inside]
    by_account = {k: g for k, g in invoices.groupby("customer_key")}
    rows: list[dict[str, object]] = []
    for opp in renewals.sort_values(["close_date", "opportunity_id"]).to_dict("records"):
        start = pd.Timestamp(opp["term_start"] or opp["close_date"])
        base: dict[str, object] = {
            "opportunity_id": opp["opportunity_id"],
            "account_id": opp["account_id"],
            "close_date": opp["close_date"],
            "term_start": start.date().isoformat(),
            "crm_currency": opp["currency"],
            "crm_amount_minor": opp["amount_minor"],
            "invoice_id": None,
            "billing_currency": None,
            "billing_subtotal_minor": None,
            "erp_status": None,
        }
        crm = f"{opp['amount_minor']} {opp['currency']} (minor units)"
        candidates = by_account.get(opp["account_id"], invoices.iloc[0:0])
        dates = pd.to_datetime(candidates["invoice_date"])
        window = candidates[(dates >= start) & (dates <= start + pd.Timedelta(days=grace_days))]
        if window.empty:
            if opp["account_id"] in quarantined_accounts:
                status, why = (
                    "held_by_exception",
                    "its CRM account is in quarantine (see the reason)",
                )
            elif opp["account_id"] in held_ids:
                status, why = "held_by_exception", "the account is held by an open exception"
            else:
                status = "missing_in_billing"
                why = f"the CRM renewed for {crm} from {base['term_start']}; billing has no invoice"
            rows.append({**base, "status": status, "explanation": why})
            continue
        exact = window[window["subtotal_minor"] == opp["amount_minor"]]
        invoice = (exact if len(exact) else window).sort_values("invoice_date").iloc[0]
        base.update(
            invoice_id=invoice["invoice_id"],
            billing_currency=invoice["currency"],
            billing_subtotal_minor=invoice["subtotal_minor"],
            erp_status=erp_status.get(str(invoice["invoice_id"])),
        )
        billing = f"{invoice['subtotal_minor']} {invoice['currency']} (minor units)"
        if invoice.get("status") == "quarantined":
            status, why = "held_by_exception", "its invoice is in quarantine (see the reason)"
        elif invoice.get("status") == "void":
            status = "status_mismatch"
            why = f"the CRM renewal is closed won, but billing voided its invoice ({billing})"
        elif invoice["currency"] != opp["currency"]:
            status, why = "currency_mismatch", f"CRM {crm}, billing {billing}"
        elif invoice["subtotal_minor"] != opp["amount_minor"]:
            status, why = "amount_mismatch", f"CRM {crm}, billing {billing} before tax"
        elif base["erp_status"] == "matched":
            status, why = "matched", f"CRM, billing and the ERP agree on {crm}"
        elif base["erp_status"] == "held_by_exception" or invoice["invoice_id"] in held_ids:
            status, why = "held_by_exception", "the invoice is held by an open exception"
        elif base["erp_status"] == "awaiting_window":
            status = "awaiting_window"
            why = f"billing invoiced {billing}; it waits for its batch posting window"
        elif base["erp_status"] is None:
            status, why = "missing_in_erp", f"billing invoiced {billing}; the ERP has nothing"
        else:
            status = "status_mismatch"
            why = f"billing invoiced {billing}; the ERP side is {base['erp_status']}"
        rows.append({**base, "status": status, "explanation": why})
    return pd.DataFrame(rows, columns=RENEWAL_COLUMNS)


def as_erp_documents(expected: pd.DataFrame) -> pd.DataFrame:
    """Live billing invoices as the ERP documents that stand for them.

    A net-negative invoice is a credit memo in the ERP (NetSuite has no negative invoice), for
    abs(total), under its own external id; every other invoice is itself.

    Args:
        expected: Billing invoices: invoice_id, external_id, total_minor (and the rest of the
            columns of ``reconcile_invoices``).
    """
    out = expected.copy()
    negative = out["total_minor"].astype("Int64").fillna(0) < 0
    out.loc[negative, "external_id"] = out.loc[negative, "invoice_id"].map(net_negative_external_id)
    out.loc[negative, "total_minor"] = -out.loc[negative, "total_minor"]
    return out


def balance_applications_expected(invoices: pd.DataFrame) -> pd.DataFrame:
    """The ERP customer payments that apply credit balances, one per live invoice Stripe paid
    (partly) from the customer's balance: a payment of 0, keyed by the invoice.

    Args:
        invoices: Canonical invoices: invoice_id, partition_date, currency, status, total_minor,
            starting_balance_minor, ending_balance_minor, correlation_id.

    Returns:
        payment_id (the invoice id), external_id, partition_date, currency, total_minor (0) and
        correlation_id, as ``reconcile_payments`` expects them.
    """
    rows = [
        {
            "payment_id": inv["invoice_id"],
            "external_id": balance_application_external_id(str(inv["invoice_id"])),
            "partition_date": inv["partition_date"],
            "currency": inv["currency"],
            "total_minor": 0,
            "correlation_id": inv["correlation_id"],
        }
        for inv in invoices.to_dict("records")
        if inv["status"] in LIVE_INVOICE_STATUSES and balance_applied(inv) > 0
    ]
    return pd.DataFrame(
        rows,
        columns=[
            "payment_id",
            "external_id",
            "partition_date",
            "currency",
            "total_minor",
            "correlation_id",
        ],
    )


def out_of_band_payments_expected(
    invoices: pd.DataFrame, collected: Mapping[str, int], *, posted: bool
) -> pd.DataFrame:
    """The ERP customer payments of money invoices received outside Stripe (paid out of
    band), one per invoice, when finsync posts them (``posted``: a clearing account is
    configured); otherwise finance records them by hand and none is expected.

    Args:
        invoices: Canonical invoices: invoice_id, partition_date, currency, status,
            paid_out_of_band, amount_paid_minor, correlation_id.
        collected: Invoice id -> what Stripe charges collected for it, minor units.
        posted: Whether finsync posts such receipts.

    Returns:
        payment_id (the invoice id), external_id, partition_date, currency, total_minor and
        correlation_id, as ``reconcile_payments`` expects them.
    """
    columns = ["payment_id", "external_id", "partition_date", "currency", "total_minor"]
    rows = [
        {
            "payment_id": inv["invoice_id"],
            "external_id": out_of_band_payment_external_id(str(inv["invoice_id"])),
            "partition_date": inv["partition_date"],
            "currency": inv["currency"],
            "total_minor": outside,
            "correlation_id": inv["correlation_id"],
        }
        for inv in (invoices.to_dict("records") if posted else [])
        if (outside := paid_outside_stripe(inv, int(collected.get(str(inv["invoice_id"]), 0)))) > 0
    ]
    return pd.DataFrame(rows, columns=[*columns, "correlation_id"])


def credit_note_voids_expected(
    compensations: pd.DataFrame, held_ids: set[str]
) -> tuple[pd.DataFrame, dict[str, tuple[str, str]]]:
    """The compensating invoices (``CNVOID_<credit note>``) of credit notes voided after their
    credit memo posted, as ``reconcile_invoices`` expects them: each totals what the voided
    note credited and, once its credit memo is applied to it, leaves nothing to collect.

    Args:
        compensations: One row per compensating invoice on the ledger: external_id,
            credit_note_id, partition_date, currency, total_minor, correlation_id, and
            memo_state (the ledger state of the credit memo re-applied to it).
        held_ids: Ids an open finance exception holds back.

    Returns:
        The expected documents (``invoice_id`` is the credit note's id) and, for those whose
        credit memo is still on its way, why their balance may differ yet.
    """
    expected = pd.DataFrame(
        {
            "external_id": compensations["external_id"],
            "invoice_id": compensations["credit_note_id"],
            "partition_date": compensations["partition_date"],
            "currency": compensations["currency"],
            "total_minor": compensations["total_minor"],
            "correlation_id": compensations["correlation_id"],
            "status": "void",
            "amount_remaining_minor": 0,
            "remaining_minor": 0,
        }
    )
    pending: dict[str, tuple[str, str]] = {}
    for row in compensations.to_dict("records"):
        note_id = str(row["credit_note_id"])
        memo = credit_memo_external_id(note_id)
        if note_id in held_ids or memo in held_ids:
            pending[note_id] = ("held_by_exception", f"an open exception on {note_id} explains it")
        elif row["memo_state"] in ("pending", "in_flight"):
            pending[note_id] = (
                "awaiting_window",
                f"{memo} is queued for posting ({row['memo_state']}) to be applied to it",
            )
    return expected, pending

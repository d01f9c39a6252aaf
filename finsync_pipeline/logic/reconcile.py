"""Reconcile billing against the ERP. Pure: every difference is classified and explained.

Statuses:
    matched            the ERP holds exactly one document, same currency and total.
    missing_in_erp     billing has a postable document the ERP lacks, and nothing explains why.
    held_by_exception  billing has a document the ERP lacks because an open finance exception
                       holds it; it is tracked in the exceptions queue, so it is not drift.
    amount_mismatch    one ERP document, different total.
    currency_mismatch  one ERP document, different currency.
    duplicate_in_erp   more than one ERP document carries the source's external or correlation id.
    extra_in_erp       an ERP document that no billing document accounts for.
"""

import pandas as pd

DRIFT_STATUSES = (
    "missing_in_erp",
    "amount_mismatch",
    "currency_mismatch",
    "duplicate_in_erp",
    "extra_in_erp",
)
ALL_STATUSES = ("matched", "held_by_exception", *DRIFT_STATUSES)
CORRELATION_PATTERN = r"(fs-[0-9a-f]{20})"
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
    "correlation_id",
    "explanation",
]


def _fmt(minor: object, currency: object) -> str:
    return f"{minor} {currency} (minor units)"


def reconcile_invoices(
    expected: pd.DataFrame, erp: pd.DataFrame, held_ids: set[str]
) -> pd.DataFrame:
    """Classify every billing invoice and every ERP invoice of a date range.

    Args:
        expected: Live billing invoices of the range: external_id, invoice_id, partition_date,
            currency, total_minor, correlation_id.
        erp: ERP invoices of the range: source_id, external_id, tran_date, currency,
            total_minor, memo.
        held_ids: Invoice or external ids an open finance exception holds back.
    """
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
            "correlation_id": doc["correlation_id"],
        }
        billing = _fmt(doc["total_minor"], doc["currency"])
        if found.empty:
            if is_held:
                status, why = "held_by_exception", "not posted: an open finance exception holds it"
            else:
                status, why = "missing_in_erp", f"billing has {billing}; the ERP has no document"
        elif len(found) > 1:
            status = "duplicate_in_erp"
            why = f"the ERP holds {len(found)} documents ({base['erp_internal_ids']}) for it"
        else:
            hit = found.iloc[0]
            base["erp_currency"] = hit["currency"]
            base["erp_total_minor"] = None if pd.isna(hit["total_minor"]) else hit["total_minor"]
            erp_side = _fmt(base["erp_total_minor"], hit["currency"])
            if hit["currency"] != doc["currency"]:
                status, why = "currency_mismatch", f"billing {billing}, ERP {erp_side}"
            elif base["erp_total_minor"] != doc["total_minor"]:
                status, why = "amount_mismatch", f"billing {billing}, ERP {erp_side}"
            else:
                status, why = "matched", f"both {billing}"
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
    expected: pd.DataFrame, erp: pd.DataFrame, held_ids: set[str]
) -> pd.DataFrame:
    """Classify every collected gateway payment and every ERP customer payment of a range.

    The same statuses and explanations as invoices: a payment is one document on each side,
    keyed by its external id and found again by the correlation id in the ERP memo.

    Args:
        expected: Collected payments: external_id, payment_id, partition_date, currency,
            total_minor, correlation_id.
        erp: ERP customer payments of the range (the columns of ``reconcile_invoices``).
        held_ids: Payment or external ids an open finance exception holds back.
    """
    as_documents = expected.rename(columns={"payment_id": "invoice_id"})
    recon = reconcile_invoices(as_documents, erp, held_ids)
    return recon.rename(columns={"invoice_id": "payment_id"})

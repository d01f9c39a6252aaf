"""Contract validation explains each failure with the record, the field and the check."""

import pandas as pd

from finsync_pipeline.logic import normalize
from finsync_pipeline.logic.validation import FAILURE_COLUMNS, ValidationOutcome, validate_frame
from finsync_pipeline.schemas.stripe import StripeCustomerRecord, StripeInvoiceRecord
from finsync_tests.logic.test_normalize import INVOICE


def invoices(*records: dict) -> pd.DataFrame:
    heads, _ = normalize.flatten_stripe_invoices(list(records))
    return heads


def failures(outcome: ValidationOutcome) -> set[tuple[str, str, str]]:
    return {(r.source_id, r.field, r.check_name) for r in outcome.failures.itertuples()}


def test_a_valid_frame_has_no_failures() -> None:
    outcome = validate_frame(invoices(INVOICE), StripeInvoiceRecord, system="stripe", obj="invoice")
    assert outcome.rows == 1
    assert outcome.failures.empty
    assert list(outcome.failures.columns) == FAILURE_COLUMNS
    assert outcome.bad_ids == set()
    assert outcome.bad_share == 0.0


def test_each_failure_names_the_record_field_and_check() -> None:
    bad_currency = {**INVOICE, "id": "in_2", "currency": "xxx"}
    null_total = {**INVOICE, "id": "in_3", "total": None}
    outcome = validate_frame(
        invoices(INVOICE, bad_currency, null_total),
        StripeInvoiceRecord,
        system="stripe",
        obj="invoice",
    )
    found = failures(outcome)
    assert ("in_2", "currency", "iso_currency") in found
    assert ("in_3", "total", "not_nullable") in found
    assert outcome.bad_ids == {"in_2", "in_3"}
    assert outcome.bad_share == 2 / 3
    reasons = dict(
        zip(
            outcome.failures["source_id"] + "/" + outcome.failures["check_name"],
            outcome.failures["reason"],
            strict=True,
        )
    )
    assert reasons["in_2/iso_currency"] == (
        "stripe invoice in_2: field currency fails iso_currency (value 'XXX')"
    )
    assert reasons["in_3/not_nullable"].endswith("(value is null)")
    assert "in_1" not in outcome.bad_ids


def test_dataframe_checks_are_reported_once_per_record() -> None:
    # subtotal + tax != total fails a frame-level check, which pandera reports per column.
    broken = {**INVOICE, "id": "in_2", "total": 9999}
    outcome = validate_frame(
        invoices(INVOICE, broken), StripeInvoiceRecord, system="stripe", obj="invoice"
    )
    ties = outcome.failures[outcome.failures["check_name"] == "total_ties_out"]
    assert list(ties["source_id"]) == ["in_2"]
    assert ties.iloc[0]["field"] == "total_ties_out"
    assert ties.iloc[0]["failure_value"] is None
    assert (
        ties.iloc[0]["reason"] == "stripe invoice in_2: field total_ties_out fails total_ties_out"
    )
    assert not outcome.failures.duplicated(["source_id", "field", "check_name"]).any()


def test_a_column_level_failure_blames_every_row() -> None:
    frame = normalize.flatten_stripe_customers(
        [
            {"id": "cus_1", "created": 1, "metadata": {"salesforce_account_id": "001A"}},
            {"id": "cus_2", "created": 2, "metadata": {"salesforce_account_id": "001B"}},
        ]
    ).drop(columns=["salesforce_account_id"])
    outcome = validate_frame(
        frame, StripeCustomerRecord, system="stripe", obj="customer", field_prefix="metadata."
    )
    assert outcome.bad_ids == {"cus_1", "cus_2"}
    assert outcome.bad_share == 1.0


def test_a_missing_column_is_named_in_the_failure() -> None:
    # Quarantine must say which field is missing, or finance cannot tell what to fix.
    frame = normalize.flatten_stripe_customers(
        [{"id": "cus_1", "created": 1, "metadata": {"salesforce_account_id": "001A"}}]
    ).drop(columns=["salesforce_account_id", "legal_entity"])
    outcome = validate_frame(
        frame, StripeCustomerRecord, system="stripe", obj="customer", field_prefix="metadata."
    )
    assert set(outcome.failures["field"]) == {
        "metadata.salesforce_account_id",
        "metadata.legal_entity",
    }
    assert all("metadata." in reason for reason in outcome.failures["reason"])


def test_a_row_without_an_id_is_still_explained() -> None:
    outcome = validate_frame(
        invoices({**INVOICE, "id": None}), StripeInvoiceRecord, system="stripe", obj="invoice"
    )
    assert failures(outcome) == {("(no id)", "source_id", "not_nullable")}
    assert outcome.failures.iloc[0]["reason"] == (
        "stripe invoice (no id): field source_id fails not_nullable (value is null)"
    )


def test_an_id_that_could_not_go_in_a_url_is_quarantined_with_its_reason() -> None:
    hostile = {**INVOICE, "id": "in_a/../customer/1?x=1"}
    outcome = validate_frame(
        invoices(INVOICE, hostile), StripeInvoiceRecord, system="stripe", obj="invoice"
    )
    assert outcome.bad_ids == {"in_a/../customer/1?x=1"}
    (reason,) = outcome.failures["reason"]
    assert reason.startswith("stripe invoice in_a/../customer/1?x=1: field source_id fails")

"""FINSYNC_PO_SOURCE: where the customer's purchase order number is read from."""

import pytest

from finsync_pipeline.errors import ConfigurationError
from finsync_pipeline.po_source import (
    DEFAULT_LINK_KEY,
    DEFAULT_PO_SOURCE,
    LINK_KEY_ENV,
    PO_SOURCE_ENV,
    PoSource,
    po_source,
)
from finsync_pipeline.sources import SOURCES_OFF_ENV


def test_the_default_is_the_stripe_invoice_custom_field_po_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(PO_SOURCE_ENV, raising=False)
    assert po_source() == PoSource("stripe_custom_field", "PO Number")
    assert po_source() == DEFAULT_PO_SOURCE
    assert "custom field 'PO Number' on the Stripe invoice" in po_source().where


CUSTOM = "stripe_custom_field"
METADATA = PoSource("stripe_metadata", "po_number")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            "stripe_custom_field:Purchase Order", PoSource(CUSTOM, "Purchase Order"), id="field"
        ),
        pytest.param(" stripe_metadata:po_number ", METADATA, id="metadata"),
        pytest.param("", DEFAULT_PO_SOURCE, id="empty-is-default"),
        pytest.param(
            "salesforce_opportunity:PO_Number__c",
            PoSource("salesforce_opportunity", "PO_Number__c"),
            id="opportunity",
        ),
        pytest.param(
            " salesforce_quote: Customer_PO__c ",
            PoSource("salesforce_quote", "Customer_PO__c"),
            id="quote",
        ),
    ],
)
def test_a_source_is_read_from_the_setting(
    raw: str, expected: PoSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(LINK_KEY_ENV, raising=False)
    monkeypatch.delenv(SOURCES_OFF_ENV, raising=False)
    assert po_source(raw) == expected


@pytest.mark.parametrize(
    ("raw", "sobject", "where"),
    [
        pytest.param(
            "salesforce_opportunity:PO_Number__c",
            "Opportunity",
            "field PO_Number__c on the Salesforce Opportunity",
            id="opportunity",
        ),
        pytest.param(
            "salesforce_quote:PO_Number__c",
            "SBQQ__Quote__c",
            "field PO_Number__c on the primary CPQ quote (SBQQ__Quote__c)",
            id="quote",
        ),
    ],
)
def test_a_crm_source_names_the_salesforce_object_and_reads_nothing_from_stripe(
    raw: str, sobject: str, where: str
) -> None:
    source = po_source(raw)
    assert source.crm
    assert source.sobject == sobject
    assert where in source.where
    # The PO is on the Salesforce record: whatever the Stripe invoice carries is not it.
    invoice = {"custom_fields": _fields(("PO Number", "PO-7")), "metadata": {"PO_Number__c": "X"}}
    assert source.read(invoice) is None


def test_the_stripe_sources_name_no_salesforce_object() -> None:
    assert not DEFAULT_PO_SOURCE.crm
    assert DEFAULT_PO_SOURCE.sobject is None


def test_the_opportunity_link_key_defaults_to_salesforce_opportunity_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(LINK_KEY_ENV, raising=False)
    assert DEFAULT_LINK_KEY == "salesforce_opportunity_id"
    assert po_source("salesforce_opportunity:PO_Number__c").link_key == DEFAULT_LINK_KEY
    monkeypatch.setenv(LINK_KEY_ENV, "sf_opportunity")
    assert po_source("salesforce_opportunity:PO_Number__c").link_key == "sf_opportunity"


OPP = "0065g00000AbCdEAAZ"
SUB_OPP = "0065g00000ZzZzZAAZ"


def _invoice(own: object = None, subscription: object = None) -> dict[str, object]:
    parent = {"type": "subscription_details", "subscription_details": {"metadata": subscription}}
    return {"metadata": own, "parent": parent}


@pytest.mark.parametrize(
    ("invoice", "linked"),
    [
        pytest.param(
            _invoice(subscription={"salesforce_opportunity_id": SUB_OPP}),
            SUB_OPP,
            id="subscription-metadata",
        ),
        pytest.param(_invoice(own={"salesforce_opportunity_id": OPP}), OPP, id="invoice-metadata"),
        pytest.param(
            _invoice({"salesforce_opportunity_id": OPP}, {"salesforce_opportunity_id": SUB_OPP}),
            OPP,
            id="the-invoice-wins",
        ),
        pytest.param(
            _invoice({"salesforce_opportunity_id": " "}, {"salesforce_opportunity_id": SUB_OPP}),
            SUB_OPP,
            id="blank-is-none",
        ),
        pytest.param(_invoice({}, {}), None, id="none"),
        pytest.param({"metadata": None, "parent": None}, None, id="one-off-invoice"),
        pytest.param(
            {"metadata": "x", "parent": {"subscription_details": "y"}}, None, id="malformed"
        ),
    ],
)
def test_the_opportunity_an_invoice_bills_is_read_from_stripe_metadata(
    invoice: dict[str, object], linked: str | None
) -> None:
    source = PoSource("salesforce_opportunity", "PO_Number__c")
    assert source.opportunity_of(invoice) == linked


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        pytest.param("PO Number", "stripe_custom_field:<name>", id="no-kind"),
        pytest.param("netsuite:otherRefNum", "unknown source 'netsuite'", id="unknown-kind"),
        pytest.param("stripe_metadata:", "names no field", id="no-name"),
        pytest.param("stripe_custom_field:" + "x" * 41, "at most 40", id="too-long"),
        pytest.param("opportunity:PO_Number__c", "unknown source 'opportunity'", id="crm-kind"),
        pytest.param(
            "salesforce_opportunity:PO Number", "not a Salesforce field API name", id="spaces"
        ),
        pytest.param(
            "salesforce_quote:PO_Number__c, Id FROM User --",
            "not a Salesforce field API name",
            id="soql-injection",
        ),
        pytest.param(
            "salesforce_opportunity:Account.PO__c",
            "not a Salesforce field API name",
            id="relationship-path",
        ),
    ],
)
def test_a_wrong_setting_is_one_line_saying_what_to_set(raw: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        po_source(raw)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{PO_SOURCE_ENV}")
    assert says in message
    assert "stripe_custom_field:PO Number" in message


def _fields(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in pairs]


@pytest.mark.parametrize(
    ("source", "invoice", "po"),
    [
        pytest.param(
            DEFAULT_PO_SOURCE, {"custom_fields": _fields(("PO Number", "PO-7"))}, "PO-7", id="field"
        ),
        pytest.param(
            DEFAULT_PO_SOURCE,
            {"custom_fields": _fields(("Cost center", "CC1"), ("po number", " PO-7 "))},
            "PO-7",
            id="name-case-and-blanks",
        ),
        pytest.param(DEFAULT_PO_SOURCE, {"custom_fields": None}, None, id="custom-fields-null"),
        pytest.param(DEFAULT_PO_SOURCE, {}, None, id="custom-fields-absent"),
        pytest.param(
            DEFAULT_PO_SOURCE, {"custom_fields": _fields(("Cost center", "CC1"))}, None, id="other"
        ),
        pytest.param(
            DEFAULT_PO_SOURCE, {"custom_fields": _fields(("PO Number", "  "))}, None, id="blank"
        ),
        pytest.param(DEFAULT_PO_SOURCE, {"custom_fields": "PO-7"}, None, id="malformed"),
        pytest.param(METADATA, {"metadata": {"po_number": "4500012345"}}, "4500012345", id="meta"),
        pytest.param(METADATA, {"metadata": {}}, None, id="metadata-absent"),
        pytest.param(METADATA, {"metadata": None}, None, id="metadata-null"),
    ],
)
def test_the_po_is_read_from_the_invoice_as_stripe_ships_it(
    source: PoSource, invoice: dict[str, object], po: str | None
) -> None:
    assert source.read(invoice) == po


def test_a_quote_source_with_cpq_switched_off_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SOURCES_OFF_ENV, "cpq")
    with pytest.raises(ConfigurationError) as caught:
        po_source("salesforce_quote:PO_Number__c")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(PO_SOURCE_ENV)
    assert f"{SOURCES_OFF_ENV}" in message and "CPQ" in message
    # The Opportunity needs no CPQ.
    assert po_source("salesforce_opportunity:PO_Number__c").crm


@pytest.mark.parametrize(
    ("key", "says"),
    [
        pytest.param("k" * 41, "at most 40", id="too-long"),
        pytest.param("opp[id]", "square brackets", id="brackets"),
    ],
)
def test_a_wrong_link_key_is_one_line_saying_what_to_set(
    key: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LINK_KEY_ENV, key)
    with pytest.raises(ConfigurationError) as caught:
        po_source("salesforce_opportunity:PO_Number__c")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(LINK_KEY_ENV)
    assert says in message

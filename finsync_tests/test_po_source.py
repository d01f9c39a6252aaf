"""FINSYNC_PO_SOURCE: where the customer's purchase order number is read from."""

import pytest

from finsync_pipeline.errors import ConfigurationError
from finsync_pipeline.po_source import DEFAULT_PO_SOURCE, PO_SOURCE_ENV, PoSource, po_source


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
    ],
)
def test_a_source_is_read_from_the_setting(raw: str, expected: PoSource) -> None:
    assert po_source(raw) == expected


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        pytest.param("PO Number", "stripe_custom_field:<name>", id="no-kind"),
        pytest.param("netsuite:otherRefNum", "unknown source 'netsuite'", id="unknown-kind"),
        pytest.param("stripe_metadata:", "names no field", id="no-name"),
        pytest.param("stripe_custom_field:" + "x" * 41, "at most 40", id="too-long"),
        pytest.param("opportunity:PO_Number__c", "does not link an invoice", id="crm-not-linked"),
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

"""SOQL and SuiteQL literal building: every value either renders safely or is refused."""

import datetime
import decimal

import pytest

from finsync_pipeline.resources.netsuite import suiteql_literal
from finsync_pipeline.resources.salesforce import soql_literal, soql_select

UTC = datetime.UTC
CET = datetime.timezone(datetime.timedelta(hours=1))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("Acme", "'Acme'", id="plain"),
        pytest.param("O'Brien", "'O\\'Brien'", id="single-quote"),
        pytest.param('say "hi"', "'say \\\"hi\\\"'", id="double-quote"),
        pytest.param("a\\b", "'a\\\\b'", id="backslash"),
        pytest.param("x\\' OR Name != '", "'x\\\\\\' OR Name != \\''", id="injection"),
        pytest.param("l1\nl2\r\t\b\f", "'l1\\nl2\\r\\t\\b\\f'", id="control-chars"),
        pytest.param("Zürich", "'Zürich'", id="unicode"),
        pytest.param(None, "null", id="none"),
        pytest.param(True, "true", id="true"),
        pytest.param(False, "false", id="false"),
        pytest.param(42, "42", id="int"),
        pytest.param(decimal.Decimal("1234.50"), "1234.50", id="decimal"),
        pytest.param(decimal.Decimal("1E+3"), "1000", id="decimal-exponent"),
        pytest.param(datetime.date(2025, 1, 31), "2025-01-31", id="date"),
        pytest.param(
            datetime.datetime(2025, 1, 1, tzinfo=UTC), "2025-01-01T00:00:00Z", id="datetime-utc"
        ),
        pytest.param(
            datetime.datetime(2025, 1, 1, 1, 0, tzinfo=CET),
            "2025-01-01T00:00:00Z",
            id="datetime-converted-to-utc",
        ),
        pytest.param(
            datetime.datetime(2025, 1, 1, 0, 0, 0, 123456, tzinfo=UTC),
            "2025-01-01T00:00:00.123Z",
            id="datetime-millis",
        ),
    ],
)
def test_soql_literal(value: object, expected: str) -> None:
    assert soql_literal(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        pytest.param(1.5, TypeError, id="float"),
        pytest.param(datetime.datetime(2025, 1, 1), ValueError, id="naive-datetime"),
        pytest.param(decimal.Decimal("NaN"), ValueError, id="nan"),
        pytest.param(["a"], TypeError, id="list"),
    ],
)
def test_soql_literal_refuses(value: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        soql_literal(value)  # type: ignore[arg-type]


def test_soql_select_builds_escaped_query() -> None:
    soql = soql_select(
        "Account",
        ["Id", "Name", "Owner.Name"],
        where=[
            ("Name", "=", "O'Neil"),
            ("Type", "in", ["Customer", "Partner"]),
            ("SystemModstamp", ">", datetime.datetime(2025, 1, 1, tzinfo=UTC)),
        ],
        order_by="SystemModstamp asc, Id",
    )
    assert soql == (
        "SELECT Id, Name, Owner.Name FROM Account WHERE Name = 'O\\'Neil' "
        "AND Type IN ('Customer', 'Partner') AND SystemModstamp > 2025-01-01T00:00:00Z "
        "ORDER BY SystemModstamp asc, Id"
    )


@pytest.mark.parametrize(
    ("kwargs"),
    [
        pytest.param({"obj": "Account; DELETE", "fields": ["Id"]}, id="bad-object"),
        pytest.param(
            {"obj": "Account", "fields": ["Id, (SELECT Id FROM Contacts)"]}, id="bad-field"
        ),
        pytest.param({"obj": "Account", "fields": []}, id="no-fields"),
        pytest.param(
            {"obj": "Account", "fields": ["Id"], "where": [("Name", "= 'x' OR", "y")]},
            id="bad-operator",
        ),
        pytest.param(
            {"obj": "Account", "fields": ["Id"], "where": [("Name", "IN", "abc")]},
            id="in-needs-sequence",
        ),
        pytest.param(
            {"obj": "Account", "fields": ["Id"], "order_by": "Id; DROP"}, id="bad-order-by"
        ),
    ],
)
def test_soql_select_refuses(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        soql_select(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("Acme", "'Acme'", id="plain"),
        pytest.param("O'Brien", "'O''Brien'", id="quote-doubled"),
        pytest.param("x' OR '1'='1", "'x'' OR ''1''=''1'", id="injection"),
        pytest.param("a\\b", "'a\\b'", id="backslash-literal"),
        pytest.param(7, "7", id="int"),
        pytest.param(decimal.Decimal("10.25"), "10.25", id="decimal"),
        pytest.param(datetime.date(2024, 1, 1), "TO_DATE('2024-01-01','YYYY-MM-DD')", id="date"),
    ],
)
def test_suiteql_literal(value: object, expected: str) -> None:
    assert suiteql_literal(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        pytest.param(1.5, TypeError, id="float"),
        pytest.param(True, TypeError, id="bool"),
        pytest.param(datetime.datetime(2024, 1, 1, tzinfo=UTC), TypeError, id="datetime"),
        pytest.param(None, TypeError, id="none"),
        pytest.param("a\x00b", ValueError, id="nul"),
    ],
)
def test_suiteql_literal_refuses(value: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        suiteql_literal(value)  # type: ignore[arg-type]

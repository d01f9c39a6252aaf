"""SOQL parsing and evaluation, without HTTP."""

from decimal import Decimal

import pytest

from finsync_pipeline.sandbox import soql

RECORDS = [
    {
        "Id": "001000000000001AAA",
        "Name": "O'Brien Labs",
        "BillingCity": None,
        "PO_Required__c": True,
        "CreatedDate": "2025-01-02T10:00:00.000+0000",
    },
    {
        "Id": "001000000000002AAA",
        "Name": "Acme 100% Inc",
        "BillingCity": "Paris",
        "PO_Required__c": False,
        "CreatedDate": "2025-03-02T10:00:00.000+0000",
    },
    {
        "Id": "001000000000003AAA",
        "Name": "back\\slash",
        "BillingCity": "berlin",
        "PO_Required__c": False,
        "CreatedDate": "2024-12-31T23:59:59.000+0000",
    },
]


def _names(text: str) -> list[str]:
    return [r["Name"] for r in soql.execute(soql.parse(text), RECORDS)]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        pytest.param("Name = 'O\\'Brien Labs'", ["O'Brien Labs"], id="escaped-quote"),
        pytest.param("Name = 'back\\\\slash'", ["back\\slash"], id="escaped-backslash"),
        pytest.param("Name = 'o\\'brien labs'", ["O'Brien Labs"], id="case-insensitive"),
        pytest.param("Name LIKE '%100\\%%'", ["Acme 100% Inc"], id="like-escaped-percent"),
        pytest.param("BillingCity = null", ["O'Brien Labs"], id="null"),
        pytest.param("BillingCity != 'Paris'", ["O'Brien Labs", "back\\slash"], id="ne-keeps-null"),
        pytest.param(
            "BillingCity IN ('PARIS', 'Berlin')", ["Acme 100% Inc", "back\\slash"], id="in"
        ),
        pytest.param("BillingCity NOT IN ('Paris')", ["O'Brien Labs", "back\\slash"], id="not-in"),
        pytest.param(
            "CreatedDate >= 2025-01-01T00:00:00Z",
            ["O'Brien Labs", "Acme 100% Inc"],
            id="datetime-z",
        ),
        pytest.param("CreatedDate < 2025-01-01T01:00:00+0100", ["back\\slash"], id="offset"),
        pytest.param(
            "PO_Required__c = true OR (Name LIKE 'back%' AND BillingCity = 'berlin')",
            ["O'Brien Labs", "back\\slash"],
            id="parentheses",
        ),
        pytest.param("NOT PO_Required__c = true", ["Acme 100% Inc", "back\\slash"], id="not"),
        pytest.param("Id = '001000000000002'", ["Acme 100% Inc"], id="15-char-id"),
    ],
)
def test_where(where: str, expected: list[str]) -> None:
    assert _names(f"SELECT Id, Name FROM Account WHERE {where}") == expected


def test_order_nulls_and_limit() -> None:
    assert _names("SELECT Name FROM Account ORDER BY BillingCity") == [
        "O'Brien Labs",
        "back\\slash",
        "Acme 100% Inc",
    ]
    assert _names("SELECT Name FROM Account ORDER BY BillingCity DESC LIMIT 2") == [
        "Acme 100% Inc",
        "back\\slash",
    ]
    assert _names("SELECT Name FROM Account ORDER BY CreatedDate ASC LIMIT 1 OFFSET 1") == [
        "O'Brien Labs"
    ]


@pytest.mark.parametrize(
    ("text", "code"),
    [
        pytest.param(
            "SELECT Id FROM Account WHERE A = 1 AND B = 2 OR C = 3",
            "INVALID_FIELD",
            id="unknown-field-first",
        ),
        pytest.param(
            "SELECT Id FROM Account WHERE Name = 'a' AND Name = 'b' OR Name = 'c'",
            "MALFORMED_QUERY",
            id="mixed-and-or",
        ),
        pytest.param(
            "SELECT Id FROM Account WHERE Name = 'bad \\q escape'",
            "MALFORMED_QUERY",
            id="bad-escape",
        ),
        pytest.param(
            'SELECT Id FROM Account WHERE Name = "double"', "MALFORMED_QUERY", id="double-quotes"
        ),
        pytest.param("SELECT Id FROM Account LIMIT x", "MALFORMED_QUERY", id="limit"),
        pytest.param("SELECT Parent.Name FROM Account", "INVALID_FIELD", id="relationship"),
        pytest.param(
            "SELECT Id FROM Account WHERE CreatedDate > 2025-01-01",
            "INVALID_FIELD",
            id="date-for-datetime",
        ),
        pytest.param(
            "SELECT Id FROM Opportunity WHERE Amount > '5'", "INVALID_FIELD", id="string-for-number"
        ),
        pytest.param(
            "SELECT Id FROM Account WHERE CreatedDate > 2025-13-01T00:00:00Z",
            "MALFORMED_QUERY",
            id="bad-datetime",
        ),
    ],
)
def test_rejections(text: str, code: str) -> None:
    with pytest.raises(soql.SoqlError) as caught:
        soql.parse(text)
    assert caught.value.code == code


def test_number_literals_compare_exactly() -> None:
    query = soql.parse("SELECT Id FROM Opportunity WHERE Amount >= 10.10")
    rows = soql.execute(
        query, [{"Id": "a", "Amount": Decimal("10.1")}, {"Id": "b", "Amount": Decimal("10.09")}]
    )
    assert [r["Id"] for r in rows] == ["a"]

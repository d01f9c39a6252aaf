"""Money: minor units, ISO 4217 exponents and the written rounding rules."""

from decimal import Decimal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from finsync_pipeline.money import (
    EXPONENTS,
    MoneyError,
    apply_rate,
    exponent,
    format_amount,
    is_known_currency,
    normalize_currency,
    round_half_up,
    to_decimal,
    to_minor,
)


@pytest.mark.parametrize(
    ("currency", "expected"),
    [
        pytest.param("JPY", 0, id="jpy-no-decimals"),
        pytest.param("USD", 2, id="usd-cents"),
        pytest.param("KWD", 3, id="kwd-fils"),
        pytest.param("usd", 2, id="lower-case-accepted"),
        pytest.param(" eur ", 2, id="padded-accepted"),
    ],
)
def test_exponent_follows_iso_4217(currency: str, expected: int) -> None:
    assert exponent(currency) == expected


@pytest.mark.parametrize(
    ("minor", "currency", "decimal_text"),
    [
        pytest.param(12345, "USD", "123.45", id="usd"),
        pytest.param(-12345, "USD", "-123.45", id="usd-negative"),
        pytest.param(5, "USD", "0.05", id="usd-below-one"),
        pytest.param(0, "USD", "0.00", id="usd-zero-keeps-places"),
        pytest.param(12345, "JPY", "12345", id="jpy"),
        pytest.param(12345, "KWD", "12.345", id="kwd"),
        pytest.param(1, "KWD", "0.001", id="kwd-one-fils"),
    ],
)
def test_to_decimal_and_back_is_exact(minor: int, currency: str, decimal_text: str) -> None:
    amount = to_decimal(minor, currency)
    # The ERP body carries the exact text: compare the representation, not only the value.
    assert str(amount) == decimal_text
    assert to_minor(amount, currency) == minor
    assert to_minor(decimal_text, currency) == minor


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        pytest.param("10", "USD", 1000, id="usd-whole"),
        pytest.param("10.5", "USD", 1050, id="usd-one-place"),
        pytest.param("10.50000", "USD", 1050, id="usd-trailing-zeros-are-exact"),
        pytest.param(7, "JPY", 7, id="jpy-int"),
        pytest.param(Decimal("1.234"), "KWD", 1234, id="kwd-three-places"),
    ],
)
def test_to_minor_accepts_exact_amounts(
    amount: Decimal | str | int, currency: str, minor: int
) -> None:
    assert to_minor(amount, currency) == minor


@pytest.mark.parametrize(
    ("amount", "currency"),
    [
        pytest.param("0.001", "USD", id="usd-three-places"),
        pytest.param("1.5", "JPY", id="jpy-any-place"),
        pytest.param(Decimal("1.2345"), "KWD", id="kwd-four-places"),
    ],
)
def test_to_minor_refuses_more_places_than_the_currency_allows(
    amount: Decimal | str, currency: str
) -> None:
    with pytest.raises(MoneyError, match=f"more decimal places than {currency}"):
        to_minor(amount, currency)


def test_to_minor_refuses_float() -> None:
    with pytest.raises(MoneyError, match="float"):
        to_minor(12.34, "USD")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "amount",
    [
        pytest.param("abc", id="text"),
        pytest.param("NaN", id="nan"),
        pytest.param("Infinity", id="inf"),
    ],
)
def test_to_minor_refuses_non_amounts(amount: str) -> None:
    with pytest.raises(MoneyError):
        to_minor(amount, "USD")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(12.0, id="float"),
        pytest.param(True, id="bool"),
        pytest.param("100", id="text"),
        pytest.param(Decimal(100), id="decimal"),
    ],
)
def test_to_decimal_takes_only_integer_minor_units(value: object) -> None:
    with pytest.raises(MoneyError, match="integer number of minor units"):
        to_decimal(value, "USD")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "code",
    [
        pytest.param("XXX", id="unknown-code"),
        pytest.param("", id="empty"),
        pytest.param(None, id="none"),
        pytest.param(840, id="numeric-code"),
    ],
)
def test_unknown_currency_is_refused_not_defaulted(code: object) -> None:
    assert not is_known_currency(code)
    with pytest.raises(MoneyError):
        normalize_currency(code)
    with pytest.raises(MoneyError):
        to_decimal(100, code)  # type: ignore[arg-type]
    with pytest.raises(MoneyError):
        to_minor("1", code)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("numerator", "denominator", "expected"),
    [
        pytest.param(5, 2, 3, id="plus-half-rounds-up"),
        pytest.param(-5, 2, -3, id="minus-half-rounds-away-from-zero"),
        pytest.param(15, 10, 2, id="one-and-a-half"),
        pytest.param(-15, 10, -2, id="minus-one-and-a-half"),
        pytest.param(25, 10, 3, id="not-bankers-rounding"),
        pytest.param(14, 10, 1, id="below-half-down"),
        pytest.param(-14, 10, -1, id="minus-below-half"),
        pytest.param(7, -2, -4, id="negative-denominator"),
    ],
)
def test_round_half_up_away_from_zero(numerator: int, denominator: int, expected: int) -> None:
    assert round_half_up(numerator, denominator) == expected


def test_round_half_up_refuses_division_by_zero() -> None:
    with pytest.raises(MoneyError, match="division by zero"):
        round_half_up(1, 0)


@pytest.mark.parametrize(
    ("minor", "rate", "expected"),
    [
        pytest.param(150, "0.1", 15, id="exact"),
        pytest.param(5, "0.5", 3, id="plus-half-up"),
        pytest.param(-5, "0.5", -3, id="minus-half-away-from-zero"),
        pytest.param(2500, "0.0725", 181, id="sales-tax-line-181.25"),
        pytest.param(1000, "0.19", 190, id="vat"),
        pytest.param(333, "1.08155", 360, id="fx-359.15-down"),
        pytest.param(-2500, "0.0726", -182, id="credit-line-minus-181.5"),
    ],
)
def test_apply_rate_rounds_per_line_half_up(minor: int, rate: str, expected: int) -> None:
    assert apply_rate(minor, Decimal(rate)) == expected


def test_document_total_is_the_sum_of_rounded_lines() -> None:
    # Three lines of 0.05 tax each round up to 1 cent apiece; rounding the total instead
    # would give 0 (0.15 cents). The rule is per line, so the total is 3.
    lines = [1, 1, 1]
    assert sum(apply_rate(m, Decimal("0.5")) for m in lines) == 3
    assert apply_rate(sum(lines), Decimal("0.5")) == 2


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        pytest.param(123456, "USD", "1,234.56 USD", id="usd-thousands"),
        pytest.param(-5, "USD", "-0.05 USD", id="usd-negative-cents"),
        pytest.param(1234567, "JPY", "1,234,567 JPY", id="jpy-no-point"),
        pytest.param(1234567, "KWD", "1,234.567 KWD", id="kwd-three-places"),
        pytest.param(100, "eur", "1.00 EUR", id="code-upper-cased"),
    ],
)
def test_format_amount(minor: int, currency: str, text: str) -> None:
    assert format_amount(minor, currency) == text


# The decimal module's default context holds 28 significant digits; an amount is still an
# amount past that, so the property covers every int (the examples pin the boundary).
@settings(derandomize=True, database=None)
@example(minor=10**28, currency="USD")
@example(minor=-(10**30) - 1, currency="KWD")
@given(minor=st.integers(), currency=st.sampled_from(sorted(EXPONENTS)))
def test_minor_units_round_trip_for_any_amount(minor: int, currency: str) -> None:
    assert to_minor(to_decimal(minor, currency), currency) == minor


def test_to_minor_refuses_a_place_hidden_past_28_significant_digits() -> None:
    # 1.0000000000000000000000000001 has 29 significant digits. Scaling it in the default
    # 28-digit context rounds the last place away, and the amount would read as exactly 100
    # cents: the silent rounding rule 4 forbids.
    with pytest.raises(MoneyError, match="more decimal places than USD"):
        to_minor("1.0000000000000000000000000001", "USD")


@settings(derandomize=True, database=None)
@given(
    minor=st.integers(min_value=-(10**12), max_value=10**12),
    currency=st.sampled_from(sorted(EXPONENTS)),
)
def test_decimal_text_has_exactly_the_currency_places(minor: int, currency: str) -> None:
    places = -int(to_decimal(minor, currency).as_tuple().exponent)
    assert places == EXPONENTS[currency]

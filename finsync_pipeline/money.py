"""Money: integer minor units, ISO 4217 exponents, and the written rounding rules.

Rules (finance signed these off; change them only with finance):

1. Every amount in finsync is an ``int`` in the currency's minor unit (cents for USD, whole yen
   for JPY, fils for KWD). No float ever holds an amount.
2. The exponent comes from ISO 4217 (``EXPONENTS``). A currency finsync does not know is an
   error, not a default of 2.
3. Conversion to an ERP's decimal amount is exact:
   ``to_decimal(12345, "USD") == Decimal("123.45")``.
4. Conversion from a decimal amount (a CRM opportunity amount, an ERP read-back) must be exact at
   the currency's exponent. A value with more places is rejected, never silently rounded.
5. Where a computation must round (tax on a line, proration, FX), it rounds **per line**, half
   up (away from zero on .5), at the currency's exponent, and the document total is the sum of
   the rounded lines. Totals therefore tie out by construction.
6. Discounts and tax inside tax-inclusive prices are taken exactly as billing states them
   (Stripe's ``discount_amounts``, ``total_discount_amounts`` and inclusive ``taxes``), never
   recomputed or re-rounded: an ERP invoice line is the billing line's amount less its
   inclusive tax, the discounts are one negative line of their sum, and every tax is one line,
   so lines + discount + tax equal the billed total to the minor unit.
"""

from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation, localcontext

# Exact arithmetic for any amount a ledger can hold: the default context keeps 28 significant
# digits and would round (or refuse) beyond that without saying so.
_EXACT = Context(prec=200, Emax=10**6, Emin=-(10**6))
# The largest integer every JSON reader keeps exact (I-JSON, RFC 7493): an amount or count
# beyond it is no real figure (an amount of 10**30 minor units), and finsync refuses it.
MAX_SAFE_INTEGER = 2**53 - 1

# ISO 4217 minor-unit exponents for the currencies finsync handles. Extend with care: the
# exponent decides how every amount of that currency is read and written.
EXPONENTS: dict[str, int] = {
    "USD": 2,
    "EUR": 2,
    "GBP": 2,
    "CAD": 2,
    "AUD": 2,
    "CHF": 2,
    "SEK": 2,
    "NOK": 2,
    "DKK": 2,
    "SGD": 2,
    "INR": 2,
    "BRL": 2,
    "MXN": 2,
    "NZD": 2,
    "JPY": 0,
    "KRW": 0,
    "CLP": 0,
    "KWD": 3,
    "BHD": 3,
    "JOD": 3,
}


class MoneyError(ValueError):
    """An amount or currency that cannot be represented exactly."""


def normalize_currency(code: object) -> str:
    """Return the upper-case ISO 4217 code, or raise MoneyError for an unknown currency."""
    if not isinstance(code, str):
        raise MoneyError(f"currency must be a string, got {type(code).__name__}")
    upper = code.strip().upper()
    if upper not in EXPONENTS:
        raise MoneyError(f"unknown currency {code!r}")
    return upper


def exponent(currency: str) -> int:
    """The ISO 4217 exponent of ``currency``."""
    return EXPONENTS[normalize_currency(currency)]


def is_known_currency(code: object) -> bool:
    """True when ``code`` is an ISO 4217 code finsync handles (case-insensitive)."""
    return isinstance(code, str) and code.strip().upper() in EXPONENTS


def to_decimal(minor: int, currency: str) -> Decimal:
    """Minor units to an exact decimal in major units: (12345, "USD") -> Decimal("123.45")."""
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise MoneyError(f"amount must be an integer number of minor units, got {minor!r}")
    exp = exponent(currency)
    with localcontext(_EXACT):
        return Decimal(minor).scaleb(-exp).quantize(Decimal(1).scaleb(-exp))


def to_minor(amount: Decimal | str | int, currency: str) -> int:
    """An exact decimal major-unit amount to minor units; extra decimal places are an error."""
    if isinstance(amount, float):
        raise MoneyError("float amounts are refused: pass a Decimal or a string")
    try:
        value = Decimal(amount)
    except (InvalidOperation, TypeError) as e:
        raise MoneyError(f"not a decimal amount: {amount!r}") from e
    if not value.is_finite():
        raise MoneyError(f"not a finite amount: {amount!r}")
    with localcontext(_EXACT):
        scaled = value.scaleb(exponent(currency))
        exact = scaled == scaled.to_integral_value()
    if not exact:
        raise MoneyError(
            f"{amount} has more decimal places than {normalize_currency(currency)} allows"
        )
    return int(scaled)


def round_half_up(numerator: int, denominator: int) -> int:
    """Integer division rounding half away from zero: the per-line rounding rule."""
    if denominator == 0:
        raise MoneyError("division by zero")
    with localcontext(_EXACT):
        value = Decimal(numerator) / Decimal(denominator)
        return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def apply_rate(minor: int, rate: Decimal) -> int:
    """``minor * rate`` rounded half up to a whole minor unit (tax on a line, an FX conversion)."""
    with localcontext(_EXACT):
        return int((Decimal(minor) * rate).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def format_amount(minor: int, currency: str) -> str:
    """Human form for summaries: (123456, "USD") -> "1,234.56 USD"."""
    exp = exponent(currency)
    return f"{to_decimal(minor, currency):,.{exp}f} {normalize_currency(currency)}"

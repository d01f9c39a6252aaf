"""Tax check of invoices against a tax engine (AvaTax). Pure: no Dagster, no I/O.

An invoice is rebuilt as an AvaTax ``SalesOrder`` (an estimate the engine never records) at the
customer's billing address, and the engine's tax is compared with the tax Stripe billed, both in
integer minor units. The customer's tax profile goes with it, as AvaTax expects it: an exempt
customer's exemption certificate number (``exemptionNo``) and entity use code
(``entityUseCode``), and a buyer's VAT id (``businessIdentificationNo``) with both ends of the
sale (``shipFrom`` the seller's country, ``shipTo`` the buyer), from which AvaTax decides a
reverse charge. Without them the engine taxes an exempt or reverse-charged sale in full and
every such invoice would be a false mismatch.

Both sides round per line, half up, at the currency's exponent, so a correctly taxed invoice
agrees exactly; the tolerance (per line) absorbs an engine that rounds differently, never a
wrong rate.
"""

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pandas as pd

from finsync_pipeline.logic.derive import EXCEPTION_COLUMNS, EXCEPTION_KINDS
from finsync_pipeline.money import format_amount, to_decimal, to_minor

# AvaTax tax code of every subscription product: software as a service. The mapping is the
# place to give a product its own code (professional services, say) when tax says so.
SAAS_TAX_CODE = "SW054000"
TAX_CODES: dict[str, str] = {}
# Countries whose sales tax follows the state or province: no region, no jurisdiction.
REGION_REQUIRED = frozenset({"US", "CA"})

CHECK_COLUMNS = [
    "partition_date",
    "invoice_id",
    "currency",
    "billed_tax_minor",
    "engine_tax_minor",
    "difference_minor",
    "within_tolerance",
    "jurisdiction",
    "correlation_id",
]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    text = str(value).strip()
    return text or None


def address_from_account(account: Mapping[str, Any] | None) -> tuple[dict[str, str] | None, str]:
    """The AvaTax address of a Salesforce Account's billing address, or None and the reason.

    Returns:
        ``({line1, city, region, country, postalCode}, "")`` when the address can be taxed, or
        ``(None, reason)`` naming the missing field.
    """
    if account is None:
        return None, "no Salesforce Account record"
    country = _text(account.get("BillingCountry"))
    if country is None:
        return None, "Account field BillingCountry is empty"
    country = country.upper()
    region = _text(account.get("BillingState"))
    if country in REGION_REQUIRED and region is None:
        return None, f"Account field BillingState is empty (required in {country})"
    address = {
        "line1": _text(account.get("BillingStreet")),
        "city": _text(account.get("BillingCity")),
        "region": region,
        "country": country,
        "postalCode": _text(account.get("BillingPostalCode")),
    }
    return {k: v for k, v in address.items() if v is not None}, ""


def tax_profile_fields(invoice: Mapping[str, Any]) -> dict[str, str]:
    """The CreateTransactionModel fields of the customer's tax profile, from an invoice row.

    ``exemptionNo`` and ``entityUseCode`` go only with an exempt customer (``tax_exempt`` is
    ``exempt``): an exemption left on file for a customer Stripe taxes is not applied, so a
    stale certificate cannot hide tax Stripe billed. ``businessIdentificationNo`` goes whenever
    the buyer's VAT id is on file: whether it makes the sale a reverse charge is AvaTax's call.
    """
    fields: dict[str, str] = {}
    if _text(invoice.get("tax_exempt")) == "exempt":
        number = _text(invoice.get("tax_exemption_number"))
        code = _text(invoice.get("tax_entity_use_code"))
        if number is not None:
            fields["exemptionNo"] = number
        if code is not None:
            fields["entityUseCode"] = code.upper()
    vat_id = _text(invoice.get("tax_id"))
    if vat_id is not None:
        fields["businessIdentificationNo"] = vat_id
    return fields


def build_sales_order(
    invoice: Mapping[str, Any],
    lines: pd.DataFrame,
    address: Mapping[str, str],
    company_code: str,
    *,
    seller_country: str | None = None,
) -> dict[str, Any]:
    """The AvaTax CreateTransactionModel (a SalesOrder) of one canonical invoice.

    Args:
        invoice: A canonical ``invoices`` row (invoice_id, currency, invoice_date,
            customer_key, correlation_id) with its customer's tax profile when known
            (tax_exempt, tax_id, tax_exemption_number, tax_entity_use_code).
        lines: The invoice's canonical ``invoice_lines`` rows (amount, discount and inclusive
            tax of each).
        address: The customer's address (``address_from_account``).
        company_code: The AvaTax company.
        seller_country: ISO country of the legal entity that sells. With a buyer's VAT id the
            sale goes ``shipFrom`` there ``shipTo`` the customer, since a reverse charge
            depends on both ends; otherwise the customer's address is the single location.

    Returns:
        The model, amounts as exact ``Decimal`` in major units; ``code`` is the Stripe invoice
        id and ``customerCode`` the customer key, so the estimate reads back to its source.

    Raises:
        ValueError: The invoice has no lines (AvaTax needs at least one).
    """
    currency = str(invoice["currency"])
    if lines.empty:
        raise ValueError(f"stripe invoice {invoice['invoice_id']} has no lines to tax")
    model_lines = []
    for line in lines.sort_values("line_number").itertuples(index=False):
        product = _text(line.product_id)
        # The engine taxes what Stripe taxed: the line after its discounts and without the tax
        # already inside a tax-inclusive price.
        taxable = int(line.amount_minor) - int(line.discount_minor) - int(line.inclusive_tax_minor)
        model_lines.append(
            {
                "number": str(int(line.line_number)),
                "quantity": Decimal(int(line.quantity)),
                "amount": to_decimal(taxable, currency),
                "taxCode": TAX_CODES.get(product or "", SAAS_TAX_CODE),
                "itemCode": product or "",
                "description": _text(line.description) or "",
            }
        )
    model: dict[str, Any] = {
        "type": "SalesOrder",
        "code": str(invoice["invoice_id"]),
        "companyCode": company_code,
        "date": str(invoice["invoice_date"])[:10],
        "customerCode": str(invoice["customer_key"]),
        "currencyCode": currency,
        "commit": False,
        "addresses": {"singleLocation": dict(address)},
        "lines": model_lines,
    }
    profile = tax_profile_fields(invoice)
    model.update(profile)
    if "businessIdentificationNo" in profile and seller_country:
        model["addresses"] = {
            "shipFrom": {"country": seller_country.upper()},
            "shipTo": dict(address),
        }
    correlation = _text(invoice.get("correlation_id"))
    if correlation is not None:
        model["referenceCode"] = correlation
    return model


def jurisdiction_of(result: Mapping[str, Any]) -> str:
    """``US-CA 8.625%`` / ``DE 19%``: where AvaTax taxed, with the rates it applied."""
    country = str(result.get("country") or "")
    region = result.get("region")
    place = f"{country}-{region}" if region and region != country else country
    rates = sorted({Decimal(s["rate"]) for s in result.get("summary") or [] if "rate" in s})
    if not rates:
        return f"{place} (no tax)"
    shown = ", ".join(f"{(r * 100).normalize():f}%" for r in rates)
    return f"{place} {shown}"


def compare_tax(
    invoices: pd.DataFrame,
    avatax_results: Mapping[str, Mapping[str, Any]],
    tolerance_minor: int,
    *,
    address_problems: Mapping[str, str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Billed tax against AvaTax's tax, per invoice, and the exceptions for finance's tax queue.

    Args:
        invoices: Canonical invoices (invoice_id, partition_date, currency, tax_minor,
            line_count, correlation_id; legal_entity when known).
        avatax_results: invoice_id -> AvaTax TransactionModel (numbers as ``Decimal``).
        tolerance_minor: Allowed difference per invoice line, in minor units.
        address_problems: invoice_id -> why the customer's address cannot be taxed; those
            invoices become ``tax_address_missing`` exceptions and have no check row.

    Returns:
        ``(checks, exceptions)``: one check row per invoice AvaTax answered (CHECK_COLUMNS),
        and EXCEPTION_COLUMNS rows of kinds ``tax_mismatch`` and ``tax_address_missing``.

    Raises:
        ValueError: An invoice has neither a result nor an address problem.
        MoneyError: AvaTax answered a tax with more places than the currency has.
    """
    if tolerance_minor < 0:
        raise ValueError("tolerance_minor must be >= 0")
    problems_of = address_problems or {}
    checks: list[dict[str, Any]] = []
    found: list[dict[str, Any]] = []
    for inv in invoices.sort_values("invoice_id").to_dict("records"):
        invoice_id = str(inv["invoice_id"])
        currency = str(inv["currency"])
        corr = _text(inv.get("correlation_id"))
        entity = _text(inv.get("legal_entity"))
        base = {
            "source_system": "stripe",
            "source_id": invoice_id,
            "partition_date": inv.get("partition_date"),
            "correlation_id": corr,
            "legal_entity": entity,
        }
        if invoice_id in problems_of:
            severity, owner = EXCEPTION_KINDS["tax_address_missing"]
            found.append(
                {
                    **base,
                    "kind": "tax_address_missing",
                    "severity": severity,
                    "owner_queue": owner,
                    "detail": f"Stripe invoice {invoice_id} cannot be tax-checked: the "
                    f"customer {inv.get('customer_key')} has no usable billing address "
                    f"({problems_of[invoice_id]}); correlation id {corr}",
                }
            )
            continue
        result = avatax_results.get(invoice_id)
        if result is None:
            raise ValueError(f"stripe invoice {invoice_id} has no AvaTax result to compare")
        billed = int(inv["tax_minor"])
        engine = to_minor(Decimal(result["totalTax"]), currency)
        difference = billed - engine
        allowed = tolerance_minor * max(1, int(inv.get("line_count") or 1))
        within = abs(difference) <= allowed
        jurisdiction = jurisdiction_of(result)
        checks.append(
            {
                "partition_date": inv.get("partition_date"),
                "invoice_id": invoice_id,
                "currency": currency,
                "billed_tax_minor": billed,
                "engine_tax_minor": engine,
                "difference_minor": difference,
                "within_tolerance": int(within),
                "jurisdiction": jurisdiction,
                "correlation_id": corr,
            }
        )
        if within:
            continue
        severity, owner = EXCEPTION_KINDS["tax_mismatch"]
        found.append(
            {
                **base,
                "kind": "tax_mismatch",
                "severity": severity,
                "owner_queue": owner,
                "detail": f"Stripe invoice {invoice_id} field total_taxes bills "
                f"{format_amount(billed, currency)} but AvaTax computes "
                f"{format_amount(engine, currency)} for {jurisdiction} (difference "
                f"{format_amount(difference, currency)}, tolerance "
                f"{format_amount(allowed, currency)}); correlation id {corr}",
            }
        )
    return (
        pd.DataFrame(checks, columns=CHECK_COLUMNS),
        pd.DataFrame(found, columns=EXCEPTION_COLUMNS),
    )

"""The contract registry and its export as JSON Schema and markdown, for other teams.

Each contract has a name and a version. A change that breaks consumers (a field removed or
renamed, a type or meaning changed, a constraint tightened) is a new version; the golden
copies in ``finsync_tests/golden/contracts`` make an unversioned change fail the tests.
"""

from dataclasses import dataclass
from typing import Any

import pandera.pandas as pa

from finsync_pipeline.schemas import canonical, master, netsuite, salesforce, stripe, usage


@dataclass(frozen=True)
class ContractInfo:
    """A published contract: its stable name, version and model."""

    name: str
    version: int
    model: type[pa.DataFrameModel]
    kind: str  # "canonical", "source" or "mapping"


CONTRACTS: list[ContractInfo] = [
    ContractInfo("customer", 1, canonical.Customer, "canonical"),
    ContractInfo("invoice", 4, canonical.Invoice, "canonical"),
    ContractInfo("invoice_line", 2, canonical.InvoiceLine, "canonical"),
    ContractInfo("subscription", 1, canonical.Subscription, "canonical"),
    ContractInfo("payment", 1, canonical.Payment, "canonical"),
    ContractInfo("credit_note", 1, canonical.CreditNote, "canonical"),
    ContractInfo("refund", 1, canonical.Refund, "canonical"),
    ContractInfo("usage_daily", 1, usage.UsageDaily, "canonical"),
    ContractInfo("legal_entity", 1, master.LegalEntity, "mapping"),
    ContractInfo("product_mapping", 1, master.ProductMapping, "mapping"),
    ContractInfo("stripe_customer", 1, stripe.StripeCustomerRecord, "source"),
    ContractInfo("stripe_subscription", 1, stripe.StripeSubscriptionRecord, "source"),
    ContractInfo("stripe_invoice", 3, stripe.StripeInvoiceRecord, "source"),
    ContractInfo("stripe_invoice_line", 2, stripe.StripeInvoiceLineRecord, "source"),
    ContractInfo("stripe_payment", 1, stripe.StripePaymentRecord, "source"),
    ContractInfo("salesforce_account", 1, salesforce.SalesforceAccountRecord, "source"),
    ContractInfo("salesforce_opportunity", 1, salesforce.SalesforceOpportunityRecord, "source"),
    ContractInfo("salesforce_contract", 1, salesforce.SalesforceContractRecord, "source"),
    ContractInfo("cpq_quote", 1, salesforce.CpqQuoteRecord, "source"),
    ContractInfo("cpq_quote_line", 1, salesforce.CpqQuoteLineRecord, "source"),
    ContractInfo("cpq_subscription", 1, salesforce.CpqSubscriptionRecord, "source"),
    ContractInfo("erp_invoice", 1, netsuite.ErpInvoiceRecord, "source"),
    ContractInfo("stripe_credit_note", 1, stripe.StripeCreditNoteRecord, "source"),
    ContractInfo("stripe_refund", 1, stripe.StripeRefundRecord, "source"),
    ContractInfo("stripe_charge", 1, stripe.StripeChargeRecord, "source"),
    ContractInfo("usage_event", 1, usage.UsageEventRecord, "source"),
]

_JSON_TYPES = {
    "str": "string",
    "string": "string",
    "object": "string",
    "int64": "integer",
    "Int64": "integer",
    "int32": "integer",
    "bool": "boolean",
    "boolean": "boolean",
    "float64": "number",
}


def _column_schema(column: Any) -> dict[str, Any]:
    json_type = _JSON_TYPES.get(str(column.dtype), "string")
    out: dict[str, Any] = {"type": [json_type, "null"] if column.nullable else json_type}
    if column.description:
        out["description"] = column.description
    for check in column.checks:
        stats = check.statistics or {}
        name = check.name
        if name == "isin":
            out["enum"] = sorted(stats["allowed_values"], key=str)
        elif name == "iso_currency":
            from finsync_pipeline.schemas.checks import CURRENCY_CODES

            out["enum"] = sorted(CURRENCY_CODES)
        elif name == "iso_date":
            out["format"] = "date"
        elif name == "greater_than_or_equal_to":
            out["minimum"] = stats["min_value"]
        elif name == "greater_than":
            out["exclusiveMinimum"] = stats["min_value"]
        elif name == "str_startswith":
            out["pattern"] = "^" + str(stats["string"])
        elif name == "str_matches":
            out["pattern"] = str(stats["pattern"])
        elif name == "str_length":
            if stats.get("min_value") is not None:
                out["minLength"] = stats["min_value"]
            if stats.get("max_value") is not None:
                out["maxLength"] = stats["max_value"]
    if column.unique:
        out["x-unique"] = True
    return out


def json_schema(info: ContractInfo) -> dict[str, Any]:
    """One row of the contract as a JSON Schema (draft 2020-12) object."""
    schema = info.model.to_schema()
    frame_checks = [c.name for c in schema.checks]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://finsync.dev/contracts/{info.name}/v{info.version}.json",
        "title": info.name,
        "description": " ".join((info.model.__doc__ or "").split()),
        "x-finsync-version": info.version,
        "x-finsync-kind": info.kind,
        "x-finsync-row-checks": frame_checks,
        "type": "object",
        "properties": {name: _column_schema(col) for name, col in schema.columns.items()},
        "required": sorted(name for name, col in schema.columns.items() if not col.nullable),
        "additionalProperties": True,
    }


def markdown(info: ContractInfo) -> str:
    """The contract as a markdown page: purpose, version and a field table."""
    schema = json_schema(info)
    lines = [
        f"# {info.name} (version {info.version}, {info.kind})",
        "",
        schema["description"],
        "",
        "| field | type | required | constraints | meaning |",
        "|---|---|---|---|---|",
    ]
    for name, prop in schema["properties"].items():
        types = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
        constraints = ", ".join(
            f"{k}={v}" for k, v in prop.items() if k not in ("type", "description")
        )
        lines.append(
            f"| `{name}` | {' or '.join(types)} | {'yes' if name in schema['required'] else 'no'}"
            f" | {constraints.replace('|', '/')} | {prop.get('description', '')} |"
        )
    if schema["x-finsync-row-checks"]:
        lines += ["", "Row checks: " + ", ".join(schema["x-finsync-row-checks"]) + "."]
    lines += [
        "",
        "Money fields (`*_minor`, `amount`, `subtotal`, `tax`, `total`) are integers in the "
        "currency's minor unit with its ISO 4217 exponent.",
    ]
    return "\n".join(lines) + "\n"

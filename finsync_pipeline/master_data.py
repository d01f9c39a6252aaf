"""Mapping and master data that finance analysts own: legal entities, currencies, products.

The data lives in CSV files (``finsync_pipeline/mappings/`` by default, or the folder named by
``FINSYNC_MAPPINGS_DIR``) so a change is a reviewed edit of a file, not a code change.
"""

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pandera.pandas as pa

from finsync_pipeline.errors import ConfigurationError
from finsync_pipeline.logic.validation import validate_frame
from finsync_pipeline.money import is_known_currency, normalize_currency
from finsync_pipeline.schemas.master import LegalEntity as LegalEntityContract
from finsync_pipeline.schemas.master import ProductMapping

DEFAULT_DIR = Path(__file__).resolve().parent / "mappings"


@dataclass(frozen=True)
class LegalEntity:
    """A legal entity of the company and where it lives in the ERP."""

    code: str
    name: str
    country: str
    currency: str
    netsuite_subsidiary_id: str
    netsuite_refund_account_id: str | None = None


@dataclass(frozen=True)
class MasterData:
    """Everything derive needs to turn billing documents into ERP documents."""

    legal_entities: dict[str, LegalEntity]
    netsuite_currency_ids: dict[str, str]
    netsuite_items: dict[str, str]
    netsuite_tax_item_id: str
    netsuite_service_credit_item_id: str | None = None
    # The item an invoice's discounts post on (a NetSuite Discount item), as one negative line.
    netsuite_discount_item_id: str | None = None
    # The item an invoice marked uncollectible is written off on (a credit memo applied to it);
    # without one, such an invoice is an exception finance writes off by hand.
    netsuite_bad_debt_item_id: str | None = None
    # The account an invoice paid out of band in Stripe is received into (a customer payment
    # applied to it); without one, such an invoice is an exception finance records by hand.
    netsuite_oob_clearing_account_id: str | None = None


def _rows(folder: Path, name: str, required: set[str]) -> list[dict[str, str]]:
    path = folder / name
    if not path.is_file():
        raise ConfigurationError(f"mapping file {path} is missing; set FINSYNC_MAPPINGS_DIR")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = required - set(reader.fieldnames or [])
        if missing:
            raise ConfigurationError(f"mapping file {path} lacks columns {sorted(missing)}")
        rows = []
        for row in reader:
            # DictReader keeps the fields past the header's under None: a stray comma in a
            # description would otherwise shift nothing visibly and fail far from here.
            if None in row:
                fields = len(reader.fieldnames or []) + len(row[None] or [])
                raise ConfigurationError(
                    f"{name} line {reader.line_num} has {fields} fields where its header has "
                    f"{len(reader.fieldnames or [])}; quote a value that holds a comma"
                )
            rows.append({k: (v or "").strip() for k, v in row.items()})
        return rows


def _check(rows: list[dict[str, str]], model: type[pa.DataFrameModel], name: str) -> None:
    frame = pd.DataFrame(rows).astype("str")
    # Failures name the file's line (the header is line 1).
    frame["source_id"] = [f"line {n}" for n in range(2, len(frame) + 2)]
    outcome = validate_frame(frame, model, system=name, obj="")
    if len(outcome.failures):
        reason = str(outcome.failures.iloc[0]["reason"]).replace(f"{name}  ", f"{name} ")
        more = len(outcome.failures) - 1
        raise ConfigurationError(reason + (f" (and {more} more problem(s))" if more else ""))


def load_master_data(folder: Path | None = None) -> MasterData:
    """Read the mapping files and check them against their contracts.

    A malformed file stops here with the file, the row and the field named: a wrong mapping
    would post every affected document to the wrong place.
    """
    folder = folder or Path(os.environ.get("FINSYNC_MAPPINGS_DIR") or DEFAULT_DIR)
    entity_rows = _rows(
        folder,
        "legal_entities.csv",
        {"legal_entity", "name", "country", "currency", "netsuite_subsidiary_id"},
    )
    product_rows = _rows(folder, "products.csv", {"stripe_product_id", "netsuite_item_id"})
    currency_rows = _rows(folder, "currencies.csv", {"currency", "netsuite_currency_id"})
    settings = {
        r["setting"]: r["value"] for r in _rows(folder, "erp_settings.csv", {"setting", "value"})
    }
    _check(entity_rows, LegalEntityContract, "legal_entities.csv")
    _check(product_rows, ProductMapping, "products.csv")
    for i, row in enumerate(currency_rows, start=2):
        if not is_known_currency(row["currency"]):
            raise ConfigurationError(
                f"currencies.csv line {i}: unknown currency {row['currency']!r}"
            )
        if not row["netsuite_currency_id"].isdigit():
            raise ConfigurationError(
                f"currencies.csv line {i}: netsuite_currency_id {row['netsuite_currency_id']!r} "
                "is not a NetSuite internal id; set it to the currency's id, a whole number"
            )
    if "netsuite_tax_item_id" not in settings:
        raise ConfigurationError("erp_settings.csv lacks the setting netsuite_tax_item_id")
    return MasterData(
        legal_entities={
            r["legal_entity"]: LegalEntity(
                code=r["legal_entity"],
                name=r["name"],
                country=r["country"],
                currency=normalize_currency(r["currency"]),
                netsuite_subsidiary_id=r["netsuite_subsidiary_id"],
                netsuite_refund_account_id=r.get("netsuite_refund_account_id") or None,
            )
            for r in entity_rows
        },
        netsuite_currency_ids={
            normalize_currency(r["currency"]): r["netsuite_currency_id"] for r in currency_rows
        },
        netsuite_items={r["stripe_product_id"]: r["netsuite_item_id"] for r in product_rows},
        netsuite_tax_item_id=settings["netsuite_tax_item_id"],
        netsuite_service_credit_item_id=settings.get("netsuite_service_credit_item_id") or None,
        netsuite_discount_item_id=settings.get("netsuite_discount_item_id") or None,
        netsuite_bad_debt_item_id=settings.get("netsuite_bad_debt_item_id") or None,
        netsuite_oob_clearing_account_id=settings.get("netsuite_oob_clearing_account_id") or None,
    )

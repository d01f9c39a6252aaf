"""Mapping and master data that finance analysts own: legal entities, currencies, products.

The data lives in CSV files (``finsync_pipeline/mappings/`` by default, or the folder named by
``FINSYNC_MAPPINGS_DIR``) so a change is a reviewed edit of a file, not a code change.
"""

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from finsync_pipeline.errors import ConfigurationError
from finsync_pipeline.money import is_known_currency, normalize_currency

DEFAULT_DIR = Path(__file__).resolve().parent / "mappings"


@dataclass(frozen=True)
class LegalEntity:
    """A legal entity of the company and where it lives in the ERP."""

    code: str
    name: str
    country: str
    currency: str
    netsuite_subsidiary_id: str


@dataclass(frozen=True)
class MasterData:
    """Everything derive needs to turn billing documents into ERP documents."""

    legal_entities: dict[str, LegalEntity]
    netsuite_currency_ids: dict[str, str]
    netsuite_items: dict[str, str]
    netsuite_tax_item_id: str


def _rows(folder: Path, name: str, required: set[str]) -> list[dict[str, str]]:
    path = folder / name
    if not path.is_file():
        raise ConfigurationError(f"mapping file {path} is missing; set FINSYNC_MAPPINGS_DIR")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = required - set(reader.fieldnames or [])
        if missing:
            raise ConfigurationError(f"mapping file {path} lacks columns {sorted(missing)}")
        return [{k: (v or "").strip() for k, v in row.items()} for row in reader]


def load_master_data(folder: Path | None = None) -> MasterData:
    """Read and check the mapping files. A malformed file names the file and the row."""
    folder = folder or Path(os.environ.get("FINSYNC_MAPPINGS_DIR") or DEFAULT_DIR)
    entities: dict[str, LegalEntity] = {}
    for i, row in enumerate(
        _rows(
            folder,
            "legal_entities.csv",
            {"legal_entity", "name", "country", "currency", "netsuite_subsidiary_id"},
        ),
        start=2,
    ):
        if not is_known_currency(row["currency"]):
            raise ConfigurationError(
                f"legal_entities.csv line {i}: unknown currency {row['currency']!r}"
            )
        entities[row["legal_entity"]] = LegalEntity(
            code=row["legal_entity"],
            name=row["name"],
            country=row["country"],
            currency=normalize_currency(row["currency"]),
            netsuite_subsidiary_id=row["netsuite_subsidiary_id"],
        )
    currencies: dict[str, str] = {}
    for i, row in enumerate(
        _rows(folder, "currencies.csv", {"currency", "netsuite_currency_id"}), start=2
    ):
        if not is_known_currency(row["currency"]):
            raise ConfigurationError(
                f"currencies.csv line {i}: unknown currency {row['currency']!r}"
            )
        currencies[normalize_currency(row["currency"])] = row["netsuite_currency_id"]
    items = {
        r["stripe_product_id"]: r["netsuite_item_id"]
        for r in _rows(folder, "products.csv", {"stripe_product_id", "netsuite_item_id"})
    }
    settings = {
        r["setting"]: r["value"] for r in _rows(folder, "erp_settings.csv", {"setting", "value"})
    }
    if "netsuite_tax_item_id" not in settings:
        raise ConfigurationError("erp_settings.csv lacks the setting netsuite_tax_item_id")
    return MasterData(
        legal_entities=entities,
        netsuite_currency_ids=currencies,
        netsuite_items=items,
        netsuite_tax_item_id=settings["netsuite_tax_item_id"],
    )

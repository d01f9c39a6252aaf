"""Published contracts: versioned, exported as JSON Schema that accepts real rows."""

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from finsync_pipeline.master_data import DEFAULT_DIR
from finsync_pipeline.schemas.export import CONTRACTS, ContractInfo, json_schema, markdown
from finsync_tests.golden import assert_golden

PUBLISHED = [c for c in CONTRACTS if c.kind in ("canonical", "mapping")]


@pytest.mark.parametrize("info", PUBLISHED, ids=[c.name for c in PUBLISHED])
def test_a_published_contract_changes_only_with_a_new_version(info: ContractInfo) -> None:
    # A changed schema fails here: bump the contract's version when the change breaks
    # consumers, then regenerate with FINSYNC_UPDATE_GOLDEN=1.
    assert_golden(f"contracts/{info.name}.v{info.version}", json_schema(info))


def test_contract_names_are_unique_and_versioned() -> None:
    names = [c.name for c in CONTRACTS]
    assert len(names) == len(set(names))
    assert all(c.version >= 1 for c in CONTRACTS)


def _rows(file: str) -> list[dict[str, Any]]:
    with (DEFAULT_DIR / file).open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize(
    ("contract", "file"),
    [("legal_entity", "legal_entities.csv"), ("product_mapping", "products.csv")],
)
def test_the_exported_schema_accepts_the_shipped_mappings(contract: str, file: str) -> None:
    schema = json_schema(next(c for c in CONTRACTS if c.name == contract))
    for row in _rows(file):
        jsonschema.validate(row, schema)


def test_the_exported_schema_refuses_what_the_contract_refuses() -> None:
    schema = json_schema(next(c for c in CONTRACTS if c.name == "invoice"))
    row = {
        "invoice_id": "in_1",
        "partition_date": "2026-10-01",
        "number": None,
        "stripe_customer_id": "cus_1",
        "customer_key": None,
        "subscription_id": None,
        "status": "paid",
        "currency": "USD",
        "subtotal_minor": 1000,
        "discount_minor": 100,
        "tax_minor": 72,
        "inclusive_tax_minor": 0,
        "total_excluding_tax_minor": 900,
        "total_minor": 972,
        "line_count": 1,
        "amount_paid_minor": 972,
        "amount_remaining_minor": 0,
        "paid_out_of_band": 0,
        "invoice_date": "2026-10-01",
        "source_system": "stripe",
        "source_id": "in_1",
        "source_updated_at": None,
        "extraction_run_id": "run",
        "correlation_id": "fs-0123456789abcdef0123",
    }
    jsonschema.validate(row, schema)
    for field, bad in [
        ("currency", "US$"),
        ("status", "settled"),
        ("line_count", -1),
        ("correlation_id", "corr-1"),
        ("subtotal_minor", "10.00"),
        ("discount_minor", -100),
    ]:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**row, field: bad}, schema)
    missing = {k: v for k, v in row.items() if k != "total_minor"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(missing, schema)


def test_markdown_documents_every_field() -> None:
    for info in CONTRACTS:
        page = markdown(info)
        assert f"version {info.version}" in page
        for field in info.model.to_schema().columns:
            assert f"`{field}`" in page, (info.name, field)


def test_finsync_schema_export_writes_every_contract(tmp_path: Path) -> None:
    finsync = str(Path(sys.executable).with_name("finsync"))
    result = subprocess.run(
        [finsync, "schema", "export", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for info in CONTRACTS:
        stem = f"{info.name}.v{info.version}"
        exported = json.loads((tmp_path / f"{stem}.schema.json").read_text())
        assert exported["x-finsync-version"] == info.version
        assert (tmp_path / f"{stem}.md").read_text().startswith(f"# {info.name}")
    assert "| invoice | 4 | canonical |" in (tmp_path / "README.md").read_text()

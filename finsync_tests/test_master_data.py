"""Mapping files finance owns: the shipped ones load, a malformed one names its file."""

import shutil
from pathlib import Path

import pytest

from finsync_pipeline.errors import ConfigurationError
from finsync_pipeline.master_data import DEFAULT_DIR, load_master_data


@pytest.fixture
def mappings(tmp_path: Path) -> Path:
    folder = tmp_path / "mappings"
    shutil.copytree(DEFAULT_DIR, folder)
    return folder


def test_the_shipped_mappings_load() -> None:
    master = load_master_data(DEFAULT_DIR)
    us = master.legal_entities["US01"]
    assert (us.currency, us.netsuite_subsidiary_id, us.country) == ("USD", "1", "US")
    assert master.legal_entities["JP01"].currency == "JPY"
    assert master.netsuite_currency_ids["USD"] == "1"
    assert master.netsuite_items["prod_platform"] == "101"
    assert master.netsuite_tax_item_id == "190"
    # Every legal entity's own currency is mapped to a NetSuite currency.
    assert {e.currency for e in master.legal_entities.values()} <= set(master.netsuite_currency_ids)


def test_the_folder_comes_from_the_environment(
    mappings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (mappings / "products.csv").open("a") as f:
        f.write("prod_new,105,A product only this folder maps\n")
    monkeypatch.setenv("FINSYNC_MAPPINGS_DIR", str(mappings))
    assert load_master_data().netsuite_items["prod_new"] == "105"


def test_a_missing_column_names_the_file(mappings: Path) -> None:
    (mappings / "products.csv").write_text("stripe_product_id,item\nprod_platform,101\n")
    with pytest.raises(
        ConfigurationError, match=r"products\.csv lacks columns \['netsuite_item_id'\]"
    ):
        load_master_data(mappings)


def test_an_unknown_currency_names_the_file_and_line(mappings: Path) -> None:
    path = mappings / "legal_entities.csv"
    path.write_text(path.read_text() + "XX01,finsync XX,XX,XXX,9\n")
    with pytest.raises(
        ConfigurationError,
        match=r"legal_entities\.csv line 6: field currency fails iso_currency \(value 'XXX'\)",
    ):
        load_master_data(mappings)


def test_a_missing_file_names_the_file_and_the_variable(
    mappings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (mappings / "currencies.csv").unlink()
    monkeypatch.setenv("FINSYNC_MAPPINGS_DIR", str(mappings))
    with pytest.raises(
        ConfigurationError, match=r"currencies\.csv is missing; set FINSYNC_MAPPINGS_DIR"
    ):
        load_master_data()


def test_a_missing_tax_item_setting_is_named(mappings: Path) -> None:
    (mappings / "erp_settings.csv").write_text("setting,value,meaning\n")
    with pytest.raises(
        ConfigurationError, match=r"erp_settings\.csv lacks the setting netsuite_tax_item_id"
    ):
        load_master_data(mappings)


def test_an_unknown_currency_in_currencies_csv_is_refused_with_the_file_named(
    mappings: Path,
) -> None:
    path = mappings / "currencies.csv"
    path.write_text(path.read_text() + "XXX,9\n")
    with pytest.raises(ConfigurationError, match=r"currencies\.csv.*unknown currency .XXX."):
        load_master_data(mappings)


@pytest.mark.parametrize(
    ("file", "row", "says"),
    [
        (
            "products.csv",
            "price_oops,106,Not a product id\n",
            r"products\.csv line 6: field stripe_product_id fails str_startswith",
        ),
        (
            "products.csv",
            "prod_platform,107,Mapped twice\n",
            r"products\.csv line \d: field stripe_product_id fails field_uniqueness",
        ),
        (
            "legal_entities.csv",
            "FR01,finsync SAS,France,EUR,5\n",
            r"legal_entities\.csv line 6: field country fails str_matches",
        ),
        (
            "legal_entities.csv",
            "FR01,finsync SAS,FR,EUR,five\n",
            r"legal_entities\.csv line 6: field netsuite_subsidiary_id fails str_matches",
        ),
    ],
    ids=["product-id-shape", "product-mapped-twice", "country-code", "subsidiary-id"],
)
def test_a_row_breaking_the_mapping_contract_is_named(
    mappings: Path, file: str, row: str, says: str
) -> None:
    with (mappings / file).open("a") as f:
        f.write(row)
    with pytest.raises(ConfigurationError, match=says):
        load_master_data(mappings)

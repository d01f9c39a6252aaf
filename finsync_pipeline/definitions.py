"""finsync's Dagster definitions: everything under ``defs/``, with resources bound for the mode.

``FINSYNC_MODE=sandbox`` (the default) points every connector at the base URL in its
environment variable (the sandbox simulators); ``live`` uses each service's real address.
Credentials always come from environment variables and never appear in metadata or logs.
"""

import os
from pathlib import Path
from typing import Any

import dagster as dg

from finsync_pipeline.resources.avalara import AvalaraResource
from finsync_pipeline.resources.metering import MeteringResource
from finsync_pipeline.resources.netsuite import NetSuiteResource
from finsync_pipeline.resources.salesforce import SalesforceResource
from finsync_pipeline.resources.settings import (
    PipelineSettings,
    lease_from_env,
    max_bad_share_from_env,
    min_bad_records_from_env,
    netsuite_concurrency_from_env,
)
from finsync_pipeline.resources.stripe import StripeResource
from finsync_pipeline.resources.warehouse import WarehouseResource
from finsync_pipeline.sources import sources_off


def default_warehouse_url() -> str:
    home = Path(os.environ.get("FINSYNC_HOME", ".finsync")).resolve()
    return f"sqlite:///{home / 'warehouse.db'}"


def _optional_env(**fields: str) -> dict[str, Any]:
    """Bind each field to its variable only when the variable is set (alternative logins)."""
    return {field: dg.EnvVar(name) for field, name in fields.items() if os.environ.get(name)}


def build_resources(mode: str) -> dict[str, object]:
    """The resources for ``mode`` ("sandbox" or "live").

    A source switched off (``FINSYNC_SOURCES_OFF``) is bound without its variables: a company
    without usage metering sets no METERING_API_KEY, and nothing asks for one.
    """
    sandbox = mode == "sandbox"
    off = sources_off()
    warehouse_url = (
        dg.EnvVar("FINSYNC_WAREHOUSE_URL")
        if os.environ.get("FINSYNC_WAREHOUSE_URL")
        else default_warehouse_url()
    )
    stripe_base: dict[str, Any] = {"api_base": dg.EnvVar("STRIPE_API_BASE")} if sandbox else {}
    netsuite_base: dict[str, Any] = {"base_url": dg.EnvVar("NETSUITE_BASE_URL")} if sandbox else {}
    metering_base: dict[str, Any] = {"base_url": dg.EnvVar("METERING_BASE_URL")} if sandbox else {}
    avalara_base: dict[str, Any] = {"base_url": dg.EnvVar("AVALARA_BASE_URL")} if sandbox else {}
    if os.environ.get("AVALARA_COMPANY_CODE"):
        avalara_base["company_code"] = dg.EnvVar("AVALARA_COMPANY_CODE")
    return {
        "warehouse": WarehouseResource(url=warehouse_url),
        "settings": PipelineSettings(
            max_bad_share=max_bad_share_from_env(),
            min_bad_records=min_bad_records_from_env(),
            posting_lease_s=lease_from_env(),
            netsuite_concurrency=netsuite_concurrency_from_env(),
            sources_off=sorted(off),
        ),
        "stripe": StripeResource(
            api_key=dg.EnvVar("STRIPE_API_KEY"),
            **stripe_base,
        ),
        "salesforce": SalesforceResource(
            login_url=dg.EnvVar("SALESFORCE_LOGIN_URL"),
            client_id=dg.EnvVar("SALESFORCE_CLIENT_ID"),
            **_optional_env(
                client_secret="SALESFORCE_CLIENT_SECRET",  # noqa: S106  (a variable name)
                username="SALESFORCE_USERNAME",
                private_key="SALESFORCE_PRIVATE_KEY",
                jwt_audience="SALESFORCE_JWT_AUDIENCE",
            ),
        ),
        "netsuite": NetSuiteResource(
            account_id=dg.EnvVar("NETSUITE_ACCOUNT_ID"),
            consumer_key=dg.EnvVar("NETSUITE_CONSUMER_KEY"),
            consumer_secret=dg.EnvVar("NETSUITE_CONSUMER_SECRET"),
            token_id=dg.EnvVar("NETSUITE_TOKEN_ID"),
            token_secret=dg.EnvVar("NETSUITE_TOKEN_SECRET"),
            **netsuite_base,
        ),
        "metering": MeteringResource(api_key="")
        if "metering" in off
        else MeteringResource(api_key=dg.EnvVar("METERING_API_KEY"), **metering_base),
        "avalara": AvalaraResource(
            account_id=dg.EnvVar("AVALARA_ACCOUNT_ID"),
            license_key=dg.EnvVar("AVALARA_LICENSE_KEY"),
            **avalara_base,
        ),
    }


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
        # A run launched by the daemon or the UI executes its steps in its own run worker
        # process, one after the other, as `finsync run` does: the run is the unit a pool or
        # tag limit counts and a kill takes whole, and its steps share one warehouse.
        dg.Definitions(
            resources=build_resources(os.environ.get("FINSYNC_MODE", "sandbox")),
            executor=dg.in_process_executor,
        ),
    )

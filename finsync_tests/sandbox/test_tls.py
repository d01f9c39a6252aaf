"""The sandbox over HTTPS: finsync's connectors verify its certificate against the CA bundle it
prints, and a client without that bundle is refused, as against any unknown certificate."""

import datetime
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from finsync_pipeline.errors import ConfigurationError
from finsync_pipeline.resources.http import HttpOptions
from finsync_pipeline.resources.netsuite import NetSuiteClient
from finsync_pipeline.resources.salesforce import SalesforceClient, soql_select
from finsync_pipeline.resources.stripe import StripeClient
from finsync_pipeline.sandbox.generator import Company, CompanySpec, generate
from finsync_pipeline.sandbox.server import CA_BUNDLE_VARIABLE, Sandbox
from finsync_tests.sandbox.conftest import serving

OPTIONS = HttpOptions(timeout=(5.0, 10.0), max_attempts=3, sleep=lambda _s: None)


@pytest.fixture(scope="module")
def small() -> Company:
    return generate(CompanySpec(accounts=10, months=1, seed=2, end=datetime.date(2026, 10, 31)))


@pytest.fixture(scope="module")
def tls_sandbox(tmp_path_factory: pytest.TempPathFactory, small: Company) -> Iterator[Sandbox]:
    yield from serving(tmp_path_factory.mktemp("tls-sandbox"), small, tls=True)


@pytest.fixture
def no_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (CA_BUNDLE_VARIABLE, "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)


def _salesforce(env: dict[str, str]) -> SalesforceClient:
    return SalesforceClient(
        login_url=env["SALESFORCE_LOGIN_URL"],
        client_id=env["SALESFORCE_CLIENT_ID"],
        username=env["SALESFORCE_USERNAME"],
        private_key=env["SALESFORCE_PRIVATE_KEY"],
        http_options=OPTIONS,
    )


def test_every_system_is_served_over_https_and_env_names_the_bundle(
    tls_sandbox: Sandbox,
) -> None:
    env = tls_sandbox.env
    urls = [env[k] for k in env if k.endswith(("_BASE", "_BASE_URL", "_LOGIN_URL"))]
    assert len(urls) == 5 and all(u.startswith("https://127.0.0.1:") for u in urls)
    bundle = Path(env[CA_BUNDLE_VARIABLE])
    assert tls_sandbox.tls is not None
    # The sandbox's CA first, then the public CAs, so the same shell still reaches real hosts.
    text = bundle.read_text()
    assert text.startswith(tls_sandbox.tls.ca_bundle.read_text())
    assert text.count("-----BEGIN CERTIFICATE-----") > 10
    for url in urls:
        # Any answer at all means the handshake verified the certificate against the bundle.
        assert requests.get(url + "/", verify=str(bundle), timeout=10).status_code < 500


def test_connectors_verify_the_sandbox_certificate_against_the_bundle(
    tls_sandbox: Sandbox, small: Company, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = tls_sandbox.env
    monkeypatch.setenv(CA_BUNDLE_VARIABLE, env[CA_BUNDLE_VARIABLE])
    with _salesforce(env) as salesforce:
        accounts = list(salesforce.query(soql_select("Account", ["Id"])))
    assert len(accounts) == len(small.salesforce["Account"])
    # The token answer names the instance over https too, so every query stays on TLS.
    assert salesforce._instance_url is not None
    assert salesforce._instance_url.startswith("https://")
    with StripeClient(api_key=env["STRIPE_API_KEY"], api_base=env["STRIPE_API_BASE"]) as stripe:
        customers = list(stripe.list_customers())
    assert len(customers) == len(small.stripe["customer"])
    # NetSuite's OAuth 1.0a signature covers the https URL: the sandbox checks it as signed.
    with NetSuiteClient(
        account_id=env["NETSUITE_ACCOUNT_ID"],
        consumer_key=env["NETSUITE_CONSUMER_KEY"],
        consumer_secret=env["NETSUITE_CONSUMER_SECRET"],
        token_id=env["NETSUITE_TOKEN_ID"],
        token_secret=env["NETSUITE_TOKEN_SECRET"],
        base_url=env["NETSUITE_BASE_URL"],
        http_options=OPTIONS,
    ) as netsuite:
        internal_id = netsuite.upsert(
            "customer",
            "SF_TLS1",
            {
                "externalId": "SF_TLS1",
                "companyName": "TLS Ltd",
                "isPerson": False,
                "subsidiary": {"id": "1"},
                "currency": {"id": "1"},
            },
        )
        rows = list(netsuite.suiteql("SELECT id FROM customer WHERE externalid = 'SF_TLS1'"))
    assert [str(r["id"]) for r in rows] == [internal_id]


@pytest.mark.usefixtures("no_bundle")
def test_a_client_without_the_bundle_is_refused(tls_sandbox: Sandbox) -> None:
    env = tls_sandbox.env
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(env["SALESFORCE_LOGIN_URL"] + "/services/data", timeout=10)
    salesforce = _salesforce(env)
    with pytest.raises(ConfigurationError) as info:
        list(salesforce.query(soql_select("Account", ["Id"])))
    message = str(info.value)
    assert message.startswith("salesforce: the TLS certificate of 127.0.0.1:")
    assert "certificate verify failed" in message and CA_BUNDLE_VARIABLE in message
    # Never retried: an untrusted certificate stays untrusted.
    assert salesforce.requests_made == 1
    assert env["SALESFORCE_PRIVATE_KEY"].splitlines()[1] not in message


def test_the_ca_survives_a_restart_so_clients_keep_trusting_it(
    tmp_path: Path, small: Company
) -> None:
    first = Sandbox(tmp_path, tls=True)
    assert first.tls is not None
    ca = first.tls.ca_bundle.read_bytes()
    cert = first.tls.cert.read_bytes()
    again = Sandbox(tmp_path, tls=True)
    assert again.tls is not None
    assert again.tls.ca_bundle.read_bytes() == ca and again.tls.cert.read_bytes() == cert
    # Bound to another interface, the server certificate is made again, by the same CA.
    other = Sandbox(tmp_path, host="127.0.0.2", tls=True)
    assert other.tls is not None
    assert other.tls.ca_bundle.read_bytes() == ca and other.tls.cert.read_bytes() != cert
    assert oct(other.tls.key.stat().st_mode & 0o777) == "0o600"


def test_plain_http_stays_the_default(tmp_path: Path) -> None:
    box = Sandbox(tmp_path)
    with box:
        assert box.url("salesforce").startswith("http://")
        assert CA_BUNDLE_VARIABLE not in box.env
    assert not (tmp_path / "tls").exists()


@pytest.mark.usefixtures("no_bundle")
def test_serve_tls_prints_the_bundle_with_the_other_exports(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "finsync_pipeline.cli",
            "sandbox",
            "serve",
            "--tls",
            "--state",
            str(tmp_path),
            "--ports",
            "0",
            "0",
            "0",
            "0",
            "0",
            "--accounts",
            "6",
            "--months",
            "1",
            "--end",
            "2026-01-31",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        exports: dict[str, str] = {}
        for line in proc.stdout:
            if line.startswith("export "):
                key, _, value = line[len("export ") :].strip().partition("=")
                exports[key] = shlex.split(value)[0]
            if line.startswith("# finsync sandbox ready"):
                break
        assert exports, f"serve printed nothing: {proc.stderr.read() if proc.stderr else ''}"
        assert exports[CA_BUNDLE_VARIABLE] == str((tmp_path / "tls" / "trust.pem").resolve())
        token = requests.post(
            exports["SALESFORCE_LOGIN_URL"] + "/services/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": exports["SALESFORCE_CLIENT_ID"],
                "client_secret": exports["SALESFORCE_CLIENT_SECRET"],
            },
            verify=exports[CA_BUNDLE_VARIABLE],
            timeout=10,
        )
        assert token.status_code == 200
        assert token.json()["instance_url"] == exports["SALESFORCE_LOGIN_URL"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)

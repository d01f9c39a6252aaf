"""The Sandbox lifecycle: env block, seeding, restarts, request counts and `serve`."""

import datetime
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from finsync_pipeline.sandbox.generator import Company, CompanySpec, generate
from finsync_pipeline.sandbox.server import Sandbox, SandboxError
from finsync_tests.sandbox.oauth1 import sign

ENV_KEYS = {
    "STRIPE_API_BASE",
    "STRIPE_API_KEY",
    "SALESFORCE_LOGIN_URL",
    "SALESFORCE_CLIENT_ID",
    "SALESFORCE_CLIENT_SECRET",
    "SALESFORCE_USERNAME",
    "SALESFORCE_PRIVATE_KEY",
    "NETSUITE_ACCOUNT_ID",
    "NETSUITE_BASE_URL",
    "NETSUITE_CONSUMER_KEY",
    "NETSUITE_CONSUMER_SECRET",
    "NETSUITE_TOKEN_ID",
    "NETSUITE_TOKEN_SECRET",
    "METERING_BASE_URL",
    "METERING_API_KEY",
    "AVALARA_BASE_URL",
    "AVALARA_ACCOUNT_ID",
    "AVALARA_LICENSE_KEY",
    "AVALARA_COMPANY_CODE",
}
SMALL = CompanySpec(accounts=12, months=2, seed=5, end=datetime.date(2026, 1, 31))


@pytest.fixture(scope="module")
def small() -> Company:
    return generate(SMALL)


def _put_customer(env: dict[str, str], eid: str) -> requests.Response:
    url = f"{env['NETSUITE_BASE_URL']}/services/rest/record/v1/customer/eid:{eid}"
    auth = sign(
        "PUT",
        url,
        realm=env["NETSUITE_ACCOUNT_ID"],
        consumer_key=env["NETSUITE_CONSUMER_KEY"],
        consumer_secret=env["NETSUITE_CONSUMER_SECRET"],
        token=env["NETSUITE_TOKEN_ID"],
        token_secret=env["NETSUITE_TOKEN_SECRET"],
    )
    return requests.put(
        url,
        json={"companyName": "Restart Co", "subsidiary": {"id": "3"}},
        headers={"Authorization": auth},
        timeout=10,
    )


def test_env_names_and_netsuite_account_format(tmp_path: Path, small: Company) -> None:
    box = Sandbox(tmp_path)
    box.seed(small)
    with box:
        env = box.env
        assert set(env) == ENV_KEYS
        assert env["NETSUITE_ACCOUNT_ID"].endswith("_SB1")
        for key in (
            "STRIPE_API_BASE",
            "SALESFORCE_LOGIN_URL",
            "NETSUITE_BASE_URL",
            "METERING_BASE_URL",
            "AVALARA_BASE_URL",
        ):
            assert env[key].startswith("http://127.0.0.1:")
    with pytest.raises(SandboxError):
        _ = box.env


def test_seeding_twice_is_refused(tmp_path: Path, small: Company) -> None:
    box = Sandbox(tmp_path)
    assert not box.is_seeded()
    box.seed(small)
    assert box.is_seeded() and box.spec == SMALL
    with pytest.raises(SandboxError):
        box.seed(small)


def test_state_survives_restart(tmp_path: Path, small: Company) -> None:
    first = Sandbox(tmp_path)
    first.seed(small)
    with first:
        env_before = first.env
        assert _put_customer(env_before, "SF-RESTART").status_code == 204
        posted = first.netsuite_records("customer")
    second = Sandbox(tmp_path)
    assert second.is_seeded()
    with second:
        env = second.env
        assert {k: v for k, v in env.items() if "URL" not in k and "BASE" not in k} == {
            k: v for k, v in env_before.items() if "URL" not in k and "BASE" not in k
        }, "credentials are fixed per state directory"
        after = second.netsuite_records("customer")
        assert [c["id"] for c in after] == [c["id"] for c in posted]
        assert after[0]["externalId"] == "SF-RESTART"
        resp = requests.get(
            env["STRIPE_API_BASE"] + "/v1/customers",
            params={"limit": 100},
            headers={"Authorization": f"Bearer {env['STRIPE_API_KEY']}"},
            timeout=10,
        )
        assert {c["id"] for c in resp.json()["data"]} == {c["id"] for c in small.stripe["customer"]}
        # Upserting the same external id after the restart updates, never duplicates.
        assert _put_customer(env, "SF-RESTART").status_code == 204
        assert len(second.netsuite_records("customer")) == 1


def test_request_counts_per_system(tmp_path: Path, small: Company) -> None:
    box = Sandbox(tmp_path)
    box.seed(small)
    with box, requests.Session() as http:
        for _ in range(3):
            http.get(box.env["STRIPE_API_BASE"] + "/v1/customers", timeout=10)
        http.post(box.env["SALESFORCE_LOGIN_URL"] + "/services/oauth2/token", timeout=10)
        assert box.request_counts() == {
            "stripe": 3,
            "salesforce": 1,
            "netsuite": 0,
            "metering": 0,
            "avalara": 0,
        }


def test_netsuite_starts_with_master_data_only(tmp_path: Path, small: Company) -> None:
    box = Sandbox(tmp_path)
    box.seed(small)
    assert box.netsuite_records("customer") == []
    assert box.netsuite_records("invoice") == []
    assert [s["id"] for s in box.netsuite_records("subsidiary")] == ["1", "2", "3", "4"]
    currencies = {c["symbol"]: c["currencyPrecision"] for c in box.netsuite_records("currency")}
    assert currencies == {"USD": 2, "EUR": 2, "GBP": 2, "JPY": 0}
    items = {i["id"] for i in box.netsuite_records("item")}
    assert items == {"101", "102", "103", "104", "105", "190", "191", "192"}


def test_serve_prints_env_and_stops_on_sigterm(tmp_path: Path) -> None:
    script = (
        "import datetime, pathlib, sys\n"
        "from finsync_pipeline.sandbox.generator import CompanySpec\n"
        "from finsync_pipeline.sandbox.server import serve\n"
        "serve(pathlib.Path(sys.argv[1]), host='127.0.0.1', ports=(0, 0, 0),\n"
        "      spec=CompanySpec(accounts=8, months=1, seed=1, end=datetime.date(2026, 1, 31)))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        exports: dict[str, str] = {}
        while len(exports) < len(ENV_KEYS):
            line = proc.stdout.readline()
            assert line, f"serve exited early: {proc.stderr.read() if proc.stderr else ''}"
            if line.startswith("export "):
                key, _, value = line[len("export ") :].strip().partition("=")
                exports[key] = shlex.split(value)[0]
        assert set(exports) == ENV_KEYS
        resp = requests.post(
            exports["SALESFORCE_LOGIN_URL"] + "/__sandbox/faults",
            json={"status": 503, "retry_after_s": 1},
            timeout=10,
        )
        assert resp.status_code == 200
        token = requests.post(
            exports["SALESFORCE_LOGIN_URL"] + "/services/oauth2/token", timeout=10
        )
        assert token.status_code == 503
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

"""The sandbox: simulators of every external system over one persistent state directory.

Stripe, Salesforce, NetSuite, usage metering (OpenMeter) and Avalara AvaTax. ``Sandbox`` runs
the HTTP servers in background threads (for tests and the demo);
``serve`` runs them in the foreground for ``finsync sandbox serve``. State (records, NetSuite
postings, credentials, the spec it was seeded with) lives in ``state_dir/sandbox.sqlite3`` and
survives restarts. Credentials are generated once per state directory and stored there.
"""

import datetime
import errno
import os
import re
import secrets
import shlex
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import simplejson

from finsync_pipeline.errors import FinsyncError
from finsync_pipeline.processes import busy_port_error
from finsync_pipeline.sandbox.avalara_sim import AvalaraSimulator
from finsync_pipeline.sandbox.generator import Company, CompanySpec, generate
from finsync_pipeline.sandbox.http_base import Faults, SimServer
from finsync_pipeline.sandbox.metering_sim import MeteringSimulator, seed_metering
from finsync_pipeline.sandbox.netsuite_sim import NetSuiteSimulator, seed_netsuite
from finsync_pipeline.sandbox.salesforce_sim import (
    SalesforceSimulator,
    jwt_credentials,
    seed_salesforce,
)
from finsync_pipeline.sandbox.store import Store
from finsync_pipeline.sandbox.stripe_sim import StripeSimulator, seed_stripe
from finsync_pipeline.sandbox.tls import TlsFiles, ensure_certificates
from finsync_pipeline.sandbox.usage_gen import generate_usage

__all__ = ["Company", "CompanySpec", "Faults", "Sandbox", "SandboxError", "serve"]

STATE_FILE = "sandbox.sqlite3"
# requests (and so every finsync connector, and the official clients built on it) verifies
# TLS against the bundle this variable names.
CA_BUNDLE_VARIABLE = "REQUESTS_CA_BUNDLE"
SYSTEM_ORDER = ("stripe", "salesforce", "netsuite", "metering", "avalara")
DEFAULT_PORTS = (12111, 12112, 12113, 12114, 12115)
AVALARA_COMPANY_CODE = "FINSYNC"


class SandboxError(FinsyncError):
    """The sandbox was misused (seeded twice, started twice, read before start)."""


def _new_credentials() -> dict[str, str]:
    return {
        "stripe_api_key": "sk_test_" + secrets.token_urlsafe(36).replace("-", "x"),
        "salesforce_client_id": "3MVG9" + secrets.token_urlsafe(60).replace("-", "x"),
        "salesforce_client_secret": secrets.token_hex(32).upper(),
        "salesforce_org_id": "00D" + secrets.token_hex(6).upper()[:12] + "AAA",
        "netsuite_account_id": f"{secrets.randbelow(9_000_000) + 1_000_000}_SB1",
        "netsuite_consumer_key": secrets.token_hex(32),
        "netsuite_consumer_secret": secrets.token_hex(32),
        "netsuite_token_id": secrets.token_hex(32),
        "netsuite_token_secret": secrets.token_hex(32),
        "metering_api_key": "om_test_" + secrets.token_urlsafe(32),
        "avalara_account_id": str(secrets.randbelow(900_000_000) + 1_100_000_000),
        "avalara_license_key": secrets.token_hex(8).upper(),
    }


class Sandbox:
    """Three simulators sharing one state directory.

    Args:
        state_dir: Where the state file lives; created when absent.
        host: Interface to bind.
        stripe_port: Port of the Stripe simulator (0 = ephemeral).
        salesforce_port: Port of the Salesforce simulator (0 = ephemeral).
        netsuite_port: Port of the NetSuite simulator (0 = ephemeral).
        tls: Serve HTTPS with a certificate signed by the state folder's own CA
            (``tls/ca.pem``; ``env`` names ``tls/trust.pem`` in ``REQUESTS_CA_BUNDLE``).

    Attributes:
        faults: The shared fault-injection rules.
        clock: Wall clock used by every simulator (token expiry, OAuth timestamps, event
            retention); replace it to test time-dependent behaviour.
        stripe, salesforce, netsuite: The simulators themselves.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        host: str = "127.0.0.1",
        stripe_port: int = 0,
        salesforce_port: int = 0,
        netsuite_port: int = 0,
        metering_port: int = 0,
        avalara_port: int = 0,
        tls: bool = False,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.tls: TlsFiles | None = ensure_certificates(self.state_dir, host) if tls else None
        self._ports = {
            "stripe": stripe_port,
            "salesforce": salesforce_port,
            "netsuite": netsuite_port,
            "metering": metering_port,
            "avalara": avalara_port,
        }
        self.store = Store(self.state_dir / STATE_FILE)
        self.credentials = self._load_credentials()
        self.faults = Faults()
        self.clock = time.time
        now = self._now
        creds = self.credentials
        self.stripe = StripeSimulator(self.faults, self.store, creds["stripe_api_key"], now)
        self.salesforce = SalesforceSimulator(
            self.faults,
            self.store,
            client_id=creds["salesforce_client_id"],
            client_secret=creds["salesforce_client_secret"],
            org_id=creds["salesforce_org_id"],
            clock=now,
        )
        self.netsuite = NetSuiteSimulator(
            self.faults,
            self.store,
            account_id=creds["netsuite_account_id"],
            consumer_key=creds["netsuite_consumer_key"],
            consumer_secret=creds["netsuite_consumer_secret"],
            token_id=creds["netsuite_token_id"],
            token_secret=creds["netsuite_token_secret"],
            clock=now,
        )
        self.metering = MeteringSimulator(self.faults, self.store, creds["metering_api_key"], now)
        self.avalara = AvalaraSimulator(
            self.faults,
            self.store,
            account_id=creds["avalara_account_id"],
            license_key=creds["avalara_license_key"],
            clock=now,
        )
        self._servers: dict[str, SimServer] = {}

    @classmethod
    def on_ports(
        cls, state_dir: Path, *, host: str, ports: Sequence[int], tls: bool = False
    ) -> "Sandbox":
        """A sandbox listening on ``ports`` given in SYSTEM_ORDER (missing ones: any free)."""
        padded = [*ports, *[0] * (len(SYSTEM_ORDER) - len(ports))]
        named = {f"{system}_port": port for system, port in zip(SYSTEM_ORDER, padded, strict=True)}
        return cls(state_dir, host=host, tls=tls, **named)

    def _now(self) -> float:
        return self.clock()

    def _load_credentials(self) -> dict[str, str]:
        stored = self.store.meta_get("credentials")
        fresh = _new_credentials()
        if stored is not None:
            creds: dict[str, str] = simplejson.loads(stored)
            if set(fresh) <= set(creds):
                return creds
            # A state made before a system was added keeps its old credentials and gains the
            # new system's.
            creds = {**fresh, **creds}
        else:
            creds = fresh
        self.store.meta_set("credentials", simplejson.dumps(creds))
        return creds

    # state ------------------------------------------------------------------------------------
    def is_seeded(self) -> bool:
        """Whether a company has been loaded into this state directory."""
        return self.store.meta_get("spec") is not None

    @property
    def spec(self) -> CompanySpec | None:
        """The spec the state was seeded with, if any."""
        stored = self.store.meta_get("spec")
        if stored is None:
            return None
        raw = simplejson.loads(stored)
        return CompanySpec(
            accounts=raw["accounts"],
            months=raw["months"],
            seed=raw["seed"],
            end=datetime.date.fromisoformat(raw["end"]),
        )

    def planted(self) -> dict[str, list[dict[str, Any]]]:
        """The planted problems recorded at seeding time."""
        stored = self.store.meta_get("planted")
        return {} if stored is None else dict(simplejson.loads(stored))

    def seed(self, company: Company) -> None:
        """Load ``company`` into the state.

        Raises:
            SandboxError: The state directory is already seeded.
        """
        spec = company.spec
        usage_events, usage_planted = generate_usage(company)
        planted = {**company.planted, **usage_planted}
        with self.store.tx() as conn:
            if conn.execute("SELECT 1 FROM meta WHERE key = 'spec'").fetchone() is not None:
                raise SandboxError(
                    f"sandbox state in {self.state_dir} is already seeded; use a fresh directory"
                )
            seed_stripe(conn, company)
            seed_salesforce(conn, company)
            seed_netsuite(conn, company)
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('spec', ?), ('planted', ?)",
                (
                    simplejson.dumps(
                        {
                            "accounts": spec.accounts,
                            "months": spec.months,
                            "seed": spec.seed,
                            "end": spec.end.isoformat(),
                        }
                    ),
                    simplejson.dumps(planted),
                ),
            )
        # The metering store opens its own transaction, so it is loaded after the others.
        seed_metering(self.store, usage_events)
        self.salesforce.reset_cache()

    # lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the three HTTP servers in background threads."""
        if self._servers:
            raise SandboxError("sandbox already started")
        apps = {
            "stripe": self.stripe,
            "salesforce": self.salesforce,
            "netsuite": self.netsuite,
            "metering": self.metering,
            "avalara": self.avalara,
        }
        context = None if self.tls is None else self.tls.server_context()
        try:
            for name, app in apps.items():
                try:
                    server = SimServer((self.host, self._ports[name]), app, context)
                except OSError as e:
                    if e.errno != errno.EADDRINUSE:
                        raise
                    what = f"the {name} simulator"
                    raise busy_port_error(self.host, self._ports[name], what, "--ports") from None
                self._servers[name] = server
                server.start()
        except (OSError, FinsyncError):
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the servers and close their connections; the state stays on disk."""
        servers, self._servers = self._servers, {}
        for server in servers.values():
            server.stop()

    def __enter__(self) -> "Sandbox":
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def url(self, system: str) -> str:
        """Base URL of a running simulator."""
        if system not in self._servers:
            raise SandboxError("sandbox not started: start() it before asking for URLs")
        host = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
        server = self._servers[system]
        return f"{server.scheme}://{host}:{server.port}"

    @property
    def env(self) -> dict[str, str]:
        """The environment variables a deployment sets to point finsync at these systems.

        Served over TLS, ``REQUESTS_CA_BUNDLE`` names the trust bundle: the sandbox's CA and
        the public CAs requests trusts by default.
        """
        creds = self.credentials
        username, private_key = jwt_credentials(self.store, creds["salesforce_org_id"])
        tls = {} if self.tls is None else {CA_BUNDLE_VARIABLE: str(self.tls.trust_bundle.resolve())}
        return {
            "STRIPE_API_BASE": self.url("stripe"),
            "STRIPE_API_KEY": creds["stripe_api_key"],
            "SALESFORCE_LOGIN_URL": self.url("salesforce"),
            "SALESFORCE_CLIENT_ID": creds["salesforce_client_id"],
            "SALESFORCE_CLIENT_SECRET": creds["salesforce_client_secret"],
            # The JWT bearer flow's user and key (the sandbox's connected app holds the cert);
            # finsync uses JWT when both are set.
            "SALESFORCE_USERNAME": username,
            "SALESFORCE_PRIVATE_KEY": private_key,
            "NETSUITE_ACCOUNT_ID": creds["netsuite_account_id"],
            "NETSUITE_BASE_URL": self.url("netsuite"),
            "NETSUITE_CONSUMER_KEY": creds["netsuite_consumer_key"],
            "NETSUITE_CONSUMER_SECRET": creds["netsuite_consumer_secret"],
            "NETSUITE_TOKEN_ID": creds["netsuite_token_id"],
            "NETSUITE_TOKEN_SECRET": creds["netsuite_token_secret"],
            "METERING_BASE_URL": self.url("metering"),
            "METERING_API_KEY": creds["metering_api_key"],
            "AVALARA_BASE_URL": self.url("avalara"),
            "AVALARA_ACCOUNT_ID": creds["avalara_account_id"],
            "AVALARA_LICENSE_KEY": creds["avalara_license_key"],
            "AVALARA_COMPANY_CODE": AVALARA_COMPANY_CODE,
            **tls,
        }

    # control and inspection -------------------------------------------------------------------
    def inject(
        self,
        system: str,
        *,
        status: int,
        count: int = 1,
        retry_after_s: int | None = 1,
        path_prefix: str | None = None,
    ) -> None:
        """Make the next ``count`` requests to ``system`` (under ``path_prefix``) fail.

        Each answers ``status`` in the system's own error envelope, with ``Retry-After`` when
        ``retry_after_s`` is given.
        """
        self.faults.add(
            system,
            status=status,
            count=count,
            retry_after_s=retry_after_s,
            path_prefix=path_prefix,
        )

    def arm_fault_preset(self) -> dict[str, Any]:
        """The faults of ``finsync demo --faults``: what a bad day at the vendors looks like.

        Stripe and Salesforce throttle (429, 503 with Retry-After); NetSuite allows fewer
        concurrent requests than finsync's workers, goes into a maintenance window for its
        first requests, and commits some writes without ever answering; Stripe's event
        listing delivers the event at each page boundary twice. The pipeline must still end
        with zero drift and no duplicate.
        """
        self.faults.add("stripe", status=429, count=4, retry_after_s=1)
        self.faults.repeat_items("stripe", pages=50, path_prefix="/v1/events")
        self.faults.add("salesforce", status=503, count=2, retry_after_s=1)
        self.faults.add("avalara", status=429, count=3, retry_after_s=1)
        self.faults.set_concurrency_limit("netsuite", 3)
        self.faults.maintenance("netsuite", requests=40, retry_after_s=1)
        self.faults.commit_then_timeout(
            "netsuite", count=8, stall_s=0, path_prefix="/services/rest/record/v1/invoice"
        )
        return self.faults.describe()

    def expire_salesforce_sessions(self) -> None:
        """Expire every Salesforce access token (next call: 401 INVALID_SESSION_ID)."""
        self.salesforce.expire_sessions()

    def request_counts(self) -> dict[str, int]:
        """Requests served per system since this Sandbox object was created."""
        return {
            "stripe": self.stripe.request_count,
            "salesforce": self.salesforce.request_count,
            "netsuite": self.netsuite.request_count,
            "metering": self.metering.request_count,
            "avalara": self.avalara.request_count,
        }

    def netsuite_records(self, record_type: str) -> list[dict[str, Any]]:
        """What NetSuite holds now for ``record_type`` (customer, invoice, or master data)."""
        base = self.url("netsuite") if self._servers else "http://127.0.0.1"
        return self.netsuite.records(base, record_type)


READY_FILE = "ready.env"
READY_LINE = "# finsync sandbox ready"


def env_block(sandbox: Sandbox) -> str:
    """The ``export`` lines pointing finsync at a started sandbox, between a header naming
    its state and process and a last line saying it is ready."""
    lines = [f"# finsync sandbox serving state {sandbox.state_dir} (pid {os.getpid()})"]
    for key, value in sandbox.env.items():
        # One line per variable, quoted for the shell: the private key PEM's line breaks are
        # written as \n, which the Salesforce connector reads back.
        one_line = value.replace("\n", "\\n")
        lines.append(f"export {key}={shlex.quote(one_line)}")
    return "\n".join([*lines, READY_LINE]) + "\n"


def wait_ready(state_dir: Path, timeout_s: float) -> str:
    """The environment block of the sandbox serving ``state_dir``, once every simulator listens.

    A block left by a sandbox that was killed (its process gone) is not taken for ready.

    Raises:
        SandboxError: Nothing was ready within ``timeout_s``.
    """
    path = Path(state_dir) / READY_FILE
    deadline = time.monotonic() + timeout_s
    while True:
        text = path.read_text() if path.is_file() else ""
        found = re.search(r"\(pid (\d+)\)", text.partition("\n")[0])
        if found and text.endswith(READY_LINE + "\n") and _running(int(found.group(1))):
            return text
        if time.monotonic() >= deadline:
            raise SandboxError(
                f"no sandbox serving {state_dir} became ready within {timeout_s:g} s; start "
                f"finsync sandbox serve --state {state_dir} (or give --timeout more seconds)"
            )
        time.sleep(0.1)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serve(
    state_dir: Path,
    *,
    host: str,
    ports: Sequence[int],
    spec: CompanySpec | None,
    faults: bool = False,
    tls: bool = False,
    ready_file: Path | None = None,
) -> None:
    """Run the sandbox in the foreground until SIGINT or SIGTERM.

    Seeds the state from ``spec`` (or the default spec) when it is empty, then prints the
    environment block (``export`` lines) that points finsync at the simulators.

    Args:
        state_dir: State directory (created when absent).
        host: Interface to bind.
        ports: Ports in SYSTEM_ORDER (Stripe, Salesforce, NetSuite, metering, AvaTax); 0
            picks a free one; missing trailing ports are 0.
        spec: Company to generate when the state is empty.
        faults: Arm the demo's fault preset.
        tls: Serve HTTPS; the environment block then names the CA in ``REQUESTS_CA_BUNDLE``.
        ready_file: Also written with the environment block once every simulator listens
            (the block is always written to ``READY_FILE`` in the state folder, which
            ``wait_ready`` waits for); both are removed when the sandbox stops.
    """
    sandbox = Sandbox.on_ports(state_dir, host=host, ports=ports, tls=tls)
    if not sandbox.is_seeded():
        sandbox.seed(generate(spec or CompanySpec()))
    if faults:
        sandbox.arm_fault_preset()
    stopping = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _on_signal)
    ready = [sandbox.state_dir / READY_FILE, *([ready_file] if ready_file else [])]
    for path in ready:
        path.unlink(missing_ok=True)
    sandbox.start()
    try:
        block = env_block(sandbox)
        print(block, end="", flush=True)
        for path in ready:
            # Whole or not at all: a reader never sees half the variables.
            partial = path.with_name(f".{path.name}.{os.getpid()}")
            partial.write_text(block)
            os.replace(partial, path)
        while not stopping.wait(0.5):
            pass
    finally:
        for path in ready:
            path.unlink(missing_ok=True)
        sandbox.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("# finsync sandbox stopped", file=sys.stderr, flush=True)

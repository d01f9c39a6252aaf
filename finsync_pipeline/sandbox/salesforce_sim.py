"""Salesforce REST simulator: OAuth2 client credentials, SOQL with nextRecordsUrl, API usage.

Tokens live in the state file and expire after ``token_ttl_s`` (controllable, and forcibly via
``expire_sessions`` or ``POST /__sandbox/expire_sessions``) so connectors exercise their 401
INVALID_SESSION_ID re-authentication. API calls are counted per hour in a rolling 24-hour window
and reported on every response in ``Sforce-Limit-Info``; past the daily limit the org answers
403 REQUEST_LIMIT_EXCEEDED as a real org does.
"""

import base64
import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote

import simplejson

from finsync_pipeline.sandbox import soql
from finsync_pipeline.sandbox.generator import Company
from finsync_pipeline.sandbox.http_base import Faults, Request, Response, Simulator, json_response
from finsync_pipeline.sandbox.store import Store

API_DAILY_LIMIT = 15000
DEFAULT_BATCH = 2000
_VERSION_RE = re.compile(r"^/services/data/(v\d{2,3}\.\d)(/.*)?$")
_MAX_CURSORS = 200


def seed_salesforce(conn: sqlite3.Connection, company: Company) -> None:
    """Load the company's Salesforce records (inside the caller's transaction)."""
    for obj, records in company.salesforce.items():
        conn.executemany(
            "INSERT INTO sf_record (object, id, seq, body) VALUES (?, ?, ?, ?)",
            [
                (obj, rec["Id"], seq, simplejson.dumps(rec, use_decimal=True))
                for seq, rec in enumerate(records)
            ],
        )


def _errors(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    return json_response(status, [{"message": message, "errorCode": code}], headers)


class SalesforceSimulator(Simulator):
    """Token endpoint plus ``/services/data/vXX.X/`` query, queryMore, sobject retrieve, limits."""

    system = "salesforce"

    def __init__(
        self,
        faults: Faults,
        store: Store,
        *,
        client_id: str,
        client_secret: str,
        org_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(faults)
        self.store = store
        self.client_id = client_id
        self.client_secret = client_secret
        self.org_id = org_id
        self.clock = clock
        self.token_ttl_s = 7200.0
        self._cache: dict[str, list[dict[str, Any]]] = {}
        self._by_id: dict[str, tuple[str, dict[str, Any]]] = {}
        self._cache_lock = threading.Lock()
        self._cursors: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._cursor_lock = threading.Lock()
        self._batch_sizes: dict[str, int] = {}

    # admin ------------------------------------------------------------------------------------
    def expire_sessions(self) -> None:
        """Expire every issued access token: the next API call answers 401 INVALID_SESSION_ID."""
        with self.store.tx() as conn:
            conn.execute("UPDATE sf_token SET expires_at = 0")

    def admin(self, path: str, args: dict[str, Any]) -> Response:
        """``/__sandbox/expire_sessions`` and ``/__sandbox/token_ttl`` ({"seconds": N})."""
        if path == "/__sandbox/expire_sessions":
            self.expire_sessions()
            return json_response(200, {"ok": True})
        if path == "/__sandbox/token_ttl":
            self.token_ttl_s = float(args["seconds"])
            return json_response(200, {"ok": True, "token_ttl_s": self.token_ttl_s})
        return super().admin(path, args)

    def reset_cache(self) -> None:
        """Forget cached records (after seeding)."""
        with self._cache_lock:
            self._cache.clear()
            self._by_id.clear()

    # envelope ---------------------------------------------------------------------------------
    def fault_response(self, status: int) -> Response:
        """Salesforce's envelope: org limit as 403 REQUEST_LIMIT_EXCEEDED, 503 unavailable."""
        if status == 403:
            return _errors(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        if status == 429:
            return _errors(429, "REQUEST_LIMIT_EXCEEDED", "ConcurrentPerOrgLongTxn Limit exceeded.")
        if status == 503:
            return _errors(503, "SERVER_UNAVAILABLE", "Server is unavailable, try again later.")
        if status >= 500:
            return _errors(status, "UNKNOWN_EXCEPTION", "An unexpected error occurred.")
        return _errors(status, "INVALID_REQUEST", f"Injected error {status}.")

    def handle(self, req: Request) -> Response:
        """Serve the token endpoint or a REST API call."""
        if req.path == "/services/oauth2/token":
            return self._token(req)
        if req.path.rstrip("/") == "/services/data":
            return json_response(
                200, [{"label": "Spring '24", "url": "/services/data/v60.0", "version": "60.0"}]
            )
        match = _VERSION_RE.match(req.path)
        if match is None:
            return _errors(404, "NOT_FOUND", "The requested resource does not exist")
        version, rest = match.group(1), match.group(2) or "/"
        auth = req.header("Authorization") or ""
        token = auth[len("Bearer ") :].strip() if auth.startswith("Bearer ") else ""
        if not token or not self._token_valid(token):
            return _errors(401, "INVALID_SESSION_ID", "Session expired or invalid")
        used = self._count_call()
        limit_header = {"Sforce-Limit-Info": f"api-usage={used}/{API_DAILY_LIMIT}"}
        if used > API_DAILY_LIMIT:
            return _errors(
                403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.", limit_header
            )
        try:
            resp = self._api(req, version, rest)
        except soql.SoqlError as e:
            resp = _errors(400, e.code, e.message)
        resp.headers.update(limit_header)
        return resp

    # auth -------------------------------------------------------------------------------------
    def _token(self, req: Request) -> Response:
        if req.method != "POST":
            return json_response(
                400, {"error": "invalid_request", "error_description": "must use HTTP POST"}
            )
        form = dict(parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True))
        client_id = form.get("client_id", "")
        client_secret = form.get("client_secret", "")
        auth = req.header("Authorization") or ""
        if auth.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                client_id, client_secret = unquote(user), unquote(password)
            except (ValueError, UnicodeDecodeError):
                client_id = client_secret = ""
        if form.get("grant_type") != "client_credentials":
            return json_response(
                400,
                {
                    "error": "unsupported_grant_type",
                    "error_description": "grant type not supported",
                },
            )
        if not (
            hmac.compare_digest(client_id.encode(), self.client_id.encode())
            and hmac.compare_digest(client_secret.encode(), self.client_secret.encode())
        ):
            return json_response(
                400, {"error": "invalid_client", "error_description": "invalid client credentials"}
            )
        now = self.clock()
        token = f"{self.org_id}!" + secrets.token_urlsafe(72)
        with self.store.tx() as conn:
            conn.execute("DELETE FROM sf_token WHERE expires_at < ?", (now - 86400,))
            conn.execute(
                "INSERT INTO sf_token (token, expires_at) VALUES (?, ?)",
                (token, now + self.token_ttl_s),
            )
        issued_at = str(int(now * 1000))
        identity = f"{req.base_url}/id/{self.org_id}/005000000000001AAA"
        signature = base64.b64encode(
            hmac.new(
                self.client_secret.encode(), (identity + issued_at).encode(), hashlib.sha256
            ).digest()
        ).decode()
        return json_response(
            200,
            {
                "access_token": token,
                "instance_url": req.base_url,
                "id": identity,
                "token_type": "Bearer",
                "issued_at": issued_at,
                "signature": signature,
                "scope": "api",
            },
        )

    def _token_valid(self, token: str) -> bool:
        row = self.store.one("SELECT expires_at FROM sf_token WHERE token = ?", (token,))
        return row is not None and float(row["expires_at"]) > self.clock()

    def _count_call(self) -> int:
        hour = int(self.clock() // 3600)
        with self.store.tx() as conn:
            conn.execute(
                "INSERT INTO sf_usage (hour, n) VALUES (?, 1) "
                "ON CONFLICT (hour) DO UPDATE SET n = n + 1",
                (hour,),
            )
            conn.execute("DELETE FROM sf_usage WHERE hour <= ?", (hour - 24,))
            row = conn.execute(
                "SELECT SUM(n) FROM sf_usage WHERE hour > ?", (hour - 24,)
            ).fetchone()
        return int(row[0])

    # API --------------------------------------------------------------------------------------
    def _records(self, obj: str) -> list[dict[str, Any]]:
        with self._cache_lock:
            if obj not in self._cache:
                rows = self.store.all(
                    "SELECT body FROM sf_record WHERE object = ? ORDER BY seq", (obj,)
                )
                records = [simplejson.loads(r["body"], use_decimal=True) for r in rows]
                self._cache[obj] = records
                for rec in records:
                    self._by_id[rec["Id"]] = (obj, rec)
            return self._cache[obj]

    def _api(self, req: Request, version: str, rest: str) -> Response:
        if req.method != "GET":
            return _errors(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{req.method}' not allowed.")
        if rest in ("/query", "/query/", "/queryAll", "/queryAll/"):
            params = dict(req.params())
            if "q" not in params:
                return _errors(400, "MALFORMED_QUERY", "A query string has to be specified")
            return self._query(req, version, params["q"])
        if rest.startswith(("/query/", "/queryAll/")):
            return self._query_more(version, rest.rsplit("/", 1)[1])
        if rest.rstrip("/") == "/limits":
            used = self._count_call() - 1
            return json_response(
                200,
                {"DailyApiRequests": {"Max": API_DAILY_LIMIT, "Remaining": API_DAILY_LIMIT - used}},
            )
        parts = [p for p in rest.split("/") if p]
        if len(parts) == 3 and parts[0] == "sobjects" and parts[1] in soql.SCHEMA:
            return self._retrieve(version, parts[1], parts[2])
        return _errors(404, "NOT_FOUND", "The requested resource does not exist")

    def _render(self, obj: str, version: str, row: dict[str, Any], rid: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "attributes": {"type": obj, "url": f"/services/data/{version}/sobjects/{obj}/{rid}"}
        }
        out.update(row)
        return out

    def _query(self, req: Request, version: str, text: str) -> Response:
        query = soql.parse(text)
        matched = soql.execute(query, self._records(query.obj))
        rendered = [
            self._render(query.obj, version, {f: rec.get(f) for f in query.fields}, rec["Id"])
            for rec in matched
        ]
        batch = DEFAULT_BATCH
        options = req.header("Sforce-Query-Options") or ""
        match = re.search(r"batchSize\s*=\s*(\d+)", options)
        if match:
            batch = min(DEFAULT_BATCH, max(200, int(match.group(1))))
        return self._page(version, rendered, 0, batch, None)

    def _page(
        self,
        version: str,
        rendered: list[dict[str, Any]],
        start: int,
        batch: int,
        locator: str | None,
    ) -> Response:
        chunk = rendered[start : start + batch]
        done = start + batch >= len(rendered)
        body: dict[str, Any] = {"totalSize": len(rendered), "done": done}
        if not done:
            if locator is None:
                locator = "01g" + secrets.token_hex(8)[:15].upper()
                with self._cursor_lock:
                    self._cursors[locator] = rendered
                    self._batch_sizes[locator] = batch
                    while len(self._cursors) > _MAX_CURSORS:
                        old, _ = self._cursors.popitem(last=False)
                        self._batch_sizes.pop(old, None)
            body["nextRecordsUrl"] = f"/services/data/{version}/query/{locator}-{start + batch}"
        body["records"] = chunk
        return json_response(200, body)

    def _query_more(self, version: str, token: str) -> Response:
        locator, _, offset = token.rpartition("-")
        with self._cursor_lock:
            rendered = self._cursors.get(locator)
            batch = self._batch_sizes.get(locator, DEFAULT_BATCH)
        if rendered is None or not offset.isdigit():
            return _errors(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return self._page(version, rendered, int(offset), batch, locator)

    def _retrieve(self, version: str, obj: str, rid: str) -> Response:
        self._records(obj)
        with self._cache_lock:
            hit = self._by_id.get(rid)
            if hit is None and len(rid) == 15:
                hit = next((v for k, v in self._by_id.items() if k[:15] == rid), None)
        if hit is None or hit[0] != obj:
            return _errors(404, "NOT_FOUND", "The requested resource does not exist")
        return json_response(200, self._render(obj, version, dict(hit[1]), hit[1]["Id"]))

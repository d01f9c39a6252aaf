"""Salesforce REST simulator: OAuth2, SOQL with nextRecordsUrl, upsert by external id, update by
Id and in sObject Collections, API usage.

Two OAuth2 flows, as a connected app offers them: client credentials, and the JWT bearer flow
(an RS256 assertion signed with the private key whose certificate the connected app holds).
The key pair is made once per state directory (``jwt_credentials``); the simulator itself keeps
only the certificate and the pre-authorized username.

Tokens live in the state file and expire after ``token_ttl_s`` (controllable, and forcibly via
``expire_sessions`` or ``POST /__sandbox/expire_sessions``) so connectors exercise their 401
INVALID_SESSION_ID re-authentication. API calls are counted per hour in a rolling 24-hour window
and reported on every response in ``Sforce-Limit-Info``; past the daily limit (``daily_limit``,
kept in the state, settable through ``POST /__sandbox/api_limit``) the org answers 403
REQUEST_LIMIT_EXCEEDED as a real org does.

Account and Opportunity carry the custom fields finsync writes back (``Finsync_Invoice_Status__c``,
``Finsync_Paid__c``, ``Finsync_ERP_Invoice_Id__c``, and on Opportunity
``Finsync_Stripe_Invoice_Id__c``) and the external id ``Finsync_External_Id__c`` (External ID, not
Unique: two records may share a value, and an upsert on it then answers 300). An upsert that
updates answers as the URL's API version does: 200 with ``{id, success, errors, created: false}``
from v46.0, 204 without a body before. An update by Id (``PATCH /sobjects/{SObject}/{Id}``)
answers 204; ``PATCH /composite/sobjects`` updates up to 200 records in one call and answers one
SaveResult per record, in order (``allOrNone`` decides whether one refusal rolls back the rest).
"""

import base64
import datetime
import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, unquote

import jwt
import simplejson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from finsync_pipeline.sandbox import soql
from finsync_pipeline.sandbox.generator import Company, salesforce_id
from finsync_pipeline.sandbox.http_base import Faults, Request, Response, Simulator, json_response
from finsync_pipeline.sandbox.store import Store

API_DAILY_LIMIT = 15000
DEFAULT_BATCH = 2000
_VERSION_RE = re.compile(r"^/services/data/(v\d{2,3}\.\d)(/.*)?$")
_MAX_CURSORS = 200
# The managed package of Salesforce CPQ: its objects and fields carry this namespace prefix.
CPQ_NAMESPACE = "SBQQ__"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Salesforce wants the assertion's exp within 3 minutes; a few seconds of clock skew are allowed.
JWT_MAX_LIFETIME_S = 180
JWT_CLOCK_SKEW_S = 5
# The assertion's aud names the login server, never the My Domain URL the token request is
# posted to: production orgs want login.salesforce.com, sandbox orgs test.salesforce.com (an
# Experience Cloud site's URL is accepted too).
PRODUCTION_AUDIENCE = "https://login.salesforce.com"
SANDBOX_AUDIENCE = "https://test.salesforce.com"
# sObject -> its external id fields (flagged External ID in setup; not Unique).
# ``Id`` works as an external id in an upsert (API 37+); it can only update, never create.
EXTERNAL_ID_FIELDS: dict[str, frozenset[str]] = {
    "Account": frozenset({"Finsync_External_Id__c", "Id"}),
    "Opportunity": frozenset({"Finsync_External_Id__c", "Id"}),
}
_REQUIRED_ON_CREATE: dict[str, tuple[str, ...]] = {
    "Account": ("Name",),
    "Opportunity": ("Name", "StageName", "CloseDate"),
}
_ID_PREFIX = {"Account": "001", "Opportunity": "006"}
_READ_ONLY = frozenset({"Id", "CreatedDate", "LastModifiedDate", "SystemModstamp"})
# From API v46.0 an upsert answers with a body on update too, and says whether it created.
UPSERT_RESULT_SINCE = 46
_MAX_TEXT = 255
# sObject Collections take up to 200 records a call.
COLLECTION_LIMIT = 200
_ROLLED_BACK = {
    "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "message": "Record rolled back because not all records were valid and the request was "
    "using AllOrNone header",
    "fields": [],
}


def jwt_credentials(store: Store, org_id: str) -> tuple[str, str]:
    """(username, private key PEM) of the JWT bearer flow for this state directory.

    Made once and kept in the state: an RSA 2048 key pair, the self-signed certificate the
    connected app holds, and the pre-authorized integration user. A deployment sets the two
    values as ``SALESFORCE_USERNAME`` and ``SALESFORCE_PRIVATE_KEY``.
    """
    stored = _jwt_material(store, org_id)
    return stored["username"], stored["private_key_pem"]


def _jwt_material(store: Store, org_id: str) -> dict[str, str]:
    raw = store.meta_get("salesforce_jwt")
    if raw is not None:
        material: dict[str, str] = simplejson.loads(raw)
        return material
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "finsync sandbox connected app")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    material = {
        "username": f"integration@{org_id.lower()}.finsync.sandbox",
        "private_key_pem": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        "certificate_pem": cert.public_bytes(serialization.Encoding.PEM).decode(),
    }
    store.meta_set("salesforce_jwt", simplejson.dumps(material))
    return material


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


def _oauth_error(error: str, description: str) -> Response:
    return json_response(400, {"error": error, "error_description": description})


def _field_error(code: str, message: str, fields: list[str]) -> dict[str, Any]:
    return {"message": message, "errorCode": code, "fields": fields}


def _not_allowed(method: str, allowed: str) -> Response:
    return _errors(
        405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed. Allowed are {allowed}"
    )


def _save_error(problem: dict[str, Any]) -> dict[str, Any]:
    """A field error as an sObject Collections SaveResult error (``statusCode``, not
    ``errorCode``)."""
    return {
        "statusCode": problem["errorCode"],
        "message": problem["message"],
        "fields": problem.get("fields", []),
    }


def _looks_like_id(obj: str, rid: Any) -> bool:
    prefix = _ID_PREFIX.get(obj)
    return (
        isinstance(rid, str)
        and len(rid) in (15, 18)
        and rid.isalnum()
        and (prefix is None or rid.startswith(prefix))
    )


def _record_type(record: Any) -> str | None:
    """The ``attributes.type`` a collection member must carry, or None."""
    if not isinstance(record, dict):
        return None
    attributes = record.get("attributes")
    kind = attributes.get("type") if isinstance(attributes, dict) else None
    return kind if isinstance(kind, str) and kind else None


def _parse_object(raw: bytes) -> dict[str, Any] | Response:
    """The JSON object of a request body, or Salesforce's 400 for anything else."""
    try:
        body = simplejson.loads(raw or b"{}", use_decimal=True)
    except ValueError:
        return _errors(400, "JSON_PARSER_ERROR", "The request body is not valid JSON")
    if not isinstance(body, dict):
        return _errors(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
    return body


def _type_error(obj: str, name: str, value: Any) -> dict[str, Any] | None:
    """Salesforce's complaint about ``value`` for field ``name``, or None when it fits."""
    ftype = soql.SCHEMA[obj][name]
    if value is None:
        return None
    ok = {
        "boolean": isinstance(value, bool),
        "number": isinstance(value, int | Decimal) and not isinstance(value, bool),
        "string": isinstance(value, str),
        "id": isinstance(value, str) and len(value) in (15, 18),
        "date": isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) is not None,
        "datetime": isinstance(value, str),
    }[ftype]
    if not ok:
        return _field_error(
            "JSON_PARSER_ERROR",
            f"Cannot deserialize instance of {ftype} from {type(value).__name__} value "
            f"{str(value)[:40]!r} for field {name}",
            [name],
        )
    if ftype == "string" and len(value) > _MAX_TEXT:
        return _field_error(
            "STRING_TOO_LONG", f"{name}: data value too large (max length={_MAX_TEXT})", [name]
        )
    return None


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
        # An org without the Salesforce CPQ package has no SBQQ objects; set False to be one.
        self.cpq_installed = True
        # A sandbox org (test.salesforce.com) rather than a production one; the URLs of its
        # Experience Cloud sites, which a JWT assertion may name as audience too.
        self.is_sandbox_org = False
        self.site_urls: list[str] = []
        self._cache: dict[str, list[dict[str, Any]]] = {}
        self._by_id: dict[str, tuple[str, dict[str, Any]]] = {}
        self._cache_lock = threading.Lock()
        self._cursors: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._cursor_lock = threading.Lock()
        self._batch_sizes: dict[str, int] = {}
        self._write_lock = threading.Lock()
        material = _jwt_material(store, org_id)
        # As a connected app: the certificate and the pre-authorized user, never the key.
        self.jwt_username = material["username"]
        self._jwt_public_key = x509.load_pem_x509_certificate(
            material["certificate_pem"].encode()
        ).public_key()
        stored_limit = store.meta_get("salesforce_daily_limit")
        self.daily_limit = int(stored_limit) if stored_limit is not None else API_DAILY_LIMIT

    # admin ------------------------------------------------------------------------------------
    def expire_sessions(self) -> None:
        """Expire every issued access token: the next API call answers 401 INVALID_SESSION_ID."""
        with self.store.tx() as conn:
            conn.execute("UPDATE sf_token SET expires_at = 0")

    def set_daily_limit(self, limit: int) -> None:
        """Set the org's daily API request limit (kept in the state, so it survives restarts)."""
        if int(limit) < 1:
            raise ValueError(f"the daily API limit must be >= 1, got {limit}")
        self.daily_limit = int(limit)
        self.store.meta_set("salesforce_daily_limit", str(self.daily_limit))

    def set_api_usage(self, used: int) -> None:
        """Forget the calls counted so far and count ``used`` in the current hour instead."""
        hour = int(self.clock() // 3600)
        with self.store.tx() as conn:
            conn.execute("DELETE FROM sf_usage")
            if int(used) > 0:
                conn.execute("INSERT INTO sf_usage (hour, n) VALUES (?, ?)", (hour, int(used)))

    def admin(self, path: str, args: dict[str, Any]) -> Response:
        """``/__sandbox/expire_sessions``, ``/__sandbox/token_ttl`` ({"seconds": N}),
        ``/__sandbox/api_limit`` ({"daily": N}), ``/__sandbox/api_usage`` ({"used": N}) and
        ``/__sandbox/org`` ({"is_sandbox": bool, "site_urls": [...]}: the JWT audiences)."""
        if path == "/__sandbox/expire_sessions":
            self.expire_sessions()
            return json_response(200, {"ok": True})
        if path == "/__sandbox/token_ttl":
            self.token_ttl_s = float(args["seconds"])
            return json_response(200, {"ok": True, "token_ttl_s": self.token_ttl_s})
        if path == "/__sandbox/api_limit":
            self.set_daily_limit(int(args["daily"]))
            return json_response(200, {"ok": True, "daily": self.daily_limit})
        if path == "/__sandbox/api_usage":
            self.set_api_usage(int(args["used"]))
            return json_response(200, {"ok": True, "used": int(args["used"])})
        if path == "/__sandbox/org":
            self.is_sandbox_org = bool(args.get("is_sandbox", self.is_sandbox_org))
            self.site_urls = [str(u) for u in args.get("site_urls", self.site_urls)]
            return json_response(200, {"ok": True, "jwt_audiences": sorted(self.jwt_audiences)})
        return super().admin(path, args)

    @property
    def jwt_audiences(self) -> frozenset[str]:
        """The audiences a JWT bearer assertion may name for this org."""
        login = SANDBOX_AUDIENCE if self.is_sandbox_org else PRODUCTION_AUDIENCE
        return frozenset({login, *(u.rstrip("/") for u in self.site_urls)})

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
        limit = self.daily_limit
        limit_header = {"Sforce-Limit-Info": f"api-usage={used}/{limit}"}
        if used > limit:
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
        if form.get("grant_type") == JWT_BEARER_GRANT:
            return self._jwt_bearer(req, form.get("assertion", ""))
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
        return self._issue(req, signed=True)

    def _jwt_bearer(self, req: Request, assertion: str) -> Response:
        """Check an RS256 assertion as Salesforce does: signature, issuer, audience, exp, user."""
        try:
            header = jwt.get_unverified_header(assertion)
            if header.get("alg") != "RS256":
                return _oauth_error("invalid_grant", "invalid assertion: alg must be RS256")
            claims = jwt.decode(
                assertion,
                self._jwt_public_key,  # type: ignore[arg-type]
                algorithms=["RS256"],
                options={"verify_exp": False, "verify_aud": False, "verify_iat": False},
            )
        except jwt.InvalidSignatureError:
            return _oauth_error("invalid_grant", "invalid assertion: signature does not verify")
        except jwt.InvalidTokenError:
            return _oauth_error("invalid_grant", "invalid assertion")
        if not hmac.compare_digest(str(claims.get("iss", "")).encode(), self.client_id.encode()):
            return _oauth_error("invalid_client_id", "client identifier invalid")
        audience = claims.get("aud")
        # Salesforce wants one string (an array is refused), compared as a URL.
        if not isinstance(audience, str) or audience.rstrip("/") not in self.jwt_audiences:
            return _oauth_error("invalid_grant", "audience is invalid")
        exp = claims.get("exp")
        now = self.clock()
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            return _oauth_error("invalid_grant", "invalid assertion: exp is required")
        if exp <= now:
            return _oauth_error(
                "invalid_grant", "expired authorization: the assertion's exp passed"
            )
        if exp > now + JWT_MAX_LIFETIME_S + JWT_CLOCK_SKEW_S:
            return _oauth_error(
                "invalid_grant", "invalid assertion: exp is more than 3 minutes away"
            )
        # The legacy prn claim wins over sub when both are present.
        user = claims.get("prn", claims.get("sub"))
        if user != self.jwt_username:
            return _oauth_error("invalid_grant", "user hasn't approved this consumer")
        return self._issue(req, signed=False)

    def _issue(self, req: Request, *, signed: bool) -> Response:
        now = self.clock()
        token = f"{self.org_id}!" + secrets.token_urlsafe(72)
        with self.store.tx() as conn:
            conn.execute("DELETE FROM sf_token WHERE expires_at < ?", (now - 86400,))
            conn.execute(
                "INSERT INTO sf_token (token, expires_at) VALUES (?, ?)",
                (token, now + self.token_ttl_s),
            )
        identity = f"{req.base_url}/id/{self.org_id}/005000000000001AAA"
        body: dict[str, Any] = {
            "access_token": token,
            "instance_url": req.base_url,
            "id": identity,
            "token_type": "Bearer",
            "scope": "api",
        }
        if signed:
            # Client credentials answers carry issued_at and an HMAC signature; JWT bearer not.
            issued_at = str(int(now * 1000))
            body["issued_at"] = issued_at
            body["signature"] = base64.b64encode(
                hmac.new(
                    self.client_secret.encode(), (identity + issued_at).encode(), hashlib.sha256
                ).digest()
            ).decode()
        return json_response(200, body)

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
        parts = [p for p in rest.split("/") if p]
        if len(parts) == 4 and parts[0] == "sobjects":
            return self._by_external_id(req, version, parts[1], parts[2], unquote(parts[3]))
        if parts == ["composite", "sobjects"]:
            if req.method != "PATCH":
                return _not_allowed(req.method, "PATCH")
            return self._update_collection(req.body)
        if len(parts) == 3 and parts[0] == "sobjects" and req.method == "PATCH":
            return self._update_by_id(parts[1], parts[2], req.body)
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
                {
                    "DailyApiRequests": {
                        "Max": self.daily_limit,
                        "Remaining": self.daily_limit - used,
                    }
                },
            )
        if len(parts) == 3 and parts[0] == "sobjects" and parts[1] in soql.SCHEMA:
            return self._retrieve(version, parts[1], parts[2])
        return _errors(404, "NOT_FOUND", "The requested resource does not exist")

    def _render(self, obj: str, version: str, row: dict[str, Any], rid: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "attributes": {"type": obj, "url": f"/services/data/{version}/sobjects/{obj}/{rid}"}
        }
        out.update(row)
        return out

    @staticmethod
    def _value(obj: str, rec: dict[str, Any], name: str) -> Any:
        # A checkbox is never null in Salesforce: unset means false.
        if soql.SCHEMA[obj].get(name) == "boolean":
            return bool(rec.get(name))
        return rec.get(name)

    def _query(self, req: Request, version: str, text: str) -> Response:
        query = soql.parse(text)
        if not self.cpq_installed and query.obj.startswith(CPQ_NAMESPACE):
            raise soql.SoqlError(
                "INVALID_TYPE",
                f"sObject type '{query.obj}' is not supported. If you are attempting to use "
                "a custom object, be sure to append the '__c' after the entity name.",
            )
        matched = soql.execute(query, self._records(query.obj))
        rendered = [
            self._render(
                query.obj,
                version,
                {f: self._value(query.obj, rec, f) for f in query.fields},
                rec["Id"],
            )
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
        record = self._find(obj, rid)
        if record is None:
            return _errors(404, "NOT_FOUND", "The requested resource does not exist")
        return json_response(200, self._render(obj, version, dict(record), record["Id"]))

    # upsert by external id --------------------------------------------------------------------
    def _by_external_id(
        self, req: Request, version: str, obj: str, field_name: str, value: str
    ) -> Response:
        """``GET`` or ``PATCH`` (upsert) ``/sobjects/{SObject}/{ExtIdField}/{value}``."""
        if obj not in soql.SCHEMA:
            return _errors(404, "NOT_FOUND", "The requested resource does not exist")
        if field_name not in EXTERNAL_ID_FIELDS.get(obj, frozenset()):
            return _errors(
                404,
                "NOT_FOUND",
                f"Provided external ID field does not exist or is not accessible: {field_name}",
            )
        if req.method not in ("GET", "PATCH"):
            return _errors(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{req.method}' not allowed.")
        with self._write_lock:
            matches = [r for r in self._records(obj) if r.get(field_name) == value]
            if len(matches) > 1:
                return json_response(
                    300,
                    [f"/services/data/{version}/sobjects/{obj}/{r['Id']}" for r in matches],
                )
            if req.method == "GET":
                if not matches:
                    return _errors(404, "NOT_FOUND", "The requested resource does not exist")
                rec = matches[0]
                full = {name: self._value(obj, rec, name) for name in soql.SCHEMA[obj]}
                return json_response(200, self._render(obj, version, full, rec["Id"]))
            if field_name == "Id" and not matches:
                return _errors(404, "NOT_FOUND", f"Provided external ID field Id {value} not found")
            return self._upsert(
                obj, field_name, value, req.body, matches[0] if matches else None, version=version
            )

    def _upsert(
        self,
        obj: str,
        field_name: str,
        value: str,
        raw: bytes,
        existing: dict[str, Any] | None,
        *,
        version: str,
    ) -> Response:
        body = _parse_object(raw)
        if isinstance(body, Response):
            return body
        problems = self._problems(obj, body, field_name, value)
        fields = {k: v for k, v in body.items() if k != "attributes"}
        if existing is None:
            missing = [f for f in _REQUIRED_ON_CREATE.get(obj, ()) if fields.get(f) in (None, "")]
            if missing:
                problems.append(
                    _field_error(
                        "REQUIRED_FIELD_MISSING",
                        f"Required fields are missing: [{', '.join(missing)}]",
                        missing,
                    )
                )
        if problems:
            return json_response(400, problems)
        stamp = self._stamp()
        with_result = int(version[1:].partition(".")[0]) >= UPSERT_RESULT_SINCE
        if existing is not None:
            with self.store.tx() as conn:
                self._apply(conn, obj, existing, fields, stamp)
            if not with_result:
                return Response(204)
            return json_response(
                200, {"id": existing["Id"], "success": True, "errors": [], "created": False}
            )
        rid = self._new_id(obj)
        record = {
            "Id": rid,
            **fields,
            field_name: value,
            "CreatedDate": stamp,
            "LastModifiedDate": stamp,
            "SystemModstamp": stamp,
        }
        with self.store.tx() as conn:
            row = conn.execute(
                "SELECT COALESCE(MAX(seq), -1) + 1 FROM sf_record WHERE object = ?", (obj,)
            ).fetchone()
            conn.execute(
                "INSERT INTO sf_record (object, id, seq, body) VALUES (?, ?, ?, ?)",
                (obj, rid, int(row[0]), simplejson.dumps(record, use_decimal=True)),
            )
        with self._cache_lock:
            self._cache[obj].append(record)
            self._by_id[rid] = (obj, record)
        created: dict[str, Any] = {"id": rid, "success": True, "errors": []}
        if with_result:
            created["created"] = True
        return json_response(201, created)

    # update by Id and sObject Collections ------------------------------------------------------
    def _update_by_id(self, obj: str, rid: str, raw: bytes) -> Response:
        """``PATCH /sobjects/{SObject}/{Id}``: 204 without a body, as Salesforce answers."""
        if obj not in soql.SCHEMA:
            return _errors(404, "NOT_FOUND", "The requested resource does not exist")
        body = _parse_object(raw)
        if isinstance(body, Response):
            return body
        if not _looks_like_id(obj, rid):
            return _errors(400, "MALFORMED_ID", f"{obj} ID: id value of incorrect type: {rid}")
        with self._write_lock:
            existing = self._find(obj, rid)
            if existing is None:
                return _errors(404, "NOT_FOUND", "The requested resource does not exist")
            problems = self._problems(obj, body, None, None)
            if problems:
                return json_response(400, problems)
            with self.store.tx() as conn:
                self._apply(conn, obj, existing, self._fields(body), self._stamp())
        return Response(204)

    def _update_collection(self, raw: bytes) -> Response:
        """``PATCH /composite/sobjects``: up to 200 records by id, one SaveResult each, in order.

        With ``allOrNone`` false each valid record is saved whatever the others do; with true,
        one refusal rolls every record back (``ALL_OR_NONE_OPERATION_ROLLED_BACK``).
        """
        body = _parse_object(raw)
        if isinstance(body, Response):
            return body
        records = body.get("records")
        all_or_none = body.get("allOrNone", False)
        if not isinstance(records, list) or not isinstance(all_or_none, bool):
            return _errors(
                400, "JSON_PARSER_ERROR", "records must be a list and allOrNone a boolean"
            )
        if len(records) > COLLECTION_LIMIT:
            return _errors(
                400,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
            )
        typed = [_record_type(r) for r in records]
        if any(t is None for t in typed):
            return _errors(400, "INVALID_TYPE", "Must send a concrete entity type.")
        with self._write_lock:
            checked = [self._check_member(str(t), r) for t, r in zip(typed, records, strict=True)]
            refused = any(errors for _, _, errors in checked)
            results: list[dict[str, Any]] = []
            stamp = self._stamp()
            with self.store.tx() as conn:
                for obj, (existing, fields, errors) in zip(typed, checked, strict=True):
                    if errors:
                        results.append({"success": False, "errors": errors})
                    elif all_or_none and refused:
                        results.append({"success": False, "errors": [_ROLLED_BACK]})
                    else:
                        assert existing is not None
                        self._apply(conn, str(obj), existing, fields, stamp)
                        results.append({"id": existing["Id"], "success": True, "errors": []})
        return json_response(200, results)

    def _check_member(
        self, obj: str, record: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, dict[str, Any], list[dict[str, Any]]]:
        """(the record it updates, its fields, its SaveResult errors) of a collection member."""
        rid = record.get("id", record.get("Id"))
        if obj not in soql.SCHEMA:
            return None, {}, [_save_error(_field_error("INVALID_TYPE", f"No such type {obj}", []))]
        if rid is None:
            error = _field_error("MISSING_ARGUMENT", "Id not specified in an update call", [])
            return None, {}, [_save_error(error)]
        if not _looks_like_id(obj, rid):
            error = _field_error(
                "MALFORMED_ID", f"{obj} ID: id value of incorrect type: {rid}", ["Id"]
            )
            return None, {}, [_save_error(error)]
        existing = self._find(obj, str(rid))
        if existing is None:
            return (
                None,
                {},
                [_save_error(_field_error("ENTITY_IS_DELETED", "entity is deleted", []))],
            )
        body = {k: v for k, v in record.items() if k not in ("id", "Id")}
        problems = self._problems(obj, body, None, None)
        return existing, self._fields(body), [_save_error(p) for p in problems]

    # writing ----------------------------------------------------------------------------------
    def _find(self, obj: str, rid: str) -> dict[str, Any] | None:
        self._records(obj)
        with self._cache_lock:
            hit = self._by_id.get(rid)
            if hit is None and len(rid) == 15:
                hit = next((v for k, v in self._by_id.items() if k[:15] == rid), None)
        return hit[1] if hit is not None and hit[0] == obj else None

    @staticmethod
    def _fields(body: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in body.items() if k != "attributes"}

    def _stamp(self) -> str:
        return datetime.datetime.fromtimestamp(self.clock(), datetime.UTC).strftime(
            "%Y-%m-%dT%H:%M:%S.000+0000"
        )

    @staticmethod
    def _apply(
        conn: sqlite3.Connection,
        obj: str,
        existing: dict[str, Any],
        fields: dict[str, Any],
        stamp: str,
    ) -> None:
        existing.update(fields)
        existing["LastModifiedDate"] = existing["SystemModstamp"] = stamp
        conn.execute(
            "UPDATE sf_record SET body = ? WHERE object = ? AND id = ?",
            (simplejson.dumps(existing, use_decimal=True), obj, existing["Id"]),
        )

    def _problems(
        self, obj: str, body: dict[str, Any], field_name: str | None, value: str | None
    ) -> list[dict[str, Any]]:
        """Salesforce's complaints about the fields of a write (unknown, read-only, mistyped,
        an external id differing from the URL's)."""
        problems: list[dict[str, Any]] = []
        for name, field_value in body.items():
            if name == "attributes":
                continue
            if name not in soql.SCHEMA[obj]:
                problems.append(
                    _field_error(
                        "INVALID_FIELD", f"No such column '{name}' on sobject of type {obj}", [name]
                    )
                )
            elif name in _READ_ONLY:
                problems.append(
                    _field_error(
                        "INVALID_FIELD_FOR_INSERT_UPDATE",
                        f"Unable to create/update fields: {name}. Please check the security "
                        "settings of this field and verify that it is read/write.",
                        [name],
                    )
                )
            elif name == field_name and field_value != value:
                problems.append(
                    _field_error(
                        "INVALID_FIELD",
                        f"The external id {name} in the body differs from the one in the URL",
                        [name],
                    )
                )
            else:
                problem = _type_error(obj, name, field_value)
                if problem is not None:
                    problems.append(problem)
        return problems

    def _new_id(self, obj: str) -> str:
        prefix = _ID_PREFIX[obj]
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
        body = prefix + "5h" + "".join(secrets.choice(alphabet) for _ in range(10))
        return salesforce_id(prefix, body)

"""OAuth 1.0a HMAC-SHA256 signing for NetSuite token-based authentication (TBA).

NetSuite's variant of RFC 5849: HMAC-SHA256 only, ``realm`` (the account id, upper-case with
``_``) is sent in the header but not signed, query-string parameters are signed, JSON bodies are
not.
"""

import base64
import hashlib
import hmac
import secrets
import time
from urllib.parse import parse_qsl, quote, urlsplit

import requests

SIGNATURE_METHOD = "HMAC-SHA256"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def pct(value: str) -> str:
    """Percent-encode per RFC 3986 (RFC 5849 section 3.6): only unreserved characters stay."""
    return quote(value, safe="~")


def make_nonce(length: int = 32) -> str:
    """A fresh random alphanumeric nonce (hex digits: one read of the OS's randomness, where
    a choice per character cost more than the rest of the request's signing)."""
    return secrets.token_hex((length + 1) // 2)[:length]


def base_string_uri(url: str) -> str:
    """The signed base URI: scheme and host lower-case, default port dropped, no query."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{parts.port}"
    return f"{scheme}://{host}{parts.path or '/'}"


def signature_base_string(method: str, url: str, oauth_params: dict[str, str]) -> str:
    """``METHOD&pct(base URI)&pct(normalized parameters)`` with the query params signed."""
    params = [(pct(k), pct(v)) for k, v in oauth_params.items()]
    query = urlsplit(url).query
    params += [(pct(k), pct(v)) for k, v in parse_qsl(query, keep_blank_values=True)]
    normalized = "&".join(f"{k}={v}" for k, v in sorted(params))
    return "&".join([method.upper(), pct(base_string_uri(url)), pct(normalized)])


def oauth1_authorization(
    method: str,
    url: str,
    *,
    realm: str,
    consumer_key: str,
    consumer_secret: str,
    token_id: str,
    token_secret: str,
    nonce: str | None = None,
    timestamp: int | None = None,
) -> str:
    """The ``Authorization`` header value for one NetSuite TBA request.

    Args:
        method: HTTP method.
        url: The full request URL, query string included (its parameters are signed).
        realm: The account id as NetSuite spells it in the realm (``1234567_SB1``).
        consumer_key: The integration record's consumer key.
        consumer_secret: The integration record's consumer secret.
        token_id: The access token id.
        token_secret: The access token secret.
        nonce: Fixed nonce (tests); a fresh random one otherwise.
        timestamp: Fixed Unix timestamp (tests); now otherwise.

    Returns:
        ``OAuth realm="...", oauth_consumer_key="...", ..., oauth_signature="..."``.
    """
    oauth_params = {
        "oauth_consumer_key": consumer_key,
        "oauth_token": token_id,
        "oauth_signature_method": SIGNATURE_METHOD,
        "oauth_timestamp": str(int(time.time()) if timestamp is None else timestamp),
        "oauth_nonce": make_nonce() if nonce is None else nonce,
        "oauth_version": "1.0",
    }
    base = signature_base_string(method, url, oauth_params)
    key = f"{pct(consumer_secret)}&{pct(token_secret)}"
    digest = hmac.new(key.encode(), base.encode(), hashlib.sha256).digest()
    oauth_params["oauth_signature"] = base64.b64encode(digest).decode("ascii")
    fields = [f'realm="{realm}"'] + [f'{k}="{pct(v)}"' for k, v in oauth_params.items()]
    return "OAuth " + ", ".join(fields)


class NetSuiteTBA(requests.auth.AuthBase):
    """requests auth that signs each sent request afresh (a retry gets a new nonce)."""

    def __init__(
        self,
        *,
        realm: str,
        consumer_key: str,
        consumer_secret: str,
        token_id: str,
        token_secret: str,
    ) -> None:
        self._realm = realm
        self._consumer_key = consumer_key
        self._consumer_secret = consumer_secret
        self._token_id = token_id
        self._token_secret = token_secret

    def __repr__(self) -> str:
        return f"NetSuiteTBA(realm={self._realm!r})"

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = oauth1_authorization(
            r.method or "GET",
            r.url or "",
            realm=self._realm,
            consumer_key=self._consumer_key,
            consumer_secret=self._consumer_secret,
            token_id=self._token_id,
            token_secret=self._token_secret,
        )
        return r

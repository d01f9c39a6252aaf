"""An independent OAuth 1.0a (HMAC-SHA256) signer for NetSuite TBA, for tests only.

Written from RFC 5849 and NetSuite's notes, deliberately sharing no code with the simulator.
"""

import base64
import hashlib
import hmac
import secrets
import time
from urllib.parse import parse_qsl, quote, urlsplit


def _enc(value: str) -> str:
    return quote(value, safe="~")


def sign(
    method: str,
    url: str,
    *,
    realm: str,
    consumer_key: str,
    consumer_secret: str,
    token: str,
    token_secret: str,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> str:
    """Return the Authorization header value for one request."""
    oauth = {
        "oauth_consumer_key": consumer_key,
        "oauth_token": token,
        "oauth_signature_method": "HMAC-SHA256",
        "oauth_timestamp": str(int(time.time()) if timestamp is None else timestamp),
        "oauth_nonce": nonce or secrets.token_hex(12),
        "oauth_version": "1.0",
    }
    parts = urlsplit(url)
    pairs = list(oauth.items()) + parse_qsl(parts.query, keep_blank_values=True)
    encoded = sorted((_enc(k), _enc(v)) for k, v in pairs)
    param_string = "&".join(f"{k}={v}" for k, v in encoded)
    base_url = f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path}"
    base_string = "&".join([method.upper(), _enc(base_url), _enc(param_string)])
    key = f"{_enc(consumer_secret)}&{_enc(token_secret)}"
    digest = hmac.new(key.encode(), base_string.encode(), hashlib.sha256).digest()
    oauth["oauth_signature"] = base64.b64encode(digest).decode()
    fields = [f'realm="{realm}"'] + [f'{k}="{_enc(v)}"' for k, v in oauth.items()]
    return "OAuth " + ", ".join(fields)

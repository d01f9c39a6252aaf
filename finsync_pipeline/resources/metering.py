"""Usage-metering connector (OpenMeter's CloudEvents API): batch ingestion and the event list.

Ingestion is idempotent because the service deduplicates on ``(source, id)``: a batch resent
after a timeout stores nothing twice, so ``POST /api/v1/events`` is retried like a read.
Listing follows the ``Link: <...>; rel="next"`` header: a link to another host or path is
refused, and only its query (the cursor) is used, against the configured base URL, so the API
key is only ever sent to that host.
"""

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import dagster as dg
import requests
import simplejson
from pydantic import Field

from finsync_pipeline.errors import ConfigurationError, PermanentUpstreamError
from finsync_pipeline.resources.http import (
    BODY,
    ConnectorClient,
    ErrorInfo,
    HttpClient,
    HttpOptions,
    check_base_url,
    error_json,
    origin,
    parse_json,
    shape_error,
)
from finsync_pipeline.sources import SWITCH_OFF_HINT

SYSTEM = "metering"
AUTH_MESSAGE = "the API key was rejected (HTTP 401); set METERING_API_KEY"
EVENTS_PATH = "/api/v1/events"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
MAX_PAGE_SIZE = 1000
MAX_BATCH = 1000


def parse_problem(response: requests.Response) -> ErrorInfo:
    """Title and detail of an RFC 7807 problem (``application/problem+json``)."""
    body = error_json(response)
    if not isinstance(body, dict):
        return ErrorInfo()
    return ErrorInfo(code=body.get("title"), detail=body.get("detail"))


def rfc3339(moment: dt.datetime) -> str:
    """An aware datetime as an RFC 3339 UTC timestamp with microseconds."""
    if moment.tzinfo is None:
        raise ValueError("metering: timestamps must be timezone-aware")
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class MeteringClient(ConnectorClient):
    """Sends usage events and lists ingested events page by page.

    Args:
        api_key: The API token (``Authorization: Bearer``).
        base_url: ``https://openmeter.cloud`` or a sandbox base URL.
        http_options: Timeouts and retry settings.
    """

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = "https://openmeter.cloud",
        http_options: HttpOptions | None = None,
    ) -> None:
        # A self-hosted OpenMeter lives anywhere: live mode only asks for https.
        host = urlsplit(base_url).hostname or ""
        check_base_url(SYSTEM, base_url, variable="METERING_BASE_URL", domains=(host,))
        self._base = base_url.rstrip("/")
        self.http = HttpClient.from_options(
            SYSTEM,
            http_options or HttpOptions.from_env(),
            url_variable="METERING_BASE_URL",
            base_urls=[self._base],
            secrets=[api_key],
            error_parser=parse_problem,
            auth_message=AUTH_MESSAGE,
        )
        self.http.session.headers.update(
            {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        )

    def __repr__(self) -> str:
        return f"MeteringClient(base_url={self._base!r}, requests_made={self.requests_made})"

    def ingest(self, events: Iterable[Mapping[str, Any]], *, batch_size: int = MAX_BATCH) -> int:
        """Send CloudEvents in batches; returns how many were sent.

        Safe to repeat: the service stores each ``(source, id)`` once.

        Raises:
            PermanentUpstreamError: The service rejected a batch (the detail names the field).
        """
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"metering batch_size must be 1..{MAX_BATCH}, got {batch_size}")
        sent = 0
        batch: list[Mapping[str, Any]] = []
        for event in events:
            batch.append(event)
            if len(batch) == batch_size:
                sent += self._send(batch)
                batch = []
        if batch:
            sent += self._send(batch)
        return sent

    def _send(self, batch: list[Mapping[str, Any]]) -> int:
        self.http.request(
            "POST",
            self._base + EVENTS_PATH,
            idempotent=True,
            expected=(204,),
            data=simplejson.dumps(list(batch), use_decimal=True, separators=(",", ":")),
            headers={"Content-Type": BATCH_CONTENT_TYPE},
        )
        return len(batch)

    def list_events(
        self,
        ingested_from: dt.datetime,
        ingested_to: dt.datetime | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> Iterator[dict[str, Any]]:
        """Events ingested in ``[ingested_from, ingested_to)``, oldest ingestion first.

        Each item is ``{"event": <CloudEvent>, "ingestedAt": str, "validationError"?: str}``.
        Pages are fetched lazily: a consumer that lands each page keeps one page in memory.
        """
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"metering page_size must be 1..{MAX_PAGE_SIZE}, got {page_size}")
        params: list[tuple[str, str | int]] = [
            ("ingestedAtFrom", rfc3339(ingested_from)),
            ("limit", page_size),
        ]
        if ingested_to is not None:
            params.append(("ingestedAtTo", rfc3339(ingested_to)))
        url = self._base + EVENTS_PATH
        page_params: list[tuple[str, str | int]] | None = params
        guard = self.http.page_guard(f"GET {EVENTS_PATH}", limit=page_size)
        while True:
            response = self.http.request("GET", url, idempotent=True, params=page_params)
            items = parse_json(response, SYSTEM)
            if not isinstance(items, list):
                raise shape_error(SYSTEM, f"GET {EVENTS_PATH}", BODY, "an array", items)
            link = response.links.get("next", {}).get("url")
            guard.page(len(items), more=bool(link))
            yield from items
            if not link:
                return
            url = self._next_url(link)
            guard.follow(urlsplit(url).query)
            page_params = None

    def _next_url(self, link: str) -> str:
        """The next page's URL on the configured host; only the link's query (its cursor) is
        taken, and a link to another host or path is refused."""
        here = self._base + EVENTS_PATH
        target = urljoin(here, link)
        if origin(target) != origin(here) or urlsplit(target).path != urlsplit(here).path:
            raise PermanentUpstreamError(
                SYSTEM,
                f"GET {EVENTS_PATH} sent a next link off {urlsplit(here).netloc}{EVENTS_PATH} "
                f"({urlsplit(target).netloc}{urlsplit(target).path}); refused, the API key "
                "goes to the configured host only",
                status=200,
            )
        query = urlsplit(target).query
        if not query:
            raise PermanentUpstreamError(
                SYSTEM, f"GET {EVENTS_PATH} sent a next link without a cursor", status=200
            )
        return f"{here}?{query}"


class MeteringResource(dg.ConfigurableResource):
    """Usage-metering API access (OpenMeter's CloudEvents ingestion and event list).

    Attributes:
        api_key: API token, bound to ``dg.EnvVar("METERING_API_KEY")``.
        base_url: API base URL; ``dg.EnvVar("METERING_BASE_URL")`` in sandbox mode.

    Example:
        >>> metering = MeteringResource(api_key=dg.EnvVar("METERING_API_KEY"))
        >>> events = metering.get_client().list_events(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    """

    api_key: str = Field(repr=False, description="Metering API token (METERING_API_KEY).")
    base_url: str = Field(
        default="https://openmeter.cloud",
        description="Metering API base URL (METERING_BASE_URL).",
    )

    def get_client(self, http_options: HttpOptions | None = None) -> MeteringClient:
        """A client with its own keep-alive session.

        Raises:
            ConfigurationError: No API token is bound (the source is switched off, or its
                variable is empty): nothing is sent without one.
        """
        if not self.api_key:
            raise ConfigurationError(
                f"Usage metering is not configured: set METERING_API_KEY, "
                f"{SWITCH_OFF_HINT['metering']}"
            )
        return MeteringClient(
            api_key=self.api_key, base_url=self.base_url, http_options=http_options
        )

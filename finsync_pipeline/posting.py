"""The posting engine: ledger rows to ERP documents, exactly once.

A run first settles what earlier runs left in flight (by looking each document up in the ERP,
never by resending blind), then posts customers parents-first, then invoices. A level (one
document type, one customer depth) is sent by a continuous pool of ``concurrency`` workers fed
by claims made ahead (``posting_pool.ClaimFeed``): no worker waits for another's batch. Each
outcome counts only once committed to the ledger and its journal; successes are committed in
groups, so a kill -9 anywhere loses nothing: a document sent but not yet recorded is still in
flight, and the next run settles it by looking it up.

A 429 (the ERP's concurrency limit) never pauses the run: the clients share an
``AdaptiveConcurrency`` that backs off and recovers, and the refused document is sent again
later in the run. A 503 (maintenance) or an ERP that cannot be reached pauses it.
"""

import contextlib
import datetime as dt
import enum
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from finsync_pipeline import ledger
from finsync_pipeline.errors import (
    AmbiguousOutcomeError,
    AuthenticationError,
    PermanentUpstreamError,
    RetryableUpstreamError,
    UpstreamError,
)
from finsync_pipeline.posting_pool import ClaimFeed
from finsync_pipeline.resources.concurrency import AdaptiveConcurrency

# Document type -> NetSuite record type.
RECORD_TYPES = {
    "customer": "customer",
    "invoice": "invoice",
    "credit_memo": "creditmemo",
    "customer_payment": "customerpayment",
    "customer_refund": "customerrefund",
    # Status written back to the CRM (Salesforce), through the same ledger.
    "account_status": "Account",
    "opportunity_status": "Opportunity",
}
DEFAULT_MAX_ATTEMPTS = 8
# A document waiting for another (its customer) is due again after this delay, so neither this
# run nor the sensor spins on it. Rows released by a pause are due at once: the paused run
# stops claiming, and the sensor's interval paces the next attempt.
BLOCKED_WAIT_S = 900.0
PAUSE_WAIT_S = 0.0
THROTTLED = 429


class _Outcome(enum.Enum):
    """What became of a document a worker took."""

    SETTLED = "settled"
    """Its outcome is committed (rejected, deferred, released, settled by lookup)."""
    SENT = "sent"
    """The ERP saved it; the outcome is committed with the next group of successes."""
    AGAIN = "again"
    """The ERP refused it for now (429) before processing it: send it again in this run."""


def _iso_in(seconds: float) -> str:
    moment = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    return moment.isoformat(timespec="microseconds")


class ErpClient(Protocol):
    """The part of an ERP client the engine needs (NetSuiteClient satisfies it)."""

    def upsert(self, record_type: str, external_id: str, body: dict[str, Any]) -> str: ...

    def get_by_external_id(self, record_type: str, external_id: str) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class BatchOutcome:
    """What the target system answered for one document of a batch write.

    Attributes:
        internal_id: The system's id of the saved document, or None when refused.
        error: Why the system refused it, or None when saved: a permanent refusal rejects the
            document, a transient one (row-lock contention) defers it.
    """

    internal_id: str | None
    error: UpstreamError | None


@runtime_checkable
class BatchErpClient(ErpClient, Protocol):
    """A client that writes a whole claimed batch in one call (Salesforce's sObject Collections).

    ``upsert_batch`` answers one outcome per document, in order: a document the system refuses
    does not hold back the others. Resending a batch whose answer was lost must be safe (each
    write carries the document's whole state), because the engine defers the batch and sends
    it again.
    """

    def upsert_batch(
        self, record_type: str, docs: list[tuple[str, dict[str, Any]]]
    ) -> list[BatchOutcome]: ...


@dataclass
class PostingStats:
    """What one posting run did."""

    posted: int = 0
    rejected: int = 0
    dead: int = 0
    deferred: int = 0
    blocked: int = 0
    recovered_posted: int = 0
    recovered_pending: int = 0
    lost_claims: int = 0
    throttled: int = 0
    dead_runs: list[str] = field(default_factory=list)
    paused: bool = False
    rejections: list[dict[str, str]] = field(default_factory=list)

    def as_metadata(self) -> dict[str, Any]:
        return {
            "posted": self.posted,
            "rejected": self.rejected,
            "dead": self.dead,
            "deferred (transient, retry later)": self.deferred,
            "blocked (waiting for a referenced document)": self.blocked,
            "settled from earlier runs (found posted)": self.recovered_posted,
            "settled from earlier runs (back to pending)": self.recovered_pending,
            "claims lost (lease expired, another run settled them)": self.lost_claims,
            "429s (ERP concurrency limit; workers backed off)": self.throttled,
            "dead runs whose expired leases were settled": len(self.dead_runs),
            "paused (ERP unavailable)": self.paused,
        }


def _find_refs(payload: Any) -> Iterator[tuple[str, str]]:
    if isinstance(payload, dict):
        if set(payload) == {"$ref"}:
            doc_type, external_id = payload["$ref"]
            yield str(doc_type), str(external_id)
            return
        for value in payload.values():
            yield from _find_refs(value)
    elif isinstance(payload, list):
        for value in payload:
            yield from _find_refs(value)


def _resolve_refs(payload: Any, ids: dict[tuple[str, str], str]) -> Any:
    if isinstance(payload, dict):
        if set(payload) == {"$ref"}:
            doc_type, external_id = payload["$ref"]
            return {"id": ids[(str(doc_type), str(external_id))]}
        return {k: _resolve_refs(v, ids) for k, v in payload.items()}
    if isinstance(payload, list):
        return [_resolve_refs(v, ids) for v in payload]
    return payload


def _rejection(doc: ledger.Claimed, detail: str) -> dict[str, str]:
    """What a refused or dead document leaves for its finance exception."""
    return {
        "doc_type": doc.doc_type,
        "external_id": doc.external_id,
        "source_id": doc.source_id,
        "correlation_id": doc.correlation_id,
        "partition_date": doc.partition_date or "",
        "detail": detail,
    }


class PostingEngine:
    """Posts one ERP's pending ledger rows.

    Args:
        engine: The warehouse holding the ledger.
        client: The ERP client.
        erp: The ERP's name in the ledger ("netsuite").
        run_id: The Dagster run doing the posting; recorded on every claim.
        is_run_alive: Whether the orchestrator believes another run is still running. A row
            whose holder has finished is settled at once; a row whose holder it believes alive
            is left alone only while the holder's lease lasts (a SIGKILLed run never finishes
            in the orchestrator's storage).
        lease_s: How long a claim stays this run's without a renewal; a heartbeat renews it
            every third of that while the run posts.
        on_dead_run: Called once per run found holding expired leases while the orchestrator
            still believed it alive, with the reason: to mark it failed and free what it held.
        max_attempts: Sends before a transiently failing document is declared dead.
        batch_size: Rows claimed per transaction, and successes committed per transaction.
        concurrency: Workers sending at once (each with its own client from
            ``client_factory``; 1 without one).
        limiter: The adaptive limit the clients share, whose 429s the stats report.
        on_hook: Test hook called with a point name ("claimed", "sending", "sent",
            "recorded") around each side effect; the crash-safety tests kill the process there.
    """

    def __init__(
        self,
        engine: Engine,
        client: ErpClient,
        *,
        erp: str,
        run_id: str,
        is_run_alive: Callable[[str], bool],
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        batch_size: int = 50,
        rng: random.Random | None = None,
        on_hook: Callable[[str], None] | None = None,
        concurrency: int = 1,
        client_factory: Callable[[], ErpClient] | None = None,
        lease_s: float = ledger.DEFAULT_LEASE_S,
        on_dead_run: Callable[[str, str], None] | None = None,
        limiter: AdaptiveConcurrency | None = None,
    ) -> None:
        self.engine = engine
        self._shared_client = client
        self._client_factory = client_factory
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sent: list[tuple[ledger.Claimed, str]] = []
        self._throttles: Counter[str] = Counter()
        self._failure: BaseException | None = None
        # Documents of one level are independent (parents and invoices post in earlier
        # levels), so up to ``concurrency`` are sent at once, each worker with its own client.
        self.concurrency = concurrency if client_factory is not None else 1
        self.limiter = limiter
        self._throttled_before = limiter.throttled if limiter is not None else 0
        self.erp = erp
        self.run_id = run_id
        self.is_run_alive = is_run_alive
        self.lease_s = lease_s
        self.on_dead_run = on_dead_run or (lambda _run, _why: None)
        self.max_attempts = max_attempts
        self.batch_size = batch_size
        self.rng = rng or random.Random()  # noqa: S311  (backoff jitter, not a secret)
        self.hook = on_hook or (lambda _point: None)
        self.stats = PostingStats()

    @property
    def client(self) -> ErpClient:
        """The calling worker's ERP client (the shared one without a factory)."""
        if self._client_factory is None or self.concurrency == 1:
            return self._shared_client
        client: ErpClient | None = getattr(self._local, "client", None)
        if client is None:
            client = self._client_factory()
            self._local.client = client
        return client

    def _count(self, field: str) -> None:
        with self._lock:
            setattr(self.stats, field, getattr(self.stats, field) + 1)

    def _reject(self, rejection: dict[str, str]) -> None:
        with self._lock:
            self.stats.rejections.append(rejection)

    # -- settling what earlier runs left behind -------------------------------------------
    def recover(self) -> None:
        """Settle rows other runs left in flight by looking them up in the ERP.

        A row is settled when its holder has finished, or when its lease expired whatever the
        orchestrator says about the holder; a holder believed alive with expired leases is
        reported dead (``on_dead_run``) once.
        """
        with self.engine.connect() as conn:
            stale = ledger.stale_in_flight(conn, erp=self.erp, run_id=self.run_id)
        believed_alive: dict[str, bool] = {}
        dead: list[str] = []
        for row in stale:
            holder = row.holder
            if holder and holder not in believed_alive:
                believed_alive[holder] = self.is_run_alive(holder)
            if holder and believed_alive[holder]:
                if not row.lease_expired:
                    continue
                if holder not in dead:
                    dead.append(holder)
            self._settle(row)
        for holder in dead:
            why = (
                f"run {holder} held NetSuite documents in flight past their {self.lease_s:g} s "
                f"lease without renewing it (the process died); run {self.run_id} settled them "
                "by looking them up"
            )
            self.on_dead_run(holder, why)
            self.stats.dead_runs.append(holder)

    def _settle(self, row: ledger.InFlight) -> None:
        doc_type, external_id, holder = row.doc_type, row.external_id, row.holder
        settle: dict[str, Any] = {
            "erp": self.erp,
            "doc_type": doc_type,
            "external_id": external_id,
            "run_id": self.run_id,
            "expect_state": "in_flight",
            "expect_holder": holder or None,
        }
        try:
            found = self.client.get_by_external_id(RECORD_TYPES[doc_type], external_id)
        except PermanentUpstreamError as e:
            # An id that cannot even be asked for was never sent either.
            with self.engine.begin() as conn:
                ledger.transition(conn, to_state="rejected", detail=e.detail, **settle)
            self._count("rejected")
            return
        with self.engine.begin() as conn:
            payload_hash, posted_hash = self._hashes(conn, doc_type, external_id)
            # Found under a first post, it is this payload; found after an earlier post, it
            # may be the older version, so the row goes back to be sent again (an upsert).
            if found is not None and posted_hash is None:
                ledger.transition(
                    conn,
                    to_state="posted",
                    erp_internal_id=str(found["id"]),
                    posted_hash=payload_hash,
                    detail=f"settled by lookup: run {holder} had sent it",
                    **settle,
                )
                self._wake_dependents(conn, doc_type, external_id)
                self._count("recovered_posted")
            else:
                ledger.transition(
                    conn,
                    to_state="pending",
                    detail=f"settled by lookup: run {holder} had not sent it"
                    if found is None
                    else f"settled by lookup: run {holder} died updating it; the update is sent "
                    "again",
                    **settle,
                )
                self._count("recovered_pending")

    @contextlib.contextmanager
    def _heartbeat(self) -> Iterator[None]:
        """Renew this run's leases every third of a lease while the block runs."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.lease_s / 3):
                try:
                    with self.engine.begin() as conn:
                        ledger.renew_leases(
                            conn, erp=self.erp, run_id=self.run_id, lease_s=self.lease_s
                        )
                except sa.exc.OperationalError:
                    # A busy warehouse: the next beat renews; a lease outlasts two misses.
                    continue

        thread = threading.Thread(target=beat, name=f"lease-{self.run_id[:8]}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _hashes(self, conn: Any, doc_type: str, external_id: str) -> tuple[str, str | None]:
        """(payload hash, hash of the version last posted) of a ledger row."""
        row = conn.execute(
            sa.text(
                "SELECT payload_hash, posted_hash FROM posting_ledger WHERE erp = :erp AND "
                "doc_type = :doc_type AND external_id = :external_id"
            ),
            {"erp": self.erp, "doc_type": doc_type, "external_id": external_id},
        ).one()
        return str(row.payload_hash), row.posted_hash

    # -- posting ---------------------------------------------------------------------------
    def post(
        self,
        doc_type: str,
        *,
        date_from: str | None = None,
        date_to: str | None = None,
        depths: list[int] | None = None,
    ) -> None:
        """Post every due pending row of ``doc_type`` (optionally in a partition range)."""
        try:
            with self._heartbeat():
                self._post_levels(doc_type, date_from, date_to, depths)
        finally:
            if self.limiter is not None:
                self.stats.throttled = self.limiter.throttled - self._throttled_before

    def _post_levels(
        self,
        doc_type: str,
        date_from: str | None,
        date_to: str | None,
        depths: list[int] | None,
    ) -> None:
        levels: list[int | None] = list(depths) if depths is not None else [None]
        for depth in levels:
            if self.stats.paused:
                return

            def claim(depth: int | None = depth) -> list[ledger.Claimed]:
                return self._claim(doc_type, date_from, date_to, depth)

            if isinstance(self.client, BatchErpClient):
                self._post_level_in_batches(claim)
            else:
                self._drain(claim)

    def _claim(
        self, doc_type: str, date_from: str | None, date_to: str | None, depth: int | None
    ) -> list[ledger.Claimed]:
        """Claim the next batch of due rows of a level (committed before anything is sent)."""
        with self.engine.begin() as conn:
            batch = ledger.claim(
                conn,
                erp=self.erp,
                doc_type=doc_type,
                run_id=self.run_id,
                limit=self.batch_size,
                date_from=date_from,
                date_to=date_to,
                depth=depth,
                lease_s=self.lease_s,
            )
        if batch:
            self.hook("claimed")
        return batch

    def _post_level_in_batches(self, claim: Callable[[], list[ledger.Claimed]]) -> None:
        """A ``BatchErpClient`` level: each claimed batch goes in one call."""
        while not self.stats.paused:
            batch = claim()
            if not batch:
                return
            try:
                self._post_batch(batch)
            finally:
                self._record_sent()

    def _drain(self, claim: Callable[[], list[ledger.Claimed]]) -> None:
        """Post a level with the pool: ``concurrency`` workers taking from one feed."""
        feed: ClaimFeed[ledger.Claimed] = ClaimFeed(
            claim, lambda: self._record_sent(feed), low_water=self.concurrency
        )
        if self.concurrency == 1:
            self._work(feed)
        else:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="posting") as pool:
                for _ in range(self.concurrency):
                    pool.submit(self._work, feed)
        # Even when a send raised (bad credentials), what was sent is recorded.
        self._record_sent(feed)
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def _work(self, feed: ClaimFeed[ledger.Claimed]) -> None:
        """One worker: take, send and record documents until the level is done."""
        try:
            while (doc := feed.take()) is not None:
                self._settle_taken(feed, doc, self._post_unless_paused(doc))
        except BaseException as e:
            self._stop(feed, e)

    def _settle_taken(
        self, feed: ClaimFeed[ledger.Claimed], doc: ledger.Claimed, outcome: _Outcome
    ) -> None:
        if outcome is _Outcome.AGAIN:
            feed.put_back(doc)
        elif outcome is _Outcome.SETTLED:
            feed.settle()
        if self.stats.paused:
            # Maintenance: what is claimed and not sent goes back for the next run.
            self._release(feed.stop(), "posting paused: the ERP is unavailable", wait_s=0)
        elif len(self._sent) >= self.batch_size:
            self._record_sent(feed)

    def _stop(self, feed: ClaimFeed[ledger.Claimed], error: BaseException) -> None:
        """A worker failed: stop the level, give back what is queued, keep the first error."""
        with self._lock:
            if self._failure is None:
                self._failure = error
        left = feed.stop()
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            self._release(left, f"the posting run stopped ({type(error).__name__})", wait_s=0)

    def _post_unless_paused(self, doc: ledger.Claimed) -> _Outcome:
        try:
            if self.stats.paused:
                self._release([doc], "posting paused: the ERP is unavailable", wait_s=PAUSE_WAIT_S)
                return _Outcome.SETTLED
            return self._post_one(doc)
        except ledger.LostClaim:
            # Another run settled it by lookup after this run's lease lapsed; that stands.
            self._count("lost_claims")
            return _Outcome.SETTLED

    def _release(
        self,
        docs: list[ledger.Claimed],
        why: str,
        *,
        wait_s: float,
        waiting_for: str | None = None,
    ) -> None:
        """Give claimed rows back, due again after ``wait_s``: never re-claimed by this run,
        and never relaunched by the sensor in a tight loop."""
        if not docs:
            return
        due = _iso_in(wait_s) if wait_s else None
        with self.engine.begin() as conn:
            for doc in docs:
                ledger.transition(
                    conn,
                    erp=self.erp,
                    doc_type=doc.doc_type,
                    external_id=doc.external_id,
                    to_state="pending",
                    run_id=self.run_id,
                    detail=why,
                    next_attempt_at=due,
                    expect_state="in_flight",
                    expect_holder=self.run_id,
                )
                if waiting_for is not None:
                    conn.execute(
                        sa.text(
                            "UPDATE posting_ledger SET waiting_for = :ref WHERE erp = :erp "
                            "AND doc_type = :doc_type AND external_id = :external_id"
                        ),
                        {
                            "ref": waiting_for,
                            "erp": self.erp,
                            "doc_type": doc.doc_type,
                            "external_id": doc.external_id,
                        },
                    )

    def _wake_dependents(self, conn: Any, doc_type: str, external_id: str) -> None:
        """Documents waiting for this one are due now: they post in this same run."""
        conn.execute(
            sa.text(
                "UPDATE posting_ledger SET next_attempt_at = NULL, waiting_for = NULL "
                "WHERE erp = :erp AND state = 'pending' AND waiting_for = :ref"
            ),
            {"erp": self.erp, "ref": f"{doc_type}:{external_id}"},
        )

    def _body(self, doc: ledger.Claimed) -> dict[str, Any] | None:
        """The payload with its references resolved to posted ids, or None when one is not
        posted yet (the document is released to wait for it)."""
        refs = list(dict.fromkeys(_find_refs(doc.payload)))
        if not refs:
            return dict(_resolve_refs(doc.payload, {}))
        ids: dict[tuple[str, str], str] = {}
        with self.engine.connect() as conn:
            for ref_type in {t for t, _ in refs}:
                found = ledger.posted_ids(
                    conn,
                    erp=self.erp,
                    doc_type=ref_type,
                    external_ids=[x for t, x in refs if t == ref_type],
                )
                ids.update({(ref_type, k): v for k, v in found.items()})
        missing = [(t, x) for t, x in refs if (t, x) not in ids]
        if missing:
            self._count("blocked")
            self._release(
                [doc],
                f"waiting for {', '.join(f'{t} {x}' for t, x in missing)} to be posted",
                wait_s=BLOCKED_WAIT_S,
                waiting_for=f"{missing[0][0]}:{missing[0][1]}",
            )
            return None
        body: dict[str, Any] = _resolve_refs(doc.payload, ids)
        return body

    def _common(self, doc: ledger.Claimed) -> dict[str, Any]:
        return {
            "erp": self.erp,
            "doc_type": doc.doc_type,
            "external_id": doc.external_id,
            "run_id": self.run_id,
            "expect_state": "in_flight",
            "expect_holder": self.run_id,
        }

    def _rejected(self, doc: ledger.Claimed, error: PermanentUpstreamError) -> None:
        """Record a refusal: the row is rejected, and a rejection is kept for the exceptions."""
        with self.engine.begin() as conn:
            ledger.transition(
                conn,
                to_state="rejected",
                detail=error.detail,
                count_attempt=True,
                **self._common(doc),
            )
        self._count("rejected")
        field_note = f" [field {error.field}]" if error.field else ""
        self._reject(_rejection(doc, f"{error.detail}{field_note}"))

    def _post_batch(self, batch: list[ledger.Claimed]) -> None:
        """Send a claimed batch in one call of a ``BatchErpClient``; record each outcome."""
        ready = [(doc, body) for doc in batch if (body := self._body(doc)) is not None]
        if not ready:
            return
        client = self.client
        assert isinstance(client, BatchErpClient)
        record_type = RECORD_TYPES[ready[0][0].doc_type]
        docs = [doc for doc, _ in ready]
        self.hook("sending")
        try:
            outcomes = client.upsert_batch(record_type, [(d.external_id, b) for d, b in ready])
        except PermanentUpstreamError as e:
            # The call itself was refused: every document of it carries the reason.
            self.hook("sent")
            for doc in docs:
                self._rejected(doc, e)
            self.hook("recorded")
            return
        except AuthenticationError:
            self._release(docs, "authentication failed; nothing was sent", wait_s=0)
            raise
        except (AmbiguousOutcomeError, RetryableUpstreamError) as e:
            # Safe to resend (the protocol's promise): the whole batch goes again later.
            with self.engine.begin() as conn:
                for doc in docs:
                    self._defer(conn, doc, e, self._common(doc))
            if isinstance(e, RetryableUpstreamError) and e.status in (503, 429, None):
                self.stats.paused = True
            return
        self.hook("sent")
        for doc, outcome in zip(docs, outcomes, strict=True):
            try:
                self._record_outcome(doc, outcome)
            except ledger.LostClaim:
                # Another run settled it by lookup after this run's lease lapsed; that stands.
                self._count("lost_claims")

    def _record_outcome(self, doc: ledger.Claimed, outcome: BatchOutcome) -> None:
        if isinstance(outcome.error, PermanentUpstreamError):
            self._rejected(doc, outcome.error)
        elif outcome.error is not None:
            with self.engine.begin() as conn:
                self._defer(conn, doc, outcome.error, self._common(doc))
        elif outcome.internal_id is None:
            unknown = f"{self.erp} answered neither an id nor an error for it"
            self._rejected(doc, PermanentUpstreamError(self.erp, unknown))
        else:
            with self._lock:
                self._sent.append((doc, outcome.internal_id))

    def _post_one(self, doc: ledger.Claimed) -> _Outcome:
        body = self._body(doc)
        if body is None:
            return _Outcome.SETTLED
        record_type = RECORD_TYPES[doc.doc_type]
        common = self._common(doc)
        self.hook("sending")
        try:
            internal_id = self.client.upsert(record_type, doc.external_id, body)
        except PermanentUpstreamError as e:
            self.hook("sent")
            self._rejected(doc, e)
            self.hook("recorded")
            return _Outcome.SETTLED
        except AmbiguousOutcomeError as e:
            # The write may have committed: settle by looking the document up, never resend blind.
            try:
                existing = self.client.get_by_external_id(record_type, doc.external_id)
            except RetryableUpstreamError as lookup_error:
                # The ERP cannot even be read (a maintenance window): settle on a later run.
                with self.engine.begin() as conn:
                    self._defer(conn, doc, lookup_error, common)
                if lookup_error.status != THROTTLED:
                    self.stats.paused = True
                return _Outcome.SETTLED
            # Finding an earlier version of a re-posted document proves nothing about this one:
            # resend it (an upsert by external id, so safe) instead of marking it posted.
            first_post = doc.posted_hash is None
            with self.engine.begin() as conn:
                if existing is not None and first_post:
                    ledger.transition(
                        conn,
                        to_state="posted",
                        erp_internal_id=str(existing["id"]),
                        posted_hash=doc.payload_hash,
                        count_attempt=True,
                        detail="ambiguous send settled by lookup: found",
                        **common,
                    )
                    self._wake_dependents(conn, doc.doc_type, doc.external_id)
                    self._count("posted")
                else:
                    self._defer(conn, doc, e, common)
            return _Outcome.SETTLED
        except AuthenticationError:
            self._release([doc], "authentication failed; nothing was sent", wait_s=0)
            raise
        except RetryableUpstreamError as e:
            if e.status == THROTTLED and self._throttled_again(doc):
                return _Outcome.AGAIN
            with self.engine.begin() as conn:
                self._defer(conn, doc, e, common)
            if e.status in (503, None):
                # A maintenance window, or an ERP that cannot be reached, outlived our retries:
                # stop this run and let the backlog drain on the next instead of burning attempts.
                self.stats.paused = True
            return _Outcome.SETTLED
        self.hook("sent")
        with self._lock:
            self._sent.append((doc, internal_id))
        return _Outcome.SENT

    def _throttled_again(self, doc: ledger.Claimed) -> bool:
        """Whether a document the ERP refused with 429 is sent again in this run.

        A 429 comes before the ERP processes anything, and the shared limit has backed off,
        so the document goes back in the queue without burning an attempt; one refused
        ``max_attempts`` times in a run is deferred like any transient failure (the ERP's
        limit is taken by someone else), never pausing the run.
        """
        with self._lock:
            self._throttles[doc.external_id] += 1
            return self._throttles[doc.external_id] < self.max_attempts

    def _record_sent(self, feed: ClaimFeed[ledger.Claimed] | None = None) -> None:
        """Commit every document sent successfully and not yet recorded, in one transaction.

        One commit per group instead of one per document: a crash before it leaves the group
        in flight, and the next run settles each document by looking it up in the ERP. The
        documents count as posted, and settle in the ``feed``, only once committed.
        """
        with self._lock:
            sent, self._sent = self._sent, []
        if not sent:
            return
        try:
            self._commit_sent(sent)
        finally:
            if feed is not None:
                feed.settle(len(sent))

    def _commit_sent(self, sent: list[tuple[ledger.Claimed, str]]) -> None:
        with self.engine.begin() as conn:
            recorded, lost = ledger.record_posted(
                conn,
                erp=self.erp,
                run_id=self.run_id,
                sent=[
                    ledger.Sent(doc.doc_type, doc.external_id, internal_id, doc.payload_hash)
                    for doc, internal_id in sent
                ],
            )
        # A lost claim was settled by another run's lookup meanwhile (it found this very post).
        for _ in lost:
            self._count("lost_claims")
        for _ in recorded:
            self._count("posted")
        self.hook("recorded")

    def _defer(
        self, conn: Any, doc: ledger.Claimed, error: Exception, common: dict[str, Any]
    ) -> None:
        attempts = doc.attempts + 1
        if attempts >= self.max_attempts:
            ledger.transition(
                conn,
                to_state="dead",
                detail=f"retries exhausted: {error}",
                count_attempt=True,
                **common,
            )
            self._count("dead")
            self._reject({**_rejection(doc, str(error)), "dead": "true"})
            return
        delay = min(3600.0, 30.0 * 2 ** (attempts - 1)) * (0.5 + self.rng.random() / 2)
        due = _iso_in(delay)
        ledger.transition(
            conn,
            to_state="pending",
            detail=str(error),
            count_attempt=True,
            next_attempt_at=due,
            **common,
        )
        self._count("deferred")

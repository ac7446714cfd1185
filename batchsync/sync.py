"""One sync run: discover -> fetch -> parse -> store -> record. Nothing else.

Each batch is fetched, then written and its outcome recorded in one transaction: a batch
lands whole or not at all. A large body comes unparsed (saved to a temporary file) and is
parsed inside that transaction, its calls written a chunk at a time, so memory does not
grow with the batch; a fault found late rolls back the chunks already written.
Whatever goes wrong with one batch (not found, an id that cannot
be sent, a body that cannot be decoded or read, data the database refuses, even an
unexpected exception) is recorded as that batch's failure and the run goes on. Only what
concerns the whole run stops it: an authentication failure, a database that cannot be
used, and an API that stopped answering (:data:`UNREACHABLE_BATCHES_LIMIT` batches in a
row, or the first batches of the run all answered with a 5xx). Completed batches already
stored with the requested parts are not fetched again unless ``refresh`` is set. A
fetched batch is "unchanged" when its fingerprint (content hash, parts, phone-number
policy and mapping version) is the stored one: it is then
neither parsed nor rewritten. :func:`_unchanged` is the one place that decides it, and
under ``refresh`` nothing is unchanged: every fetched batch is rewritten, which repairs
rows changed or deleted by hand. A dry run does all of it in transactions that are
rolled back, so it reports exact row changes and writes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from sqlalchemy import Connection, Engine

from batchsync import runs
from batchsync.bland.source import BatchSource, FetchedBatch, Parts, SpooledBody, Unchanged
from batchsync.bland.v2 import carry_stored_details, v1_carried_columns
from batchsync.db import DRIVER_ERRORS, describe, is_unavailable, reading, unavailable
from batchsync.encoded import decoded
from batchsync.errors import (
    ApiError,
    ApiUnavailable,
    ApiUnreachable,
    AuthError,
    BatchsyncError,
    ConfigError,
    DatabaseError,
    Interrupted,
    PayloadError,
    TransientApiError,
)
from batchsync.gcpause import paused
from batchsync.payload import (
    BatchSummary,
    CallDataRepeated,
    CallRecord,
    ParsedBatch,
    TranscriptLineRecord,
    printable,
    recordable_id,
)
from batchsync.privacy import (
    BatchScrub,
    PhoneMode,
    PhonePolicy,
    apply_phone_policy,
    apply_phone_policy_to_calls,
    redact_secrets,
    redact_secrets_in,
)
from batchsync.records import StoredCalls
from batchsync.runs import BatchOutcome
from batchsync.store import (
    BatchWriter,
    Fingerprint,
    has_call_details,
    lock_batch,
    read_stored_calls,
    stored_batches,
    stored_fingerprint,
)

log = logging.getLogger(__name__)

# After this many batches in a row found the API unreachable (connection refused or
# dropped, timed out, or 502/503/504 from a gateway, each after its retries), one cheap
# request (the first page of the batch list) asks whether the API answers at all: if it
# does, those batches were merely slow and the count starts again; if not, the run stops
# with ApiUnavailable (exit 5) and the remaining batches are not tried. Any answer from the
# API for a batch, even a 404 or a body that cannot be read, starts the count again.
# Likewise, when the first batches of a run fail this many in a row with an HTTP 5xx after
# their retries and none has succeeded, the API behind the gateway is taken as down (exit 5)
# even though the batch list answers: trying every batch would only repeat it.
UNREACHABLE_BATCHES_LIMIT = 3
# Statuses, after the retries, that count as "not answering": a gateway or load balancer
# answers them when the API behind it is down.
GATEWAY_STATUSES = frozenset({502, 503, 504})


# How often the writer, waiting for a fetched batch, looks whether SIGTERM asked it to stop.
STOP_POLL_SECONDS = 0.2


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based): the batches whose stable hash falls on it.

    The hash is of the batch id alone, so N workers given 0/N .. N-1/N split any set of
    batches between them the same way on every run and every machine.
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(
                f"shard {self.index}/{self.count} does not exist: use K/N with 0 <= K < N"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        index, sep, count = text.partition("/")
        if not sep or not index.strip().isdigit() or not count.strip().isdigit():
            raise ConfigError(f"--shard takes K/N, such as 0/4, not {text!r}")
        return cls(int(index), int(count))

    def owns(self, batch_id: str) -> bool:
        # surrogatepass: an id that is not valid Unicode still belongs to one shard.
        digest = hashlib.blake2b(batch_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class SyncOptions:
    """What one run syncs: named batches, or every batch the API lists (``discover``)."""

    batch_ids: tuple[str, ...] = ()
    discover: bool = False
    parts: Parts = field(default_factory=Parts)
    refresh: bool = False
    campaign_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    label: str | None = None
    shard: Shard | None = None
    concurrency: int = 1
    phones: PhonePolicy = field(default_factory=PhonePolicy)
    dry_run: bool = False
    # Recorded with the run; the source built for it applies them (batchsync.bland.auto).
    api: str = "auto"
    call_details: bool | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")

    def as_json(self) -> dict[str, Any]:
        """The options as recorded in sync_runs.options."""
        return {
            "batch_ids": [_recordable(batch_id) for batch_id in self.batch_ids],
            "all": self.discover,
            "parts": self.parts.tag,
            "refresh": self.refresh,
            "campaign_id": self.campaign_id,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "label": self.label,
            "shard": str(self.shard) if self.shard else None,
            "concurrency": self.concurrency,
            "phone_numbers": self.phones.tag,
            "dry_run": self.dry_run,
            "api": self.api,
            "call_details": self.call_details,
        }


@dataclass
class RunResult:
    run_id: int | None  # None for a dry run, which records nothing
    status: str
    started_at: datetime
    finished_at: datetime | None = None
    outcomes: list[BatchOutcome] = field(default_factory=list)
    error: str | None = None

    def count(self, status: str) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status == status)

    @property
    def failed(self) -> list[BatchOutcome]:
        return [o for o in self.outcomes if o.status == runs.BATCH_FAILED]

    def as_json(self) -> dict[str, Any]:
        """The run's outcome as the JSON summary prints it: batch counts, failures, and the
        rows inserted, updated and deleted per table."""
        tables: dict[str, dict[str, int]] = {}
        for outcome in self.outcomes:
            for table, change in outcome.changes.items():
                totals = tables.setdefault(table, {"inserted": 0, "updated": 0, "deleted": 0})
                totals["inserted"] += change.inserted
                totals["updated"] += change.updated
                totals["deleted"] += change.deleted
        return {
            "run_id": self.run_id,
            "status": self.status,
            "dry_run": self.run_id is None,
            "batches": {
                status: self.count(status)
                for status in (runs.SYNCED, runs.UNCHANGED, runs.SKIPPED, runs.BATCH_FAILED)
            },
            "failed": [{"batch_id": o.batch_id, "error": o.error} for o in self.failed],
            "tables": tables,
            "error": self.error,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }


class SyncEvents:
    """Hooks for progress reporting; the default does nothing."""

    def started(self, run_id: int | None) -> None:
        """The run is recorded as ``run_id`` (None for a dry run, which records nothing)."""

    def planned(self, to_fetch: int, skipped: int) -> None:
        """Discovery is done: ``to_fetch`` batches will be fetched."""

    def batch_done(self, outcome: BatchOutcome) -> None:
        """One batch has its outcome (committed); skipped batches too, before any fetch."""


def run_sync(
    engine: Engine,
    source: BatchSource,
    options: SyncOptions,
    *,
    events: SyncEvents | None = None,
    clock: Callable[[], datetime] = utcnow,
    stop: threading.Event | None = None,
) -> RunResult:
    """Sync the batches ``options`` names; record the run; return its result.

    Up to ``options.concurrency`` batches are fetched at once; each is written in its own
    transaction, one at a time. When ``stop`` is set, the batch in hand is finished and
    the run ends as interrupted (raises Interrupted). Raises AuthError, ApiError
    (discovery failed), ApiUnavailable (the API stopped answering) or DatabaseError after
    recording the run as failed, and re-raises KeyboardInterrupt after recording it as
    interrupted. Anything else that goes wrong with one batch is that batch's failure.
    """
    events = events or SyncEvents()
    with ExitStack() as stack:
        try:
            ledger = _Ledger.open(engine, options, clock, stack)
        except DRIVER_ERRORS as exc:
            raise unavailable(engine, exc) from None
        result = RunResult(run_id=ledger.run_id, status=runs.RUNNING, started_at=clock())
        events.started(ledger.run_id)
        try:
            to_fetch, skipped, stored, refused = _plan(engine, source, options)
            if stop is not None and stop.is_set():
                raise Interrupted("stopped by SIGTERM before fetching any batch")
            ledger.skipped(skipped)
            result.outcomes.extend(BatchOutcome(b, runs.SKIPPED) for b in skipped)
            events.planned(len(to_fetch), len(skipped))
            for batch_id in skipped:
                events.batch_done(BatchOutcome(batch_id, runs.SKIPPED))
            for batch_id, reason in refused.items():
                outcome = ledger.failure(batch_id, reason)
                result.outcomes.append(outcome)
                events.batch_done(outcome)
            unreachable = 0
            server_errors = 0  # batches in a row that got a 5xx after their retries
            succeeded = False  # whether any batch of the run was fetched and stored
            for batch_id, fetched in _fetch_all(source, to_fetch, options, stored, stop):
                outcome = _store(engine, ledger, batch_id, fetched, options)
                result.outcomes.append(outcome)
                events.batch_done(outcome)
                succeeded = succeeded or outcome.status in (runs.SYNCED, runs.UNCHANGED)
                server_errors = server_errors + 1 if _server_error(fetched) else 0
                if not succeeded and server_errors >= UNREACHABLE_BATCHES_LIMIT:
                    # A gateway that answers the batch list but 5xx for every batch: the
                    # API behind it is down, whatever the list says. Do not try every batch.
                    left = len(to_fetch) - len(result.outcomes) + len(skipped) + len(refused)
                    assert isinstance(fetched, _Failed)
                    raise ApiUnavailable(
                        _server_errors_reason(server_errors, _api_answers(source), left, fetched)
                    )
                unreachable = unreachable + 1 if isinstance(fetched, _Unreachable) else 0
                if unreachable >= UNREACHABLE_BATCHES_LIMIT and _api_answers(source):
                    # The API answers a cheap request: the failures were those batches' own
                    # (too slow to answer in time), not the API's. Go on.
                    log.warning(
                        "%d batches in a row got no answer, but the API answers the batch "
                        "list: going on",
                        unreachable,
                    )
                    unreachable = 0
                if isinstance(fetched, _Unreachable) and unreachable >= UNREACHABLE_BATCHES_LIMIT:
                    left = len(to_fetch) - len(result.outcomes) + len(skipped) + len(refused)
                    raise ApiUnavailable(
                        f"the Bland API did not answer for {unreachable} batches in a row; "
                        f"stopping the run with {left} batch{'' if left == 1 else 'es'} not tried "
                        f"(last: {_one_line(fetched.reason)})"
                    )
                if stop is not None and stop.is_set():
                    raise Interrupted("stopped by SIGTERM after committing the batch in hand")
        except (KeyboardInterrupt, Interrupted) as exc:
            ledger.finish(result, runs.INTERRUPTED, str(exc) or "interrupted (SIGINT)")
            raise
        except (AuthError, ApiError, PayloadError, DatabaseError) as exc:
            ledger.finish(result, runs.FAILED, str(exc))
            raise
        except Exception as exc:
            ledger.finish(result, runs.FAILED, f"internal error, {type(exc).__name__}: {exc}")
            raise
        ledger.finish(result, runs.PARTIAL if result.failed else runs.SUCCEEDED)
        return result


class _Ledger:
    """The run's record in sync_runs / sync_run_batches; records nothing in a dry run."""

    def __init__(
        self,
        engine: Engine,
        run_id: int | None,
        clock: Callable[[], datetime],
        phones: PhonePolicy | None = None,
    ):
        self.engine = engine
        self.run_id = run_id
        self.clock = clock
        self.phones = phones or PhonePolicy()

    @classmethod
    def open(
        cls, engine: Engine, options: SyncOptions, clock: Callable[[], datetime], stack: ExitStack
    ) -> _Ledger:
        if options.dry_run:
            return cls(engine, None, clock, options.phones)
        for run_id in runs.mark_abandoned(engine, clock()):
            log.warning("run %d ended without recording an outcome: marked abandoned", run_id)
        run_id = stack.enter_context(runs.started_run(engine, options.as_json(), clock()))
        return cls(engine, run_id, clock, options.phones)

    def skipped(self, batch_ids: list[str]) -> None:
        if self.run_id is not None:
            runs.record_skipped(self.engine, self.run_id, batch_ids, self.clock())

    def outcome(self, connection: Connection, outcome: BatchOutcome) -> None:
        """Record a batch's outcome in the batch's own transaction."""
        if self.run_id is not None:
            runs.record_outcome(connection, self.run_id, outcome, self.clock())

    def failure(self, batch_id: str, error: str) -> BatchOutcome:
        """Record a failed batch in a transaction of its own.

        The reason may quote the API's own words; under --phone-numbers hash or drop
        anything in it that looks like a phone number is masked like the batch's data."""
        error = self.phones.text(_one_line(error)) or ""
        log.error("%s", error, extra={"batch": batch_id})
        outcome = BatchOutcome(_recordable(batch_id), runs.BATCH_FAILED, error=error)
        if self.run_id is not None:
            try:
                with self.engine.begin() as connection:
                    self.outcome(connection, outcome)
            except DRIVER_ERRORS as exc:
                raise unavailable(self.engine, exc) from None
        return outcome

    def finish(self, result: RunResult, status: str, error: str | None = None) -> None:
        result.status, result.error, result.finished_at = status, error, self.clock()
        if self.run_id is None:
            return
        try:
            runs.finish_run(self.engine, self.run_id, status, result.finished_at, error)
        except DRIVER_ERRORS as exc:
            # The database may be what failed; the run's own error is the one to report.
            log.error("could not record the end of run %d: %s", self.run_id, describe(exc))


@dataclass(frozen=True)
class _Failed:
    """Why a batch could not be fetched (or parsed as it arrived)."""

    reason: str
    status_code: int | None = None  # the HTTP status the API answered last, if any


def _server_error(fetched: FetchedBatch | _Failed) -> bool:
    """Whether the batch failed with an HTTP 5xx answer, after its retries.

    A timeout or a refused connection is no answer: those are the unreachable count's.
    """
    return isinstance(fetched, _Failed) and 500 <= (fetched.status_code or 0) <= 599


def _server_errors_reason(count: int, list_answers: bool, left: int, last: _Failed) -> str:
    """Why the run stops when its first batches all got a 5xx and none succeeded."""
    not_tried = f"{left} batch{'' if left == 1 else 'es'} not tried"
    if not list_answers:
        why = f"did not answer for {count} batches in a row (HTTP 5xx), nor for the batch list"
    else:
        why = (
            f"looks down: the batch list answers, but the first {count} batches fetched all "
            f"failed with HTTP {last.status_code} or another 5xx after their retries, and "
            "none succeeded"
        )
    return (
        f"the Bland API {why}; stopping the run with {not_tried} (last: {_one_line(last.reason)})"
    )


class _Unreachable(_Failed):
    """The API could not be reached for this batch, after its retries."""


def _fetch(
    source: BatchSource, batch_id: str, options: SyncOptions, stored: dict[str, Fingerprint]
) -> FetchedBatch | _Failed:
    """The fetched batch, or why it failed; only AuthError propagates."""
    found = stored.get(batch_id)
    unchanged: Unchanged | None = None
    if found is not None:

        def unchanged(content_sha256: str) -> bool:
            return _unchanged(found, _fingerprint(content_sha256, options), options)

    try:
        return source.fetch_batch(batch_id, options.parts, unchanged=unchanged)
    except AuthError:
        raise
    except ApiUnreachable as exc:
        return _Unreachable(str(exc))
    except TransientApiError as exc:
        if exc.status_code in GATEWAY_STATUSES:  # a gateway whose API behind it is down
            return _Unreachable(str(exc), exc.status_code)
        return _Failed(str(exc), exc.status_code)
    except ApiError as exc:
        return _Failed(str(exc), exc.status_code)
    except BatchsyncError as exc:
        return _Failed(str(exc))
    except Exception as exc:  # a fault of one batch must not end the run: record it
        return _Failed(_internal_error(batch_id, "fetching or parsing", exc))


def _api_answers(source: BatchSource) -> bool:
    """Whether the API answers at all: one request for the first page of the batch list."""
    listing = source.iter_batches()
    try:
        next(iter(listing), None)
    except AuthError:
        raise
    except ApiError:
        return False
    finally:
        close = getattr(listing, "close", None)
        if close is not None:
            close()
    return True


def _fetch_all(
    source: BatchSource,
    batch_ids: list[str],
    options: SyncOptions,
    stored: dict[str, Fingerprint],
    stop: threading.Event | None = None,
) -> Iterator[tuple[str, FetchedBatch | _Failed]]:
    """Fetch batches, up to ``options.concurrency`` at once, yielding each as it arrives.

    At most ``concurrency`` fetched batches wait in memory for the writer. When ``stop`` is
    set while the writer waits for the next batch, raises Interrupted at once rather than
    waiting for a fetch that may take minutes (a v2 batch of 10,000 calls is 10,000 detail
    requests); nothing of the batches in flight is written.
    """
    if options.concurrency == 1:
        for batch_id in batch_ids:
            yield batch_id, _fetch(source, batch_id, options, stored)
        return
    pending_ids = iter(batch_ids)
    executor = ThreadPoolExecutor(options.concurrency, thread_name_prefix="batchsync-fetch")
    in_flight: dict[Future[FetchedBatch | _Failed], str] = {}
    try:
        for batch_id in islice(pending_ids, options.concurrency):
            in_flight[executor.submit(_fetch, source, batch_id, options, stored)] = batch_id
        while in_flight:
            done, _ = wait(in_flight, timeout=STOP_POLL_SECONDS, return_when=FIRST_COMPLETED)
            if not done:
                if stop is not None and stop.is_set():
                    raise Interrupted(
                        "stopped by SIGTERM while waiting for the next batch; the batches "
                        "being fetched were not written"
                    )
                continue
            for future in done:
                batch_id = in_flight.pop(future)
                for next_id in islice(pending_ids, 1):
                    in_flight[executor.submit(_fetch, source, next_id, options, stored)] = next_id
                yield batch_id, future.result()
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


def _store(
    engine: Engine,
    ledger: _Ledger,
    batch_id: str,
    fetched: FetchedBatch | _Failed,
    options: SyncOptions,
) -> BatchOutcome:
    """Write one fetched batch and its outcome in one transaction; record a failure alone."""
    if isinstance(fetched, _Failed):
        return ledger.failure(batch_id, fetched.reason)
    if fetched.parsed is None and fetched.body is None:  # same content as stored: not parsed
        outcome = BatchOutcome(batch_id, runs.UNCHANGED)
        if ledger.run_id is not None and not options.dry_run:
            try:
                with engine.begin() as connection:
                    ledger.outcome(connection, outcome)
            except DRIVER_ERRORS as exc:
                raise unavailable(engine, exc) from None
        return outcome
    try:
        with paused():  # the batch's records hold no cycles: see batchsync.gcpause
            return _write(engine, ledger, batch_id, fetched, options)
    except CallDataRepeated:
        # Its calls cannot be written as they are parsed: hold them all, as for a small body.
        assert fetched.body is not None
        with paused():
            return _write(engine, ledger, batch_id, fetched, options, chunked=False)
    finally:
        if fetched.body is not None:
            fetched.body.close()


def _write(
    engine: Engine,
    ledger: _Ledger,
    batch_id: str,
    fetched: FetchedBatch,
    options: SyncOptions,
    *,
    chunked: bool = True,
) -> BatchOutcome:
    """Write one fetched batch and its outcome in one transaction; record a failure alone.

    A body not parsed yet (``fetched.body``) is parsed here, its calls written a chunk at a
    time as they come, in the same transaction: a fault found late undoes them all.
    """
    fingerprint = _fingerprint(fetched.content_sha256, options)
    carried = None if fetched.body is None else fetched.body.carried
    sink = _CallsWriter(
        options, echoes_secret=fetched.echoes_secret, carried=carried, body=fetched.body
    )
    try:
        with engine.connect() as connection, connection.begin() as transaction:
            lock_batch(connection, batch_id)
            if _unchanged(stored_fingerprint(connection, batch_id), fingerprint, options):
                parsed = _parsed(fetched, batch_id, sink if chunked else None)  # counted
                outcome = BatchOutcome(batch_id, runs.UNCHANGED, calls=_calls(parsed, sink))
            else:
                sink.writer = BatchWriter(
                    connection, batch_id, run_id=ledger.run_id or 0, synced_at=ledger.clock()
                )
                parsed = _parsed(fetched, batch_id, sink if chunked else None)
                if parsed.encoded is not None and not _as_encoded(connection, batch_id, sink):
                    # Records are needed after all: parse the body again, here.
                    parsed = decoded(parsed)
                    if parsed.calls:
                        parsed = parsed._replace(carried=v1_carried_columns(parsed.calls))
                calls = _calls(parsed, sink)
                if carried and parsed.calls:
                    parsed = parsed._replace(carried=v1_carried_columns(parsed.calls))
                as_parsed = parsed
                parsed = apply_phone_policy(parsed, options.phones, sink.scrub)
                if sink.redacting:
                    parsed = redact_secrets(parsed)
                if as_parsed.carried and parsed.calls and as_parsed.calls:
                    # Stored values are under the policy already: merged after it.
                    parsed = parsed._replace(
                        calls=carry_stored_details(
                            parsed.calls, as_parsed.calls, as_parsed.carried, sink.stored()
                        )
                    )
                changes = sink.writer.finish(parsed, fingerprint)
                outcome = BatchOutcome(batch_id, runs.SYNCED, calls=calls, changes=changes)
            ledger.outcome(connection, outcome)
            if options.dry_run:
                transaction.rollback()
    except CallDataRepeated:
        raise
    except _ParseFailed as exc:  # its transaction is rolled back: nothing of it is written
        return ledger.failure(batch_id, exc.reason)
    except DRIVER_ERRORS as exc:
        if is_unavailable(exc):
            raise unavailable(engine, exc) from None
        # The database refused this batch's data (a constraint, a value): this batch only.
        return ledger.failure(
            batch_id, f"batch {batch_id}: the database rejected it: {describe(exc)}"
        )
    except DatabaseError:
        raise
    except BatchsyncError as exc:
        return ledger.failure(batch_id, str(exc))
    except OverflowError:
        # The driver cannot even send a number this large for its column.
        return ledger.failure(
            batch_id, f"batch {batch_id}: the database rejected it: a number is out of range"
        )
    except Exception as exc:  # a fault of one batch must not end the run: record it
        return ledger.failure(batch_id, _internal_error(batch_id, "writing", exc))
    return outcome


def _calls(parsed: ParsedBatch, sink: _CallsWriter) -> int | None:
    """The batch's distinct calls: those in ``parsed`` and those written in chunks before;
    None when the response had no calls."""
    if parsed.encoded is not None:
        return len(parsed.encoded.calls) + sink.calls
    return None if parsed.calls is None else len(parsed.calls) + sink.calls


def _as_encoded(connection: Connection, batch_id: str, sink: _CallsWriter) -> bool:
    """Whether a batch whose calls a parser process encoded (``ParsedBatch.encoded``, v1
    bodies only) can be written from those rows: nothing to mask, redact, or carry over
    from a stored call's detail (see ``ParsedBatch.carried``)."""
    policy = sink.options.phones
    if policy.mode is not PhoneMode.KEEP or policy.redact_transcripts or sink.redacting:
        return False
    return not has_call_details(connection, batch_id)


class _ParseFailed(Exception):
    """A body parsed in the writer's transaction could not be parsed: why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _CallsWriter:
    """Hands the chunks of calls a parser yields to the batch's writer (if any), counting
    them."""

    def __init__(
        self,
        options: SyncOptions,
        *,
        echoes_secret: bool = False,
        carried: frozenset[str] | None = None,
        body: SpooledBody | None = None,
    ) -> None:
        self.options = options
        # Columns each call keeps from its stored detail (see ParsedBatch.carried).
        self.carried = carried
        self._stored: StoredCalls | None = None
        self.scrub = BatchScrub(options.phones)  # the batch's numbers, across its chunks
        self.echoes_secret = echoes_secret  # the body quotes the API key: redact every string
        self.body = body  # a body parsed here, which may fetch more bodies (call details)
        self.writer: BatchWriter | None = None
        self.calls = 0  # distinct calls written so far
        self.writing = False  # True while a chunk is being written: its faults are the writer's

    def __call__(
        self,
        calls: list[CallRecord],
        lines: list[TranscriptLineRecord] | None,
        again: frozenset[str],
    ) -> None:
        if self.writer is not None:
            self.writing = True
            as_parsed = calls
            calls, lines = apply_phone_policy_to_calls(calls, lines, self.scrub)
            if self.redacting:
                calls = redact_secrets_in(calls)
                lines = None if lines is None else redact_secrets_in(lines)
            if self.carried:
                # Stored values are under the policy already: merged after it.
                carried = dict.fromkeys((call.call_id for call in as_parsed), self.carried)
                calls = carry_stored_details(calls, as_parsed, carried, self.stored())
            self.writer.write_calls(calls, lines, again=again)
            self.writing = False
        self.calls += len(calls) - len(again)

    def stored(self) -> StoredCalls:
        """The batch's calls that have their detail, as stored before this write, read once
        in its transaction (those whose detail a call written without one keeps)."""
        assert self.writer is not None
        if self._stored is None:
            self._stored = read_stored_calls(
                self.writer.connection, self.writer.batch_id, lines=False, detailed_only=True
            )
        return self._stored

    @property
    def redacting(self) -> bool:
        """Whether the batch's strings need redacting: its body, or a body fetched while it
        is parsed (a call's detail, so far), may quote the API key."""
        return self.echoes_secret or (self.body is not None and self.body.echoes_secret)


def _parsed(fetched: FetchedBatch, batch_id: str, sink: _CallsWriter | None = None) -> ParsedBatch:
    """The fetched batch's records, parsing its body now if it was not parsed on arrival
    (handing its calls to ``sink`` in chunks); raises _ParseFailed if it cannot be parsed,
    with the reason fetching would have given."""
    if fetched.parsed is not None:
        return fetched.parsed
    assert fetched.body is not None
    try:
        return fetched.body.parse(sink)
    except CallDataRepeated:
        raise
    except BatchsyncError as exc:
        raise _ParseFailed(str(exc)) from None
    except Exception as exc:
        if sink is not None and sink.writing:
            raise  # the database's fault, or the writer's: handled as when writing
        raise _ParseFailed(_internal_error(batch_id, "fetching or parsing", exc)) from None


def _fingerprint(content_sha256: str, options: SyncOptions) -> Fingerprint:
    """What a batch fetched with this content hash would be stored from, under ``options``."""
    return Fingerprint.of(content_sha256, options.parts.tag, options.phones.tag)


def _unchanged(stored: Fingerprint | None, fetched: Fingerprint, options: SyncOptions) -> bool:
    """Whether a fetched batch needs neither parsing nor writing: the one rule for it.

    True when the stored batch was written from the same fingerprint (content, parts,
    phone-number policy, mapping version); never under --refresh, which rewrites every
    batch it fetches so that rows changed or deleted by hand are repaired.
    """
    return not options.refresh and stored is not None and stored == fetched


def _internal_error(batch_id: str, stage: str, exc: Exception) -> str:
    """The one-line reason for an unexpected exception; its traceback goes to the log (-v).

    The exception's own message is left out: it may quote payload bytes.
    """
    where = "".join(traceback.format_tb(exc.__traceback__))
    log.info("batch %s: %s while %s, at:\n%s", batch_id, type(exc).__name__, stage, where)
    return f"batch {batch_id}: internal error while {stage} ({type(exc).__name__})"


def _recordable(batch_id: str) -> str:
    """The id as both databases can hold it (see :func:`payload.recordable_id`).

    Only an id that could not be sent has NUL, lone surrogates or more than
    MAX_KEY_BYTES, and its failure must still be recorded.
    """
    return recordable_id(batch_id)


def _one_line(text: str) -> str:
    """``text`` with control characters escaped, so a reason (and an id in it) stays one line."""
    return printable(text)


def _plan(
    engine: Engine, source: BatchSource, options: SyncOptions
) -> tuple[list[str], list[str], dict[str, Fingerprint], dict[str, str]]:
    """The batches to fetch, those skipped as complete and already stored, what each
    stored batch was last written from (for the "unchanged" rule), and the listed batches
    whose list entry could not be read (id -> why), which fail without a fetch."""
    refused: dict[str, str] = {}
    if options.discover:
        listed, refused = _selected(source.iter_batches(campaign_id=options.campaign_id), options)
    else:
        listed = list(options.batch_ids)
    wanted = [b for b in dict.fromkeys(listed) if _in_shard(b, options)]
    refused = {b: why for b, why in refused.items() if _in_shard(b, options) and b not in wanted}
    try:
        with reading(engine) as connection:
            stored = stored_batches(connection)
    except DRIVER_ERRORS as exc:
        raise unavailable(engine, exc) from None
    to_fetch, skipped, fingerprints = [], [], {}
    for batch_id in wanted:
        found = stored.get(batch_id)
        if found is not None:
            fingerprints[batch_id] = found.fingerprint
            same_settings = found.fingerprint.phone_numbers == options.phones.tag and (
                options.parts.covers(found.fingerprint.fetched_parts)
            )
            if same_settings and found.complete and options.discover and not options.refresh:
                skipped.append(batch_id)
                continue
        to_fetch.append(batch_id)
    return to_fetch, skipped, fingerprints, refused


def _in_shard(batch_id: str, options: SyncOptions) -> bool:
    return options.shard is None or options.shard.owns(batch_id)


def _selected(
    summaries: Iterable[BatchSummary], options: SyncOptions
) -> tuple[list[str], dict[str, str]]:
    """The listed batches inside the --since/--until window and with the --label asked for,
    and the listed batches whose entry could not be read (id -> why): those fail unfetched.

    Every entry is checked: the list is asked for oldest first, but nothing is assumed of
    its order. A list out of that order is reported once, with a warning. Entries without
    a created_at under --since/--until, or without a label under --label, cannot be shown
    to match: they are left out and counted in one warning.
    """
    selected = []
    refused: dict[str, str] = {}
    latest: datetime | None = None
    warned = False
    undated = unlabelled = 0
    for summary in summaries:
        if summary.error is not None:
            refused.setdefault(summary.batch_id, summary.error)
            continue
        created = summary.created_at
        if created is not None:
            if latest is not None and created < latest and not warned:
                log.warning(
                    "the API listed batch %s (created %s) after one created %s: the list is "
                    "not oldest first as asked; every entry is still checked",
                    _one_line(summary.batch_id),
                    created.isoformat(),
                    latest.isoformat(),
                )
                warned = True
            latest = created if latest is None else max(latest, created)
        if (options.since or options.until) and created is None:
            undated += 1
            continue
        if options.since and created is not None and created < options.since:
            continue
        if options.until and created is not None and created >= options.until:
            continue
        if options.label is not None and summary.label is None:
            unlabelled += 1
            continue
        if options.label is not None and summary.label != options.label:
            continue
        selected.append(summary.batch_id)
    if undated:
        log.warning(
            "%d listed batch%s had no created_at and %s left out by --since/--until",
            undated,
            "" if undated == 1 else "es",
            "was" if undated == 1 else "were",
        )
    if unlabelled:
        log.warning(
            "%d listed batch%s had no label in the list and %s left out by --label",
            unlabelled,
            "" if unlabelled == 1 else "es",
            "was" if unlabelled == 1 else "were",
        )
    return selected, refused

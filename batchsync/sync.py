"""One sync run: discover -> fetch -> parse -> store -> record. Nothing else.

Each batch is fetched, then written and its outcome recorded in one transaction: a batch
lands whole or not at all. A batch that fails (not found, unreadable payload, rejected by
the database) is recorded as failed and the run goes on; an authentication failure or a
database that cannot be used stops the run. Completed batches already stored with the
requested parts are not fetched again unless ``refresh`` is set; a fetched batch whose
content is unchanged since its last write is neither parsed nor rewritten. A dry run does
all of it in transactions that are rolled back, so it reports exact row changes and writes
nothing.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from sqlalchemy import Connection, Engine

from batchsync import runs
from batchsync.client import BatchSource, FetchedBatch, Parts
from batchsync.db import DRIVER_ERRORS, describe, is_unavailable, unavailable
from batchsync.errors import (
    ApiError,
    AuthError,
    ConfigError,
    DatabaseError,
    Interrupted,
    PayloadError,
)
from batchsync.payload import BatchSummary
from batchsync.privacy import PhonePolicy, apply_phone_policy
from batchsync.runs import BatchOutcome
from batchsync.store import (
    Fingerprint,
    lock_batch,
    stored_batches,
    stored_fingerprint,
    write_batch,
)

log = logging.getLogger(__name__)


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
        digest = hashlib.blake2b(batch_id.encode(), digest_size=8).digest()
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

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")

    def as_json(self) -> dict[str, Any]:
        """The options as recorded in sync_runs.options."""
        return {
            "batch_ids": list(self.batch_ids),
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
    (discovery failed) or DatabaseError after recording the run as failed, and re-raises
    KeyboardInterrupt after recording it as interrupted.
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
            to_fetch, skipped, known = _plan(engine, source, options)
            if stop is not None and stop.is_set():
                raise Interrupted("stopped by SIGTERM before fetching any batch")
            ledger.skipped(skipped)
            result.outcomes.extend(BatchOutcome(b, runs.SKIPPED) for b in skipped)
            events.planned(len(to_fetch), len(skipped))
            for batch_id in skipped:
                events.batch_done(BatchOutcome(batch_id, runs.SKIPPED))
            for batch_id, fetched in _fetch_all(source, to_fetch, options, known):
                outcome = _store(engine, ledger, batch_id, fetched, options)
                result.outcomes.append(outcome)
                events.batch_done(outcome)
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

    def __init__(self, engine: Engine, run_id: int | None, clock: Callable[[], datetime]):
        self.engine = engine
        self.run_id = run_id
        self.clock = clock

    @classmethod
    def open(
        cls, engine: Engine, options: SyncOptions, clock: Callable[[], datetime], stack: ExitStack
    ) -> _Ledger:
        if options.dry_run:
            return cls(engine, None, clock)
        for run_id in runs.mark_abandoned(engine, clock()):
            log.warning("run %d ended without recording an outcome: marked abandoned", run_id)
        run_id = stack.enter_context(runs.started_run(engine, options.as_json(), clock()))
        return cls(engine, run_id, clock)

    def skipped(self, batch_ids: list[str]) -> None:
        if self.run_id is not None:
            runs.record_skipped(self.engine, self.run_id, batch_ids, self.clock())

    def outcome(self, connection: Connection, outcome: BatchOutcome) -> None:
        """Record a batch's outcome in the batch's own transaction."""
        if self.run_id is not None:
            runs.record_outcome(connection, self.run_id, outcome, self.clock())

    def failure(self, batch_id: str, error: str) -> BatchOutcome:
        """Record a failed batch in a transaction of its own."""
        log.error("%s", error, extra={"batch": batch_id})
        outcome = BatchOutcome(batch_id, runs.BATCH_FAILED, error=error)
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


def _fetch(
    source: BatchSource, batch_id: str, options: SyncOptions, known: dict[str, str]
) -> FetchedBatch | str:
    """The fetched batch, or why it could not be fetched (AuthError propagates)."""
    try:
        return source.fetch_batch(batch_id, options.parts, unchanged_if=known.get(batch_id))
    except AuthError:
        raise
    except (ApiError, PayloadError) as exc:
        return str(exc)


def _fetch_all(
    source: BatchSource, batch_ids: list[str], options: SyncOptions, known: dict[str, str]
) -> Iterator[tuple[str, FetchedBatch | str]]:
    """Fetch batches, up to ``options.concurrency`` at once, yielding each as it arrives.

    At most ``concurrency`` fetched batches wait in memory for the writer.
    """
    if options.concurrency == 1:
        for batch_id in batch_ids:
            yield batch_id, _fetch(source, batch_id, options, known)
        return
    pending_ids = iter(batch_ids)
    executor = ThreadPoolExecutor(options.concurrency, thread_name_prefix="batchsync-fetch")
    in_flight: dict[Future[FetchedBatch | str], str] = {}
    try:
        for batch_id in islice(pending_ids, options.concurrency):
            in_flight[executor.submit(_fetch, source, batch_id, options, known)] = batch_id
        while in_flight:
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                batch_id = in_flight.pop(future)
                for next_id in islice(pending_ids, 1):
                    in_flight[executor.submit(_fetch, source, next_id, options, known)] = next_id
                yield batch_id, future.result()
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


def _store(
    engine: Engine,
    ledger: _Ledger,
    batch_id: str,
    fetched: FetchedBatch | str,
    options: SyncOptions,
) -> BatchOutcome:
    """Write one fetched batch and its outcome in one transaction; record a failure alone."""
    if isinstance(fetched, str):
        return ledger.failure(batch_id, fetched)
    if fetched.parsed is None:  # same content as stored: not even parsed
        outcome = BatchOutcome(batch_id, runs.UNCHANGED)
        if ledger.run_id is not None and not options.dry_run:
            try:
                with engine.begin() as connection:
                    ledger.outcome(connection, outcome)
            except DRIVER_ERRORS as exc:
                raise unavailable(engine, exc) from None
        return outcome
    parsed = apply_phone_policy(fetched.parsed, options.phones)
    fingerprint = Fingerprint(fetched.content_sha256, options.parts.tag, options.phones.tag)
    calls = None if parsed.calls is None else len(parsed.calls)
    try:
        with engine.connect() as connection, connection.begin() as transaction:
            lock_batch(connection, batch_id)
            if stored_fingerprint(connection, batch_id) == fingerprint:
                outcome = BatchOutcome(batch_id, runs.UNCHANGED, calls=calls)
            else:
                changes = write_batch(
                    connection,
                    parsed,
                    run_id=ledger.run_id or 0,
                    synced_at=ledger.clock(),
                    fingerprint=fingerprint,
                )
                outcome = BatchOutcome(batch_id, runs.SYNCED, calls=calls, changes=changes)
            ledger.outcome(connection, outcome)
            if options.dry_run:
                transaction.rollback()
    except DRIVER_ERRORS as exc:
        if is_unavailable(exc):
            raise unavailable(engine, exc) from None
        # The database refused this batch's data (a constraint, a value): this batch only.
        return ledger.failure(
            batch_id, f"batch {batch_id}: the database rejected it: {describe(exc)}"
        )
    return outcome


def _plan(
    engine: Engine, source: BatchSource, options: SyncOptions
) -> tuple[list[str], list[str], dict[str, str]]:
    """The batches to fetch, those skipped as complete and already stored, and for the
    stored ones the content hash that means "unchanged, don't even parse it"."""
    if options.discover:
        listed = _selected(source.iter_batches(campaign_id=options.campaign_id), options)
    else:
        listed = list(options.batch_ids)
    wanted = [b for b in dict.fromkeys(listed) if _in_shard(b, options)]
    try:
        with engine.connect() as connection:
            stored = stored_batches(connection)
    except DRIVER_ERRORS as exc:
        raise unavailable(engine, exc) from None
    to_fetch, skipped, known = [], [], {}
    for batch_id in wanted:
        found = stored.get(batch_id)
        same_settings = (
            found is not None
            and found.fingerprint.phone_numbers == options.phones.tag
            and options.parts.covers(found.fingerprint.fetched_parts)
        )
        if found is not None and same_settings:
            if found.complete and options.discover and not options.refresh:
                skipped.append(batch_id)
                continue
            if found.fingerprint.fetched_parts == options.parts.tag:
                known[batch_id] = found.fingerprint.content_sha256
        to_fetch.append(batch_id)
    return to_fetch, skipped, known


def _in_shard(batch_id: str, options: SyncOptions) -> bool:
    return options.shard is None or options.shard.owns(batch_id)


def _selected(summaries: Iterable[BatchSummary], options: SyncOptions) -> list[str]:
    """The listed batches inside the --since/--until window and with the --label asked for."""
    selected = []
    for summary in summaries:
        created = summary.created_at
        if options.since and (created is None or created < options.since):
            continue
        if options.until and created is not None and created >= options.until:
            break  # the list comes oldest first: nothing after this is in the window
        if options.until and created is None:
            continue
        if options.label is not None and summary.label != options.label:
            continue
        selected.append(summary.batch_id)
    return selected

"""One sync run: discover -> fetch -> parse -> store -> record. Nothing else.

Each batch is fetched, then written and its outcome recorded in one transaction: a batch
lands whole or not at all. A batch that fails (not found, unreadable payload, rejected by
the database) is recorded as failed and the run goes on; an authentication failure or a
database that cannot be used stops the run. Completed batches already stored with the
requested parts are not fetched again unless ``refresh`` is set; a fetched batch whose
content is unchanged since its last write is not rewritten.
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

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

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
from batchsync.runs import BatchOutcome
from batchsync.store import completed_batches, lock_batch, stored_content_hash, write_batch

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
    shard: Shard | None = None
    concurrency: int = 1

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
            "shard": str(self.shard) if self.shard else None,
            "concurrency": self.concurrency,
        }


@dataclass
class RunResult:
    run_id: int
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


class SyncEvents:
    """Hooks for progress reporting; the default does nothing."""

    def planned(self, to_fetch: int, skipped: int) -> None:
        """Discovery is done: ``to_fetch`` batches will be fetched."""

    def batch_done(self, outcome: BatchOutcome) -> None:
        """One batch has its outcome (committed)."""


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
            _mark_abandoned(engine, clock)
            run_id = stack.enter_context(runs.started_run(engine, options.as_json(), clock()))
        except DRIVER_ERRORS as exc:
            raise unavailable(engine, exc) from None
        result = RunResult(run_id=run_id, status=runs.RUNNING, started_at=clock())
        return _run(engine, source, options, result, events, clock, stop)


def _mark_abandoned(engine: Engine, clock: Callable[[], datetime]) -> None:
    for run_id in runs.mark_abandoned(engine, clock()):
        log.warning("run %d ended without recording an outcome: marked abandoned", run_id)


def _run(
    engine: Engine,
    source: BatchSource,
    options: SyncOptions,
    result: RunResult,
    events: SyncEvents,
    clock: Callable[[], datetime],
    stop: threading.Event | None,
) -> RunResult:
    try:
        to_fetch, skipped = _plan(engine, source, options)
        runs.record_skipped(engine, result.run_id, skipped, clock())
        result.outcomes.extend(BatchOutcome(b, runs.SKIPPED) for b in skipped)
        events.planned(len(to_fetch), len(skipped))
        for batch_id, fetched in _fetch_all(source, to_fetch, options):
            outcome = _store(engine, batch_id, fetched, options, result.run_id, clock)
            result.outcomes.append(outcome)
            events.batch_done(outcome)
            if stop is not None and stop.is_set():
                raise Interrupted("stopped by SIGTERM after committing the batch in hand")
    except (KeyboardInterrupt, Interrupted) as exc:
        _finish(engine, result, runs.INTERRUPTED, clock, str(exc) or "interrupted (SIGINT)")
        raise
    except (AuthError, ApiError, PayloadError, DatabaseError) as exc:
        _finish(engine, result, runs.FAILED, clock, str(exc))
        raise
    _finish(engine, result, runs.PARTIAL if result.failed else runs.SUCCEEDED, clock)
    return result


def sync_batch(
    engine: Engine,
    source: BatchSource,
    batch_id: str,
    options: SyncOptions,
    run_id: int,
    clock: Callable[[], datetime] = utcnow,
) -> BatchOutcome:
    """Fetch one batch and write it in one transaction; a per-batch failure is recorded."""
    return _store(engine, batch_id, _fetch(source, batch_id, options), options, run_id, clock)


def _fetch(source: BatchSource, batch_id: str, options: SyncOptions) -> FetchedBatch | str:
    """The fetched batch, or why it could not be fetched (AuthError propagates)."""
    try:
        return source.fetch_batch(batch_id, options.parts)
    except AuthError:
        raise
    except (ApiError, PayloadError) as exc:
        return str(exc)


def _fetch_all(
    source: BatchSource, batch_ids: list[str], options: SyncOptions
) -> Iterator[tuple[str, FetchedBatch | str]]:
    """Fetch batches, up to ``options.concurrency`` at once, yielding each as it arrives.

    At most ``concurrency`` fetched batches wait in memory for the writer.
    """
    if options.concurrency == 1:
        for batch_id in batch_ids:
            yield batch_id, _fetch(source, batch_id, options)
        return
    pending_ids = iter(batch_ids)
    executor = ThreadPoolExecutor(options.concurrency, thread_name_prefix="batchsync-fetch")
    in_flight: dict[Future[FetchedBatch | str], str] = {}
    try:
        for batch_id in islice(pending_ids, options.concurrency):
            in_flight[executor.submit(_fetch, source, batch_id, options)] = batch_id
        while in_flight:
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                batch_id = in_flight.pop(future)
                for next_id in islice(pending_ids, 1):
                    in_flight[executor.submit(_fetch, source, next_id, options)] = next_id
                yield batch_id, future.result()
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


def _store(
    engine: Engine,
    batch_id: str,
    fetched: FetchedBatch | str,
    options: SyncOptions,
    run_id: int,
    clock: Callable[[], datetime],
) -> BatchOutcome:
    """Write one fetched batch and its outcome in one transaction; record a failure alone."""
    if isinstance(fetched, str):
        return _record_failure(engine, run_id, batch_id, fetched, clock)
    parsed = fetched.parsed
    calls = None if parsed.calls is None else len(parsed.calls)
    try:
        with engine.begin() as connection:
            lock_batch(connection, batch_id)
            if not options.refresh and (
                stored_content_hash(connection, batch_id) == fetched.content_sha256
            ):
                outcome = BatchOutcome(batch_id, runs.UNCHANGED, calls=calls)
            else:
                changes = write_batch(
                    connection,
                    parsed,
                    run_id=run_id,
                    synced_at=clock(),
                    content_sha256=fetched.content_sha256,
                    fetched_parts=options.parts.tag,
                )
                outcome = BatchOutcome(batch_id, runs.SYNCED, calls=calls, changes=changes)
            runs.record_outcome(connection, run_id, outcome, clock())
    except DRIVER_ERRORS as exc:
        if is_unavailable(exc):
            raise unavailable(engine, exc) from None
        # The database refused this batch's data (a constraint, a value): this batch only.
        return _record_failure(
            engine,
            run_id,
            batch_id,
            f"batch {batch_id}: the database rejected it: {describe(exc)}",
            clock,
        )
    log.info("batch %s: %s", batch_id, outcome.status, extra={"batch": batch_id})
    return outcome


def _plan(engine: Engine, source: BatchSource, options: SyncOptions) -> tuple[list[str], list[str]]:
    """The batches to fetch, and those skipped as completed and already stored."""
    if not options.discover:
        named = [b for b in dict.fromkeys(options.batch_ids) if _in_shard(b, options)]
        return named, []
    listed = [
        b
        for b in _in_window(source.iter_batches(campaign_id=options.campaign_id), options)
        if _in_shard(b, options)
    ]
    if options.refresh:
        return list(dict.fromkeys(listed)), []
    try:
        with engine.connect() as connection:
            stored = completed_batches(connection)
    except OperationalError as exc:
        raise unavailable(engine, exc) from None
    to_fetch, skipped = [], []
    for batch_id in dict.fromkeys(listed):
        if batch_id in stored and options.parts.covers(stored[batch_id]):
            skipped.append(batch_id)
        else:
            to_fetch.append(batch_id)
    return to_fetch, skipped


def _in_shard(batch_id: str, options: SyncOptions) -> bool:
    return options.shard is None or options.shard.owns(batch_id)


def _in_window(summaries: Iterable[BatchSummary], options: SyncOptions) -> list[str]:
    selected = []
    for summary in summaries:
        created = summary.created_at
        if options.since and (created is None or created < options.since):
            continue
        if options.until and (created is None or created >= options.until):
            continue
        selected.append(summary.batch_id)
    return selected


def _record_failure(
    engine: Engine, run_id: int, batch_id: str, error: str, clock: Callable[[], datetime]
) -> BatchOutcome:
    log.error("%s", error, extra={"batch": batch_id})
    outcome = BatchOutcome(batch_id, runs.BATCH_FAILED, error=error)
    try:
        with engine.begin() as connection:
            runs.record_outcome(connection, run_id, outcome, clock())
    except OperationalError as exc:
        raise unavailable(engine, exc) from None
    return outcome


def _finish(
    engine: Engine,
    result: RunResult,
    status: str,
    clock: Callable[[], datetime],
    error: str | None = None,
) -> None:
    result.status, result.error, result.finished_at = status, error, clock()
    try:
        runs.finish_run(engine, result.run_id, status, result.finished_at, error)
    except (OperationalError, DBAPIError) as exc:
        # The database may be what failed; the run's own error is the one to report.
        log.error("could not record the end of run %d: %s", result.run_id, unavailable(engine, exc))

"""One sync run: discover -> fetch -> parse -> store -> record. Nothing else.

Each batch is fetched, then written and its outcome recorded in one transaction: a batch
lands whole or not at all. A batch that fails (not found, unreadable payload, rejected by
the database) is recorded as failed and the run goes on; an authentication failure or a
database that cannot be used stops the run. Completed batches already stored with the
requested parts are not fetched again unless ``refresh`` is set; a fetched batch whose
content is unchanged since its last write is not rewritten.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from batchsync import runs
from batchsync.client import BatchSource, Parts
from batchsync.db import DRIVER_ERRORS, describe, is_unavailable, unavailable
from batchsync.errors import ApiError, AuthError, DatabaseError, PayloadError
from batchsync.payload import BatchSummary
from batchsync.runs import BatchOutcome
from batchsync.store import completed_batches, lock_batch, stored_content_hash, write_batch

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


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
) -> RunResult:
    """Sync the batches ``options`` names; record the run; return its result.

    Raises AuthError, ApiError (discovery failed) or DatabaseError after recording the run
    as failed, and re-raises KeyboardInterrupt after recording it as interrupted.
    """
    events = events or SyncEvents()
    result = RunResult(
        run_id=runs.start_run(engine, options.as_json(), clock()),
        status=runs.RUNNING,
        started_at=clock(),
    )
    try:
        to_fetch, skipped = _plan(engine, source, options)
        runs.record_skipped(engine, result.run_id, skipped, clock())
        result.outcomes.extend(BatchOutcome(b, runs.SKIPPED) for b in skipped)
        events.planned(len(to_fetch), len(skipped))
        for batch_id in to_fetch:
            outcome = sync_batch(engine, source, batch_id, options, result.run_id, clock)
            result.outcomes.append(outcome)
            events.batch_done(outcome)
    except KeyboardInterrupt:
        _finish(engine, result, runs.INTERRUPTED, clock, "interrupted by a signal")
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
    try:
        fetched = source.fetch_batch(batch_id, options.parts)
    except AuthError:
        raise
    except (ApiError, PayloadError) as exc:
        return _record_failure(engine, run_id, batch_id, str(exc), clock)
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
        return list(dict.fromkeys(options.batch_ids)), []
    listed = _in_window(source.iter_batches(campaign_id=options.campaign_id), options)
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

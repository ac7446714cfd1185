"""The run ledger: ``sync_runs`` and ``sync_run_batches``, written as a run goes.

A run's row is committed when it starts (status ``running``), so a process that dies
leaves a visible trace. A batch's outcome row is written in the same transaction as the
batch's data when it succeeds, and in a transaction of its own when it fails.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, func, insert, select, update

from batchsync import __version__
from batchsync.config import redact
from batchsync.models import SyncRun, SyncRunBatch
from batchsync.store import BatchChanges

RUNS: Table = SyncRun.__table__  # type: ignore[assignment]
RUN_BATCHES: Table = SyncRunBatch.__table__  # type: ignore[assignment]

# Run statuses.
RUNNING = "running"
SUCCEEDED = "succeeded"
PARTIAL = "partial"
FAILED = "failed"
INTERRUPTED = "interrupted"
ABANDONED = "abandoned"

# Batch outcomes.
SYNCED = "synced"
UNCHANGED = "unchanged"
SKIPPED = "skipped"
BATCH_FAILED = "failed"


@dataclass
class BatchOutcome:
    """What happened to one batch in a run."""

    batch_id: str
    status: str
    error: str | None = None
    calls: int | None = None
    changes: BatchChanges = field(default_factory=dict)

    def changes_json(self) -> dict[str, dict[str, int]] | None:
        if not self.changes:
            return None
        return {
            table: {"inserted": c.inserted, "updated": c.updated, "deleted": c.deleted}
            for table, c in self.changes.items()
        }


@contextmanager
def started_run(engine: Engine, options: dict[str, Any], started_at: datetime) -> Iterator[int]:
    """Record a new run as running (committed at once) and yield its id.

    For as long as the block runs, a sign that the process is alive is held: on PostgreSQL
    a session advisory lock, taken in the transaction that creates the run so nobody can
    see the run without it, and released by the server itself if the process dies; on
    SQLite the host and pid recorded with the run.
    """
    with engine.connect() as connection:
        run_id = int(
            connection.execute(
                insert(RUNS)
                .values(
                    started_at=started_at,
                    status=RUNNING,
                    options=options,
                    batches_synced=0,
                    batches_unchanged=0,
                    batches_skipped=0,
                    batches_failed=0,
                    batchsync_version=__version__,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                )
                .returning(RUNS.c.id)
            ).scalar_one()
        )
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(
                "SELECT pg_advisory_lock(%(key)s)", {"key": _lock_key(connection, run_id)}
            )
        connection.commit()  # a session lock outlives the transaction; don't sit idle in one
        yield run_id


def record_outcome(
    connection: Connection, run_id: int, outcome: BatchOutcome, finished_at: datetime
) -> None:
    """Record one batch's outcome, in the caller's transaction."""
    connection.execute(
        insert(RUN_BATCHES).values(
            run_id=run_id,
            batch_id=outcome.batch_id,
            status=outcome.status,
            error=_redacted(outcome.error),
            calls=outcome.calls,
            row_changes=outcome.changes_json(),
            finished_at=finished_at,
        )
    )


def record_skipped(
    engine: Engine, run_id: int, batch_ids: list[str], finished_at: datetime
) -> None:
    """Record batches the run did not fetch because they were complete and stored."""
    if not batch_ids:
        return
    with engine.begin() as connection:
        connection.execute(
            insert(RUN_BATCHES),
            [
                {"run_id": run_id, "batch_id": b, "status": SKIPPED, "finished_at": finished_at}
                for b in batch_ids
            ],
        )


def finish_run(
    engine: Engine, run_id: int, status: str, finished_at: datetime, error: str | None = None
) -> None:
    """Close a run: its status, end time, error and per-outcome counts from its batches."""
    counts = dict.fromkeys((SYNCED, UNCHANGED, SKIPPED, BATCH_FAILED), 0)
    with engine.begin() as connection:
        rows = connection.execute(
            select(RUN_BATCHES.c.status, func.count())
            .where(RUN_BATCHES.c.run_id == run_id)
            .group_by(RUN_BATCHES.c.status)
        )
        counts.update({status_: int(n) for status_, n in rows})
        connection.execute(
            update(RUNS)
            .where(RUNS.c.id == run_id)
            .values(
                status=status,
                finished_at=finished_at,
                error=_redacted(error),
                batches_synced=counts[SYNCED],
                batches_unchanged=counts[UNCHANGED],
                batches_skipped=counts[SKIPPED],
                batches_failed=counts[BATCH_FAILED],
            )
        )


def _redacted(error: str | None) -> str | None:
    """An error as stored: never with a secret in it, whatever text it was built from."""
    return None if error is None else redact(error)


def list_runs(engine: Engine, limit: int = 20) -> list[dict[str, Any]]:
    """The most recent runs, newest first."""
    with engine.connect() as connection:
        rows = connection.execute(select(RUNS).order_by(RUNS.c.id.desc()).limit(limit))
        return [dict(row._mapping) for row in rows]


def get_run(engine: Engine, run_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """One run and the outcome of each of its batches; None if there is no such run."""
    with engine.connect() as connection:
        run = connection.execute(select(RUNS).where(RUNS.c.id == run_id)).first()
        if run is None:
            return None
        batches = connection.execute(
            select(RUN_BATCHES)
            .where(RUN_BATCHES.c.run_id == run_id)
            .order_by(RUN_BATCHES.c.finished_at, RUN_BATCHES.c.batch_id)
        )
        return dict(run._mapping), [dict(row._mapping) for row in batches]


def _lock_key(connection: Connection, run_id: int) -> int:
    """The advisory lock key of a run, distinct per schema (runs are numbered per schema)."""
    return int(
        connection.exec_driver_sql(
            "SELECT hashtextextended('batchsync:run:' || current_schema() || ':' || %(id)s, 0)",
            {"id": str(run_id)},
        ).scalar_one()
    )


def mark_abandoned(engine: Engine, finished_at: datetime) -> list[int]:
    """Close runs still marked running whose process is gone; returns their ids."""
    abandoned = []
    with engine.begin() as connection:
        running = connection.execute(
            select(RUNS.c.id, RUNS.c.host, RUNS.c.pid).where(RUNS.c.status == RUNNING)
        ).all()
        for run_id, host, pid in running:
            if _is_dead(connection, run_id, host, pid):
                abandoned.append(run_id)
    for run_id in abandoned:
        finish_run(
            engine,
            run_id,
            ABANDONED,
            finished_at,
            "the process ended without recording an outcome (killed, or the machine stopped)",
        )
    return abandoned


def _is_dead(connection: Connection, run_id: int, host: str | None, pid: int | None) -> bool:
    if connection.dialect.name == "postgresql":
        key = _lock_key(connection, run_id)
        taken = connection.exec_driver_sql(
            "SELECT pg_try_advisory_xact_lock(%(key)s)", {"key": key}
        ).scalar_one()
        return bool(taken)
    if host != socket.gethostname() or pid is None:
        return False  # another machine's process: nothing here can tell
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, under another user
    return False

"""The run ledger: runs and their batches, abandoned runs found and closed."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from datetime import UTC, datetime

from sqlalchemy import Engine, text

from batchsync import runs
from batchsync.config import load_database
from batchsync.db import create_db_engine
from batchsync.runs import BatchOutcome
from batchsync.store import TableChanges

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_run_is_recorded_with_its_batches_and_counts(engine: Engine) -> None:
    """start, outcomes and finish give one run row with per-status counts and batch rows."""
    with runs.started_run(engine, {"all": True}, T0) as run_id:
        with engine.begin() as connection:
            runs.record_outcome(
                connection,
                run_id,
                BatchOutcome("b1", runs.SYNCED, calls=3, changes={"calls": TableChanges(3)}),
                T0,
            )
            runs.record_outcome(connection, run_id, BatchOutcome("b2", runs.BATCH_FAILED, "x"), T0)
        runs.record_skipped(engine, run_id, ["b3", "b4"], T0)
        runs.finish_run(engine, run_id, runs.PARTIAL, T0)
    recent = runs.list_runs(engine)
    assert len(recent) == 1
    run = recent[0]
    assert (
        run["status"],
        run["batches_synced"],
        run["batches_failed"],
        run["batches_skipped"],
    ) == (
        "partial",
        1,
        1,
        2,
    )
    assert run["host"] == socket.gethostname()
    found = runs.get_run(engine, run_id)
    assert found is not None
    assert {b["batch_id"]: b["status"] for b in found[1]} == {
        "b1": "synced",
        "b2": "failed",
        "b3": "skipped",
        "b4": "skipped",
    }
    assert found[1][0]["row_changes"]["calls"] == {"inserted": 3, "updated": 0, "deleted": 0}
    assert runs.get_run(engine, 999) is None


def test_live_runs_are_not_marked_abandoned(engine: Engine) -> None:
    """A run whose process is alive stays running, seen from another connection pool."""
    observer = create_db_engine(load_database(engine.url.render_as_string(hide_password=False)))
    with runs.started_run(engine, {}, T0) as run_id:
        assert runs.mark_abandoned(observer, T0) == []
        with observer.connect() as connection:
            status = connection.execute(
                text("select status from sync_runs where id = :i"), {"i": run_id}
            ).scalar_one()
        assert status == "running"
    observer.dispose()


# A process that starts a run and dies inside it, as SIGKILL would leave it: no outcome
# recorded, its database session (and, on PostgreSQL, its advisory lock) gone with it.
DIE_IN_A_RUN = """
import os, sys
from datetime import UTC, datetime
from batchsync import runs
from batchsync.config import load_database
from batchsync.db import create_db_engine
engine = create_db_engine(load_database(sys.argv[1]))
with runs.started_run(engine, {}, datetime(2026, 1, 1, tzinfo=UTC)) as run_id:
    print(run_id, flush=True)
    os._exit(0)
"""


def test_runs_of_dead_processes_are_marked_abandoned(engine: Engine) -> None:
    """A run left 'running' by a process that died is closed as abandoned by another process."""
    url = engine.url
    if engine.dialect.name == "postgresql":
        url = url.set(query={**url.query, "application_name": "batchsync-dead-run"})
    url_text = url.render_as_string(hide_password=False)
    dead = subprocess.run([sys.executable, "-c", DIE_IN_A_RUN, url_text],
                          capture_output=True, text=True, check=True)  # fmt: skip
    run_id = int(dead.stdout)
    if engine.dialect.name == "postgresql":
        wait_until_sessions_end(engine, "batchsync-dead-run")

    assert runs.mark_abandoned(engine, T0) == [run_id]
    run = runs.list_runs(engine)[0]
    assert run["status"] == "abandoned"
    assert "without recording an outcome" in run["error"]


def wait_until_sessions_end(engine: Engine, application_name: str) -> None:
    """Wait for the server to notice that a dead client's sessions are gone."""
    for _ in range(600):
        with engine.connect() as connection:
            left = connection.execute(
                text("select count(*) from pg_stat_activity where application_name = :a"),
                {"a": application_name},
            ).scalar_one()
        if left == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"the sessions of {application_name} never ended")

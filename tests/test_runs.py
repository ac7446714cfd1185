"""The run ledger: runs and their batches, abandoned runs found and closed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import UTC, datetime

from sqlalchemy import Engine, text, update

from batchsync import runs
from batchsync.runs import RUNS, BatchOutcome
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
    """A run whose process is alive stays running."""
    with runs.started_run(engine, {}, T0) as run_id:
        assert runs.mark_abandoned(engine, T0) == []
        with engine.connect() as connection:
            status = connection.execute(
                text("select status from sync_runs where id = :i"), {"i": run_id}
            ).scalar_one()
        assert status == "running"


def test_runs_of_dead_processes_are_marked_abandoned(engine: Engine) -> None:
    """A run left 'running' by a process that is gone is closed as abandoned."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    with runs.started_run(engine, {}, T0) as run_id:
        pass  # the context ends without finishing the run, like a killed process
    with engine.begin() as connection:
        connection.execute(update(RUNS).where(RUNS.c.id == run_id).values(pid=int(dead.stdout)))
    assert runs.mark_abandoned(engine, T0) == [run_id]
    run = runs.list_runs(engine)[0]
    assert run["status"] == "abandoned"
    assert "without recording an outcome" in run["error"]
    assert os.getpid() != int(dead.stdout)

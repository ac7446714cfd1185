"""Writing one batch: counts of what changed, untouched unchanged rows, exact values back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

from batchsync.payload import ParsedBatch, parse_batch
from batchsync.store import Fingerprint, TableChanges, lock_batch, stored_fingerprint, write_batch

PRINT = Fingerprint("h", "calls,transcripts,analysis", "keep")

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def payload(calls: int = 3, *, lines: int = 2) -> dict:  # type: ignore[type-arg]
    return {
        "status": "completed",
        "batch_params": {
            "id": "b1",
            "created_at": "2025-03-01T10:00:00.5+02:00",
            "label": "Renewals",
            "call_params": {"voice": "nat", "nested": {"a": [1, 2]}},
        },
        "analysis": {
            "total_calls": str(calls),
            "queue_statuses": {"complete": calls - 1, "call_error": 1},
            "error_messages": ["boom"],
            "call_lengths": {"average": 1.5, "summary": {"0-5": calls}},
            "endpoints": {"API": "3"},
        },
        "call_data": [
            {
                "c_id": f"c{i}",
                "created_at": "2025-03-01T10:01:00Z",
                "to": "+15550000000",
                "completed": True,
                "call_length": 1.25 * i,
                "answered_by": ["human"],
                "corrected_duration": "75",
                "request_data": {"k": i},
                "price": 0.1,
                "transcripts": [
                    {"id": i * 100 + j, "text": f"line {j}", "user": "user"} for j in range(lines)
                ],
            }
            for i in range(calls)
        ],
    }


def write(engine: Engine, parsed: ParsedBatch, run_id: int = 1, at: datetime = T0) -> dict:  # type: ignore[type-arg]
    with engine.begin() as connection:
        lock_batch(connection, "b1")
        return write_batch(connection, parsed, run_id=run_id, synced_at=at, fingerprint=PRINT)


def parse(raw: dict) -> ParsedBatch:  # type: ignore[type-arg]
    return parse_batch(raw, batch_id="b1")


def test_first_write_inserts_every_row(engine: Engine) -> None:
    """Writing a new batch reports every row as inserted."""
    changes = write(engine, parse(payload()))
    assert changes == {
        "batches": TableChanges(inserted=1),
        "queue_status_counts": TableChanges(inserted=2),
        "errors": TableChanges(inserted=1),
        "calls": TableChanges(inserted=3),
        "call_transcripts": TableChanges(inserted=6),
    }


def test_rewriting_the_same_batch_touches_nothing(engine: Engine) -> None:
    """Rewriting identical content updates no row: synced_at and sync_run_id stay."""
    write(engine, parse(payload()))
    changes = write(engine, parse(payload()), run_id=2, at=T0 + timedelta(days=1))
    assert all(c == TableChanges() for c in changes.values())
    with engine.connect() as connection:
        stamps = connection.execute(
            text("select distinct sync_run_id from calls union select sync_run_id from batches")
        ).scalars()
        assert set(stamps) == {1}


def test_changed_row_is_updated_and_restamped(engine: Engine) -> None:
    """A changed value updates that row only, with the new run's stamp."""
    write(engine, parse(payload()))
    raw = payload()
    raw["call_data"][1]["call_length"] = 99.0
    changes = write(engine, parse(raw), run_id=2, at=T0 + timedelta(days=1))
    assert changes["calls"] == TableChanges(updated=1)
    with engine.connect() as connection:
        rows = connection.execute(
            text("select call_id, sync_run_id, call_length from calls order by call_id")
        ).all()
    assert [tuple(r) for r in rows] == [("c0", 1, 0.0), ("c1", 2, 99.0), ("c2", 1, 2.5)]


def test_vanished_children_are_deleted_and_counted(engine: Engine) -> None:
    """Calls, lines, statuses and errors gone from the payload are deleted and counted."""
    write(engine, parse(payload(calls=3, lines=2)))
    raw = payload(calls=2, lines=1)
    raw["analysis"]["queue_statuses"] = {"complete": 2}
    raw["analysis"]["error_messages"] = []
    changes = write(engine, parse(raw), run_id=2)
    assert changes["calls"].deleted == 1
    assert changes["call_transcripts"].deleted == 4
    assert changes["queue_status_counts"] == TableChanges(deleted=1)
    assert changes["errors"].deleted == 1


def test_values_read_back_exactly(engine: Engine) -> None:
    """Timestamps come back in UTC, JSON as structures, booleans and numbers typed."""
    write(engine, parse(payload()))
    with engine.connect() as connection:
        batch = connection.execute(
            text("select created_at, call_params, endpoints, total_calls from batches")
        ).one()
        call = connection.execute(
            text(
                "select answered_by, corrected_duration, request_data, extra, completed "
                "from calls where call_id = 'c1'"
            )
        ).one()
    # Sent as 10:00:00.5+02:00: the stored instant is 08:00:00.5 UTC, converted, not relabelled.
    if engine.dialect.name == "postgresql":
        assert isinstance(batch[0], datetime)
        assert batch[0].tzinfo is not None
        assert batch[0] == datetime(2025, 3, 1, 8, 0, 0, 500000, tzinfo=UTC)
    else:
        assert batch[0] == "2025-03-01 08:00:00.500000"
    call_params = batch[1] if isinstance(batch[1], dict) else __import__("json").loads(batch[1])
    assert call_params == {"voice": "nat", "nested": {"a": [1, 2]}}
    assert batch[3] == 3
    assert call[0] == "human"
    assert call[1] == 75
    assert bool(call[4]) is True


def test_json_none_is_sql_null(engine: Engine) -> None:
    """A missing JSON value is SQL NULL, never the JSON text null."""
    raw = payload()
    del raw["batch_params"]["call_params"]
    del raw["call_data"][0]["request_data"]
    write(engine, parse(raw))
    with engine.connect() as connection:
        assert (
            connection.execute(
                text("select count(*) from batches where call_params is null and extra is null")
            ).scalar_one()
            == 1
        )
        assert (
            connection.execute(
                text("select count(*) from calls where request_data is null")
            ).scalar_one()
            == 1
        )


def test_fingerprint_is_stored(engine: Engine) -> None:
    """The fingerprint given with a write is what stored_fingerprint returns."""
    write(engine, parse(payload()))
    with engine.connect() as connection:
        assert stored_fingerprint(connection, "b1") == PRINT
        assert stored_fingerprint(connection, "other") is None


def test_batch_with_no_calls_clears_its_calls(engine: Engine) -> None:
    """An empty call_data list deletes the batch's stored calls and lines."""
    write(engine, parse(payload()))
    raw = payload()
    raw["call_data"] = []
    changes = write(engine, parse(raw), run_id=2)
    assert changes["calls"].deleted == 3
    assert changes["call_transcripts"].deleted == 6


def test_call_moving_to_a_new_batch_is_upserted_not_duplicated(engine: Engine) -> None:
    """A new batch carrying a call stored under another batch takes it over (no key clash)."""
    write(engine, parse(payload()))
    raw = payload(calls=2)
    raw["batch_params"]["id"] = "b2"
    with engine.begin() as connection:
        changes = write_batch(
            connection, parse_batch(raw, batch_id="b2"), run_id=2, synced_at=T0, fingerprint=PRINT
        )
    assert changes["calls"] == TableChanges(updated=2)
    with engine.connect() as connection:
        owners = dict(connection.execute(text("select call_id, batch_id from calls")).all())
    assert owners == {"c0": "b2", "c1": "b2", "c2": "b1"}

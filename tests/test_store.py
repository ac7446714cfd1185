"""Writing one batch: counts of what changed, untouched unchanged rows, exact values back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select, text

from batchsync.bland.http import BlandHttp
from batchsync.bland.v1 import V1Source
from batchsync.config import load_api, load_database
from batchsync.db import create_db_engine, upgrade
from batchsync.payload import ParsedBatch, parse_batch, parse_batch_body
from batchsync.store import (
    BATCHES,
    CALLS,
    ERRORS,
    TRANSCRIPTS,
    Fingerprint,
    TableChanges,
    lock_batch,
    purge,
    row_counts,
    stored_fingerprint,
    write_batch,
)
from batchsync.sync import SyncOptions, run_sync
from tests.conftest import EMULATOR_URL

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


def test_purge_dry_run_counts_what_purge_then_deletes(engine: Engine) -> None:
    """store.purge with dry_run reports the rows and keeps them; without it, they go."""
    write(engine, parse(payload(calls=3, lines=2)))
    before = row_counts(engine)

    preview = purge(engine, batch_ids=["b1"], dry_run=True)
    assert row_counts(engine) == before
    deleted = purge(engine, batch_ids=["b1"])

    assert preview == deleted
    assert deleted["batches"] == 1
    assert deleted["calls"] == 3
    assert deleted["call_transcripts"] == 6
    after = row_counts(engine)
    assert after["batches"] == after["calls"] == after["call_transcripts"] == 0


def test_purge_before_a_date_spares_newer_batches(engine: Engine) -> None:
    """store.purge(before=...) deletes only batches created before the date."""
    write(engine, parse(payload()))  # created 2025-03-01 08:00 UTC
    assert purge(engine, before=datetime(2025, 3, 1, 8, tzinfo=UTC))["batches"] == 0
    assert purge(engine, before=datetime(2025, 3, 1, 8, 1, tzinfo=UTC))["batches"] == 1


def lines_by_call(engine: Engine) -> dict[str, list[tuple[int, str, str]]]:
    """Every stored transcript line, grouped by call: (line_id, batch_id, text)."""
    with engine.connect() as connection:
        rows = connection.execute(
            text("select call_id, line_id, batch_id, text from call_transcripts order by 1, 2")
        ).all()
    grouped: dict[str, list[tuple[int, str, str]]] = {}
    for call_id, line_id, batch_id, line_text in rows:
        grouped.setdefault(call_id, []).append((line_id, batch_id, line_text))
    return grouped


def write_b2(engine: Engine, raw: dict, *, transcripts: bool = True) -> dict:  # type: ignore[type-arg]
    raw["batch_params"]["id"] = "b2"
    parsed = parse_batch(raw, batch_id="b2", transcripts_requested=transcripts)
    with engine.begin() as connection:
        lock_batch(connection, "b2")
        return write_batch(connection, parsed, run_id=2, synced_at=T0, fingerprint=PRINT)


def moved_call(line_ids: list[int]) -> dict:  # type: ignore[type-arg]
    """A batch b2 whose one call is b1's call c1, with the given transcript line ids."""
    raw = payload(calls=0)
    raw["call_data"] = [
        {"c_id": "c1", "transcripts": [{"id": i, "text": f"b2 line {i}"} for i in line_ids]}
    ]
    return raw


def test_moved_call_keeps_only_the_new_batchs_lines_when_ids_differ(engine: Engine) -> None:
    """A call moved to a batch whose lines have new ids loses every line of its old batch."""
    write(engine, parse(payload()))  # c1 holds lines 100 and 101 under b1
    changes = write_b2(engine, moved_call([500]))
    assert lines_by_call(engine)["c1"] == [(500, "b2", "b2 line 500")]
    assert changes["call_transcripts"].deleted == 2


def test_moved_call_keeps_only_the_new_batchs_lines_when_ids_overlap(engine: Engine) -> None:
    """A call moved with some of its old line ids keeps those, rewritten, and loses the rest."""
    write(engine, parse(payload()))
    write_b2(engine, moved_call([101, 102]))
    assert lines_by_call(engine)["c1"] == [(101, "b2", "b2 line 101"), (102, "b2", "b2 line 102")]


def test_moved_call_without_lines_in_the_new_batch_keeps_none(engine: Engine) -> None:
    """A call moved to a batch whose response gives it no lines keeps no line of the old one."""
    write(engine, parse(payload()))
    write_b2(engine, moved_call([]))
    assert "c1" not in lines_by_call(engine)


def test_moved_call_loses_old_lines_when_transcripts_were_not_requested(engine: Engine) -> None:
    """Without transcripts for the new batch, a moved call keeps no line of its old batch,
    while the new batch's own calls keep the lines an earlier sync stored for them."""
    write(engine, parse(payload()))  # b1: c0, c1, c2
    raw = payload(calls=0)
    raw["call_data"] = [{"c_id": "d0", "transcripts": [{"id": 900, "text": "own"}]}]
    write_b2(engine, raw)  # b2: d0 with its own line
    raw["call_data"] = [{"c_id": "d0"}, {"c_id": "c1"}]
    write_b2(engine, raw, transcripts=False)
    lines = lines_by_call(engine)
    assert "c1" not in lines
    assert lines["d0"] == [(900, "b2", "own")]
    assert lines["c0"] == [(0, "b1", "line 0"), (1, "b1", "line 1")]


def test_lines_of_calls_that_stay_are_untouched_by_another_batchs_move(engine: Engine) -> None:
    """Only the moved call's lines go: the old batch's other calls keep theirs."""
    write(engine, parse(payload()))
    write_b2(engine, moved_call([500]))
    lines = lines_by_call(engine)
    assert [line_id for line_id, _, _ in lines["c2"]] == [200, 201]
    assert all(batch_id == "b1" for _, batch_id, _ in lines["c2"])


# -- every value stored exactly, the same on both databases ------------------------------------

# A body full of values that are hard to store: integers beyond 64 bits, NUL characters and
# lone UTF-16 surrogates in text, JSON values and JSON keys, floats at the edges of the range.
ODD_BODY = rb"""{
  "status": "completed",
  "batch_params": {
    "id": "odd",
    "label": "nul \u0000 here",
    "base_prompt": "lone high \ud800 and low \udfff, a pair \ud83d\ude00, an escaped \\u0000",
    "call_params": {
      "big": 123456789012345678901234567890,
      "negative": -98765432109876543210987,
      "u64": 18446744073709551615,
      "key with nul \u0000": "value with lone \udc00",
      "floats": [1e308, -0.0, 5e-324, 1.5e-7, 1e16, 0.1, 12345.0]
    }
  },
  "analysis": {"total_calls": 1, "error_messages": ["failed \u0000 \ud800"],
               "call_lengths": {"summary": {"\udc00": 99999999999999999999}}},
  "call_data": [
    {
      "call_id": "call \u0000 one",
      "to": "+1555\ud800",
      "call_length": -0.0,
      "max_duration": 1e308,
      "corrected_duration": -2147483648,
      "request_data": {"\ud83d\ude00": "pair kept",
                       "lone \ud83d": -170141183460469231731687303715884105728},
      "price": 340282366920938463463374607431768211456,
      "note \u0000": ["\u0000", "\ud800\ud800\udc00"],
      "transcripts": [{"id": 9007199254740993, "user": "user", "text": "say \u0000 and \udfff"}]
    }
  ]
}"""

BIG = 123456789012345678901234567890
FFFD = "\ufffd"


def odd_transport(emulator: Any, *, streamed: bool) -> httpx.MockTransport:
    """The emulator, except that batch "odd" answers ODD_BODY, whole or chunked."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path != "/v1/batches/odd":
            return emulator.handle(request)  # type: ignore[no-any-return]
        if streamed:  # no Content-Length: the streaming parser, 7 bytes at a time
            chunks = [ODD_BODY[i : i + 7] for i in range(0, len(ODD_BODY), 7)]
            return httpx.Response(200, content=iter(chunks))
        return httpx.Response(200, content=ODD_BODY)

    return httpx.MockTransport(handler)


def sync_odd(database_url: str, emulator: Any, *, streamed: bool) -> dict[str, list[Any]]:
    """Sync ODD_BODY into a fresh database; every data row, bookkeeping left out."""
    engine = create_db_engine(load_database(database_url))
    try:
        upgrade(engine)
        api = load_api(EMULATOR_URL, emulator.api_key)
        with BlandHttp(api, transport=odd_transport(emulator, streamed=streamed)) as http:
            source = V1Source(http)
            result = run_sync(engine, source, SyncOptions(batch_ids=("odd",)))
        assert result.status == "succeeded", result.outcomes
        rows: dict[str, list[Any]] = {}
        with engine.connect() as connection:
            for table in (BATCHES, CALLS.table, TRANSCRIPTS.table, ERRORS.table):
                columns = [c for c in table.columns if c.name not in ("synced_at", "sync_run_id")]
                rows[str(table.name)] = [r._asdict() for r in connection.execute(select(*columns))]
        return rows
    finally:
        engine.dispose()


def exactly(value: Any) -> Any:
    """A value with its type at every level, floats by repr (-0.0 is not 0.0), keys in order."""
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, dict):
        return ("dict", sorted((key, exactly(item)) for key, item in value.items()))
    if isinstance(value, list):
        return ("list", [exactly(item) for item in value])
    return (type(value).__name__, value)


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_odd_values_are_stored_alike_on_sqlite_and_postgresql(
    sqlite_url: str, postgres_url: str, emulator: Any, streamed: bool
) -> None:
    """One body full of huge integers, NULs and lone surrogates reads back value by value the
    same from SQLite and PostgreSQL, whether it was parsed whole or as it streamed in."""
    on_sqlite = sync_odd(sqlite_url, emulator, streamed=streamed)
    on_postgres = sync_odd(postgres_url, emulator, streamed=streamed)
    for table, rows in on_sqlite.items():
        assert len(rows) == len(on_postgres[table]) == 1
        for column, value in rows[0].items():
            other = on_postgres[table][0][column]
            assert exactly(value) == exactly(other), f"{table}.{column}"


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_odd_values_keep_every_digit_and_replace_unstorable_text(
    database_url: str, emulator: Any, streamed: bool
) -> None:
    """Integers of any size keep every digit; NUL and lone surrogates become U+FFFD in text,
    JSON values and JSON keys; a valid surrogate pair and an escaped backslash stay."""
    rows = sync_odd(database_url, emulator, streamed=streamed)
    batch, call, line = rows["batches"][0], rows["calls"][0], rows["call_transcripts"][0]
    assert batch["label"] == f"nul {FFFD} here"
    assert batch["base_prompt"] == (
        f"lone high {FFFD} and low {FFFD}, a pair \U0001f600, an escaped \\u0000"
    )
    assert batch["call_params"] == {
        "big": BIG,
        "negative": -98765432109876543210987,
        "u64": 2**64 - 1,
        f"key with nul {FFFD}": f"value with lone {FFFD}",
        # jsonb keeps numbers as decimals: whole floats from 1e16 read back as ints, -0.0 as 0.0
        "floats": [10**308, 0.0, 5e-324, 1.5e-7, 10**16, 0.1, 12345.0],
    }
    assert batch["call_length_summary"] == {FFFD: 99999999999999999999}
    assert rows["errors"][0]["error_message"] == f"failed {FFFD} {FFFD}"
    assert call["call_id"] == f"call {FFFD} one"
    assert (repr(call["call_length"]), call["max_duration"]) == ("0.0", 1e308)
    assert call["corrected_duration"] == -2147483648
    assert call["to_number"] == f"+1555{FFFD}"
    assert call["request_data"] == {
        "\U0001f600": "pair kept",
        f"lone {FFFD}": -(2**127),
    }
    assert call["extra"] == {
        "price": 2**128,
        f"note {FFFD}": [FFFD, f"{FFFD}\U00010000"],
    }
    assert line["line_id"] == 9007199254740993
    assert line["text"] == f"say {FFFD} and {FFFD}"


def test_rewriting_odd_values_changes_nothing(engine: Engine) -> None:
    """Huge integers, replaced characters and edge floats compare equal to themselves when the
    same batch is written again (staged upsert on PostgreSQL, text compare on SQLite)."""
    parsed = parse_batch_body(ODD_BODY, batch_id="odd")
    for run_id in (1, 2):
        with engine.begin() as connection:
            lock_batch(connection, "odd")
            changes = write_batch(
                connection, parsed, run_id=run_id, synced_at=T0, fingerprint=PRINT
            )
    assert all(change == TableChanges() for change in changes.values()), changes


# -- first loads by plain inserts, upserts only where rows exist -------------------------------


def traced_write(engine: Engine, parsed: ParsedBatch, run_id: int) -> tuple[dict, list[str]]:  # type: ignore[type-arg]
    """Write ``parsed`` into SQLite; the changes, and every statement the driver ran."""
    statements: list[str] = []
    with engine.begin() as connection:
        driver = connection.connection.driver_connection
        assert driver is not None
        driver.set_trace_callback(statements.append)
        try:
            changes = write_batch(connection, parsed, run_id=run_id, synced_at=T0)
        finally:
            driver.set_trace_callback(None)
    return changes, statements


def upserts_into(statements: list[str], table: str) -> list[str]:
    return [s for s in statements if s.startswith(f"INSERT INTO {table} ") and "ON CONFLICT" in s]


def test_sqlite_first_load_inserts_calls_and_lines_without_upsert(sqlite_url: str) -> None:
    """A batch with no stored rows goes into SQLite by plain inserts; writing it again upserts."""
    engine = create_db_engine(load_database(sqlite_url))
    upgrade(engine)
    changes, statements = traced_write(engine, parse(payload()), run_id=1)
    assert changes["calls"] == TableChanges(inserted=3)
    assert changes["call_transcripts"] == TableChanges(inserted=6)
    assert not upserts_into(statements, "calls")
    assert not upserts_into(statements, "call_transcripts")
    assert any(s.startswith("INSERT INTO calls ") for s in statements)

    changes, statements = traced_write(engine, parse(payload()), run_id=2)
    assert changes["calls"] == TableChanges()
    assert upserts_into(statements, "calls")
    engine.dispose()


def test_first_load_with_one_moved_call_counts_it_updated_and_the_rest_inserted(
    engine: Engine,
) -> None:
    """A new batch holding one call stored under another batch and one new call: the moved
    call is taken over (updated), the new one inserted, nothing duplicated or lost."""
    write(engine, parse(payload(calls=2)))  # b1: c0, c1
    raw = payload(calls=0)
    raw["call_data"] = [
        {"c_id": "c1", "to": "+15551111111", "transcripts": [{"id": 100, "text": "moved"}]},
        {"c_id": "d0", "transcripts": [{"id": 1, "text": "new"}]},
    ]
    changes = write_b2(engine, raw)
    assert changes["calls"] == TableChanges(inserted=1, updated=1)
    assert changes["call_transcripts"] == TableChanges(inserted=1, updated=1, deleted=1)
    with engine.connect() as connection:
        owners = dict(connection.execute(text("select call_id, batch_id from calls")).all())
    assert owners == {"c0": "b1", "c1": "b2", "d0": "b2"}
    assert lines_by_call(engine)["c1"] == [(100, "b2", "moved")]
    assert lines_by_call(engine)["d0"] == [(1, "b2", "new")]

"""Whole runs through the emulator into real databases: rows, idempotence, convergence."""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import Engine, select, text

from batchsync import runs, store
from batchsync.bland.http import BlandHttp
from batchsync.bland.source import Parts
from batchsync.bland.v1 import V1Source
from batchsync.config import Secret, load_api, load_database
from batchsync.db import create_db_engine, upgrade
from batchsync.emulator import Emulator, Fault, parse_fault
from batchsync.errors import AuthError, Interrupted, PayloadError
from batchsync.models import Base
from batchsync.payload import parse_batch
from batchsync.privacy import PhoneMode, PhonePolicy
from batchsync.sync import Shard, SyncEvents, SyncOptions, run_sync
from tests.conftest import EMULATOR_URL, v1_source

DATA_TABLES = ["batches", "calls", "call_transcripts", "queue_status_counts", "errors"]
BOOKKEEPING = {"synced_at", "sync_run_id"}


def snapshot(engine: Engine, *, bookkeeping: bool = True) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every data table, sorted, for comparing whole databases."""
    tables = {t.name: t for t in Base.metadata.sorted_tables}
    result = {}
    with engine.connect() as connection:
        for name in DATA_TABLES:
            table = tables[name]
            columns = [c for c in table.columns if bookkeeping or c.name not in BOOKKEEPING]
            if not bookkeeping:
                columns = [c for c in columns if c.name != "content_sha256"]
            rows = connection.execute(select(*columns)).all()
            result[name] = sorted((tuple(r) for r in rows), key=repr)
    return result


def call_id_of(raw_call: dict[str, Any]) -> str:
    return str(raw_call.get("call_id") or raw_call.get("c_id"))


def sync_all(engine: Engine, source: V1Source, **options: Any) -> runs.BatchOutcome | Any:
    return run_sync(engine, source, SyncOptions(discover=True, **options))


def test_full_sync_stores_every_batch_call_and_line(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """A first sync stores exactly the emulator's batches, calls, lines, counts and errors."""
    result = sync_all(engine, source)

    assert result.status == runs.SUCCEEDED
    assert result.count(runs.SYNCED) == len(emulator.batch_ids())
    with engine.connect() as connection:
        for batch_id in emulator.batch_ids():
            raw = emulator.raw_batch(batch_id)
            calls = {call_id_of(c) for c in raw["call_data"]}
            stored_calls = set(
                connection.execute(
                    text("select call_id from calls where batch_id = :b"), {"b": batch_id}
                ).scalars()
            )
            assert stored_calls == calls
            lines = sum(len(c.get("transcripts") or []) for c in raw["call_data"])
            stored_lines = connection.execute(
                text("select count(*) from call_transcripts where batch_id = :b"), {"b": batch_id}
            ).scalar_one()
            assert stored_lines == lines
            statuses = connection.execute(
                text("select queue_status, count from queue_status_counts where batch_id = :b"),
                {"b": batch_id},
            ).all()
            expected: dict[str, int] = {}
            for key, value in raw["analysis"]["queue_statuses"].items():
                name = "complete" if key == "completed" else key
                expected[name] = expected.get(name, 0) + int(value)
            assert dict(statuses) == expected
            errors = connection.execute(
                text("select count(*) from errors where batch_id = :b"), {"b": batch_id}
            ).scalar_one()
            assert errors == len(raw["analysis"]["error_messages"])
            total = connection.execute(
                text("select total_calls from batches where batch_id = :b"), {"b": batch_id}
            ).scalar_one()
            assert total == int(raw["analysis"]["total_calls"])


def test_resync_of_unchanged_api_changes_nothing(engine: Engine, source: V1Source) -> None:
    """Running the same sync twice leaves every row and value as it was."""
    sync_all(engine, source)
    before = snapshot(engine)

    second = sync_all(engine, source)
    refreshed = sync_all(engine, source, refresh=True)

    assert snapshot(engine) == before
    assert second.count(runs.SYNCED) == 0
    assert second.count(runs.UNCHANGED) == len(before["batches"]) - second.count(runs.SKIPPED)
    assert refreshed.count(runs.SYNCED) == len(before["batches"])
    assert all(
        not o.changes or all(c.total == 0 for c in o.changes.values()) for o in refreshed.outcomes
    )


def test_resync_leaves_unchanged_content_unparsed(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """A re-sync of named batches whose content did not change does not even parse them."""
    ids = tuple(emulator.batch_ids())
    run_sync(engine, source, SyncOptions(batch_ids=ids))
    before = _detail_requests(emulator)

    again = run_sync(engine, source, SyncOptions(batch_ids=ids))

    assert _detail_requests(emulator) - before == len(ids)
    assert again.count(runs.UNCHANGED) == len(ids)
    assert all(o.calls is None for o in again.outcomes)  # None: never parsed


def test_refresh_rewrites_every_batch_and_repairs_rows_changed_or_deleted_by_hand(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """--refresh rewrites each fetched batch: hand-edited values and deleted rows come back."""
    sync_all(engine, source)
    before = snapshot(engine, bookkeeping=False)
    first, second = emulator.batch_ids()[:2]
    with engine.begin() as connection:
        connection.execute(
            text("update batches set label = 'edited' where batch_id = :b"), {"b": first}
        )
        connection.execute(
            text("update calls set call_length = 999 where batch_id = :b"), {"b": first}
        )
        connection.execute(text("delete from call_transcripts where batch_id = :b"), {"b": second})
        connection.execute(
            text("delete from queue_status_counts where batch_id = :b"), {"b": second}
        )
        connection.execute(text("delete from errors where batch_id = :b"), {"b": first})
    plain = run_sync(engine, source, SyncOptions(batch_ids=(first, second)))
    assert snapshot(engine, bookkeeping=False) != before  # the shortcut alone cannot see it

    refreshed = sync_all(engine, source, refresh=True)

    assert plain.count(runs.UNCHANGED) == 2
    assert refreshed.count(runs.SYNCED) == len(emulator.batch_ids())
    assert snapshot(engine, bookkeeping=False) == before
    by_id = {o.batch_id: o for o in refreshed.outcomes}
    assert by_id[first].changes["batches"].updated == 1
    assert by_id[first].changes["calls"].updated == _count(engine, "calls", first)
    assert by_id[second].changes["call_transcripts"].inserted == _count(
        engine, "call_transcripts", second
    )


def test_new_mapping_version_rewrites_batches_stored_by_the_old_one(
    engine: Engine, source: V1Source, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches stored under another mapping version are rewritten, not skipped as unchanged."""
    ids = tuple(emulator.batch_ids())
    run_sync(engine, source, SyncOptions(batch_ids=ids))
    monkeypatch.setattr(store, "MAPPING_VERSION", store.MAPPING_VERSION + 1)

    again = run_sync(engine, source, SyncOptions(batch_ids=ids))
    third = run_sync(engine, source, SyncOptions(batch_ids=ids))

    assert again.count(runs.SYNCED) == len(ids)
    assert third.count(runs.UNCHANGED) == len(ids)


def test_other_phone_policy_rewrites_batches_instead_of_skipping_them(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """The same body stored under another phone-number policy is not unchanged: it is rewritten."""
    ids = tuple(emulator.batch_ids())
    run_sync(engine, source, SyncOptions(batch_ids=ids))

    hashed = run_sync(
        engine, source, SyncOptions(batch_ids=ids, phones=PhonePolicy(PhoneMode.DROP))
    )

    assert hashed.count(runs.SYNCED) == len(ids)
    with engine.connect() as connection:
        tags = set(connection.execute(text("select phone_numbers from batches")).scalars())
    assert tags == {PhonePolicy(PhoneMode.DROP).tag}


def test_resync_converges_to_changed_api(
    engine: Engine, source: V1Source, emulator: Emulator, database_url: str, tmp_path: Any
) -> None:
    """After the API changes, a refreshing re-sync gives the rows a first sync of it would."""
    sync_all(engine, source)
    emulator.revision = 1
    result = sync_all(engine, source, refresh=True)
    assert result.status == runs.SUCCEEDED
    changed = {t for o in result.outcomes for t, c in o.changes.items() if c.total}
    assert {"calls", "call_transcripts"} <= changed

    fresh = create_db_engine(load_database(f"sqlite:///{tmp_path / 'fresh.db'}"))
    upgrade(fresh)
    sync_all(fresh, source)

    assert snapshot(engine, bookkeeping=False) == snapshot(fresh, bookkeeping=False)


def test_incremental_resync_picks_up_the_batch_in_progress(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """Without --refresh, the batch still in progress is fetched again and converges."""
    newest = emulator.batch_ids()[-1]
    sync_all(engine, source)
    emulator.revision = 1

    result = sync_all(engine, source)

    [synced] = [o for o in result.outcomes if o.status == runs.SYNCED]
    assert synced.batch_id == newest
    with engine.connect() as connection:
        status = connection.execute(
            text("select status from batches where batch_id = :b"), {"b": newest}
        ).scalar_one()
        calls = set(
            connection.execute(
                text("select call_id from calls where batch_id = :b"), {"b": newest}
            ).scalars()
        )
    assert status == "completed"
    assert calls == {call_id_of(c) for c in emulator.raw_batch(newest)["call_data"]}


def queue_statuses(raw: dict[str, Any]) -> list[str]:
    return list(raw["analysis"]["queue_statuses"])


def test_resync_removes_vanished_children(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """A queue status, an error, a transcript line and a call gone from the API are deleted."""
    batch_id = emulator.batch_ids()[1]
    sync_all(engine, source)
    raw = emulator.raw_batch(batch_id)
    gone_call = raw["call_data"].pop(0)
    with_lines = next(c for c in raw["call_data"] if c.get("transcripts"))
    gone_line = with_lines["transcripts"].pop()
    # "completed" is stored as "complete": a status spelled both ways would survive its removal.
    stored_name = {key: "complete" if key == "completed" else key for key in queue_statuses(raw)}
    gone_status = next(
        key for key, name in stored_name.items() if list(stored_name.values()).count(name) == 1
    )
    del raw["analysis"]["queue_statuses"][gone_status]
    raw["analysis"]["error_messages"] = raw["analysis"]["error_messages"][:-1]
    emulator.put_batch(raw)

    result = run_sync(engine, source, SyncOptions(batch_ids=(batch_id,)))

    assert result.status == runs.SUCCEEDED
    with engine.connect() as connection:
        q = connection.execute
        assert (
            q(
                text("select count(*) from calls where call_id = :c"), {"c": call_id_of(gone_call)}
            ).scalar_one()
            == 0
        )
        assert (
            q(
                text("select count(*) from call_transcripts where call_id = :c"),
                {"c": call_id_of(gone_call)},
            ).scalar_one()
            == 0
        )
        assert (
            q(
                text("select count(*) from call_transcripts where line_id = :l"),
                {"l": gone_line["id"]},
            ).scalar_one()
            == 0
        )
        statuses = (
            q(
                text("select queue_status from queue_status_counts where batch_id = :b"),
                {"b": batch_id},
            )
            .scalars()
            .all()
        )
        assert stored_name[gone_status] not in statuses
        assert set(statuses) == {stored_name[key] for key in queue_statuses(raw)}
        assert q(
            text("select count(*) from errors where batch_id = :b"), {"b": batch_id}
        ).scalar_one() == len(raw["analysis"]["error_messages"])


def test_no_transcripts_keeps_stored_lines_but_drops_lines_of_vanished_calls(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """--no-transcripts leaves stored lines alone, except those of calls that vanished."""
    batch_id = emulator.batch_ids()[0]
    sync_all(engine, source)
    before = _count(engine, "call_transcripts", batch_id)
    raw = emulator.raw_batch(batch_id)
    gone = next(c for c in raw["call_data"] if c.get("transcripts"))
    raw["call_data"].remove(gone)
    emulator.put_batch(raw)

    run_sync(engine, source, SyncOptions(batch_ids=(batch_id,), parts=Parts(transcripts=False)))

    assert _count(engine, "call_transcripts", batch_id) == before - len(gone["transcripts"])


def test_no_analysis_keeps_stored_analysis(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """Without the analysis, stored counts, errors and queue statuses stay as they were."""
    batch_id = emulator.batch_ids()[0]
    sync_all(engine, source)
    before = snapshot(engine)

    result = run_sync(
        engine, source, SyncOptions(batch_ids=(batch_id,), parts=Parts(analysis=False))
    )

    assert result.status == runs.SUCCEEDED
    after = snapshot(engine)
    for table in ("queue_status_counts", "errors", "calls", "call_transcripts"):
        assert after[table] == before[table]
    with engine.connect() as connection:
        total = connection.execute(
            text("select total_calls from batches where batch_id = :b"), {"b": batch_id}
        ).scalar_one()
    assert total is not None


def test_bad_payload_fails_that_batch_only(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """A batch whose payload cannot be understood fails alone; nothing of it is written."""
    bad, *good = emulator.batch_ids()
    raw = emulator.raw_batch(bad)
    del raw["call_data"][3]["call_id" if "call_id" in raw["call_data"][3] else "c_id"]
    emulator.put_batch(raw)

    result = sync_all(engine, source)

    assert result.status == runs.PARTIAL
    [failure] = result.failed
    assert failure.batch_id == bad
    assert f"batch {bad}" in (failure.error or "")
    assert "call_data[3].call_id" in (failure.error or "")
    assert _count(engine, "batches", bad) == 0
    assert _count(engine, "calls", bad) == 0
    assert all(_count(engine, "calls", b) > 0 for b in good)
    with engine.connect() as connection:
        recorded = connection.execute(
            text("select status, error from sync_run_batches where batch_id = :b"), {"b": bad}
        ).one()
        run = connection.execute(
            text("select status, batches_failed from sync_runs where id = :r"),
            {"r": result.run_id},
        ).one()
    assert recorded[0] == "failed"
    assert "call_data[3].call_id" in recorded[1]
    assert tuple(run) == ("partial", 1)


def test_database_rejection_rolls_back_the_whole_batch(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """When the database refuses a row late in a batch, none of the batch is kept."""
    victim = emulator.batch_ids()[2]
    raw = emulator.raw_batch(victim)
    with_lines = [c for c in raw["call_data"] if c.get("transcripts")]
    with_lines[-1]["transcripts"][-1]["text"] = "REFUSE-ME"
    emulator.put_batch(raw)
    _refuse_text(engine, "REFUSE-ME")

    result = sync_all(engine, source)

    assert [o.batch_id for o in result.failed] == [victim]
    assert "the database rejected it" in (result.failed[0].error or "")
    for table in ("batches", "calls", "call_transcripts", "errors", "queue_status_counts"):
        assert _count(engine, table, victim) == 0
    assert result.count(runs.SYNCED) == len(emulator.batch_ids()) - 1


def _refuse_text(engine: Engine, word: str) -> None:
    """A trigger that makes the database reject a transcript line with ``word``."""
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON call_transcripts "
                f"WHEN NEW.text = '{word}' BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
            )
        else:
            connection.exec_driver_sql(
                "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'refused by test'; END $$ LANGUAGE plpgsql"
            )
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON call_transcripts FOR EACH ROW "
                f"WHEN (NEW.text = '{word}') EXECUTE FUNCTION refuse()"
            )


def test_missing_batch_fails_alone(engine: Engine, source: V1Source, emulator: Emulator) -> None:
    """A 404 for one named batch fails that batch; the others sync."""
    ids = emulator.batch_ids()[:2]
    result = run_sync(engine, source, SyncOptions(batch_ids=(ids[0], "no-such-batch", ids[1])))

    assert result.status == runs.PARTIAL
    assert [o.batch_id for o in result.failed] == ["no-such-batch"]
    assert "not found" in (result.failed[0].error or "")
    assert result.count(runs.SYNCED) == 2


def test_rejected_key_stops_the_run_and_records_it(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """A 401 stops the run at once; the run is recorded as failed, with no key in it."""
    emulator.api_key = "another-key"
    with pytest.raises(AuthError, match="rejected the API key"):
        sync_all(engine, source)
    with engine.connect() as connection:
        status, error = connection.execute(text("select status, error from sync_runs")).one()
    assert status == "failed"
    assert "emulator-key" not in error


def test_completed_batches_are_skipped_unless_refreshed(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """With --all, completed batches already stored are not fetched again; --refresh does."""
    sync_all(engine, source)
    detail_requests = _detail_requests(emulator)

    second = sync_all(engine, source)

    fetched = _detail_requests(emulator) - detail_requests
    assert second.count(runs.SKIPPED) >= 1
    assert fetched == len(emulator.batch_ids()) - second.count(runs.SKIPPED)
    third = sync_all(engine, source, refresh=True)
    assert third.count(runs.SKIPPED) == 0


def test_wider_parts_refetch_completed_batches(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """A batch stored without transcripts is fetched again when transcripts are wanted."""
    sync_all(engine, source, parts=Parts(transcripts=False))
    assert _count(engine, "call_transcripts") == 0

    result = sync_all(engine, source)

    assert result.count(runs.SKIPPED) == 0
    assert _count(engine, "call_transcripts") > 0


def test_since_and_until_bound_discovery(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """--since/--until select batches by created_at."""
    ids = emulator.batch_ids()
    first = parse_batch(emulator.raw_batch(ids[1]), batch_id=ids[1]).batch.created_at
    last = parse_batch(emulator.raw_batch(ids[2]), batch_id=ids[2]).batch.created_at
    assert first is not None
    assert last is not None

    result = run_sync(engine, source, SyncOptions(discover=True, since=first, until=last))

    assert [o.batch_id for o in result.outcomes] == [ids[1]]


@pytest.mark.parametrize("order", ["descending", "shuffled"])
def test_unsorted_list_selects_the_same_window_and_warns_once(
    engine: Engine, sleeps: list[float], order: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A list not oldest first loses no batch of the --since/--until window; one warning says so."""
    emulator = Emulator(seed=4, batches=9, calls_per_batch=2, list_order=order)
    ids = emulator.batch_ids()
    created = [parse_batch(emulator.raw_batch(b), batch_id=b).batch.created_at for b in ids]
    source = V1Source(
        BlandHttp(load_api(EMULATOR_URL, emulator.api_key), transport=emulator.transport()),
        page_size=2,
    )

    with caplog.at_level(logging.WARNING, logger="batchsync"):
        result = run_sync(
            engine, source, SyncOptions(discover=True, since=created[2], until=created[7])
        )

    assert sorted(o.batch_id for o in result.outcomes) == sorted(ids[2:7])
    warnings = [r.getMessage() for r in caplog.records if "not oldest first" in r.getMessage()]
    assert len(warnings) == 1


def test_sorted_list_gives_no_order_warning(
    engine: Engine, source: V1Source, caplog: pytest.LogCaptureFixture
) -> None:
    """A list in the order asked for is not reported."""
    with caplog.at_level(logging.WARNING, logger="batchsync"):
        sync_all(engine, source)
    assert not [r for r in caplog.records if "not oldest first" in r.getMessage()]


def test_unsorted_label_filter_checks_every_entry(engine: Engine, sleeps: list[float]) -> None:
    """--label with a descending list with --until finds every matching batch, not the first."""
    emulator = Emulator(seed=4, batches=9, calls_per_batch=2, list_order="descending")
    ids = emulator.batch_ids()
    label = emulator.raw_batch(ids[0])["batch_params"]["label"]
    until = parse_batch(emulator.raw_batch(ids[-1]), batch_id=ids[-1]).batch.created_at
    source = V1Source(
        BlandHttp(load_api(EMULATOR_URL, emulator.api_key), transport=emulator.transport())
    )

    result = run_sync(engine, source, SyncOptions(discover=True, label=label, until=until))

    expected = {b for b in ids[:-1] if emulator.raw_batch(b)["batch_params"]["label"] == label}
    assert {o.batch_id for o in result.outcomes} == expected


def test_server_capping_page_size_loses_no_batch(engine: Engine, sleeps: list[float]) -> None:
    """A list served 2 per page when 1000 are asked still syncs every batch."""
    emulator = Emulator(seed=4, batches=7, calls_per_batch=2)
    emulator.inject(*parse_fault("*list*:page_cap:size=2"))
    source = V1Source(
        BlandHttp(load_api(EMULATOR_URL, emulator.api_key), transport=emulator.transport())
    )

    result = run_sync(engine, source, SyncOptions(discover=True))

    assert result.count(runs.SYNCED) == 7
    assert _count(engine, "batches") == 7


def _detail_requests(emulator: Emulator) -> int:
    return sum(emulator.request_count(f"/v1/batches/{b}") for b in emulator.batch_ids())


def _count(engine: Engine, table: str, batch_id: str | None = None) -> int:
    with engine.connect() as connection:
        if batch_id is None:
            return int(connection.execute(text(f"select count(*) from {table}")).scalar_one())
        return int(
            connection.execute(
                text(f"select count(*) from {table} where batch_id = :b"), {"b": batch_id}
            ).scalar_one()
        )


def test_transient_faults_are_retried_to_success(
    engine: Engine, source: V1Source, emulator: Emulator, sleeps: list[float]
) -> None:
    """429s with Retry-After and 5xx answers are retried; the batch then syncs."""
    first, second = emulator.batch_ids()[:2]
    emulator.inject(first, Fault("rate_limit", times=2, retry_after="3"))
    emulator.inject(second, Fault("server_error", times=1, status=502))

    result = run_sync(engine, source, SyncOptions(batch_ids=(first, second)))

    assert result.status == runs.SUCCEEDED
    assert emulator.request_count(f"/v1/batches/{first}") == 3
    assert emulator.request_count(f"/v1/batches/{second}") == 2
    assert sleeps[:2] == [3.0, 3.0]


def test_copy_of_payload_is_untouched_by_parsing(emulator: Emulator) -> None:
    """Parsing never mutates the payload it reads."""
    batch_id = emulator.batch_ids()[0]
    raw = emulator.raw_batch(batch_id)
    pristine = copy.deepcopy(raw)
    parse_batch(raw, batch_id=batch_id)
    assert raw == pristine


def test_dry_run_reports_changes_and_writes_nothing(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """--dry-run counts what would change, exactly, and leaves every table untouched."""
    dry = sync_all(engine, source, dry_run=True)

    assert dry.run_id is None
    assert _count(engine, "batches") == 0
    assert _count(engine, "sync_runs") == 0
    inserted = sum(o.changes["calls"].inserted for o in dry.outcomes)
    real = sync_all(engine, source)
    assert inserted == sum(o.changes["calls"].inserted for o in real.outcomes)
    before = snapshot(engine)
    emulator.revision = 1
    changed = sync_all(engine, source, refresh=True, dry_run=True)
    assert any(o.changes["calls"].total for o in changed.outcomes)
    assert snapshot(engine) == before


def test_label_filter_selects_batches(engine: Engine, source: V1Source, emulator: Emulator) -> None:
    """--label syncs only the batches with exactly that label."""
    labels = {b: emulator.raw_batch(b)["batch_params"]["label"] for b in emulator.batch_ids()}
    wanted = next(iter(labels.values()))
    result = sync_all(engine, source, label=wanted)
    assert {o.batch_id for o in result.outcomes} == {b for b, lb in labels.items() if lb == wanted}


def test_interrupted_backfill_resumes_without_refetching_committed_batches(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """A backfill stopped halfway continues with the rest; committed batches are not refetched."""
    stop = threading.Event()

    class StopAfterTwo(SyncEvents):
        done = 0

        def batch_done(self, outcome: runs.BatchOutcome) -> None:
            self.done += 1
            if self.done == 2:
                stop.set()

    with pytest.raises(Interrupted):
        run_sync(engine, source, SyncOptions(discover=True), events=StopAfterTwo(), stop=stop)
    first_two = [b for b in emulator.batch_ids() if _count(engine, "batches", b)]
    assert len(first_two) == 2
    fetched_before = {b: emulator.request_count(f"/v1/batches/{b}") for b in emulator.batch_ids()}

    result = sync_all(engine, source)

    assert result.status == runs.SUCCEEDED
    refetched = [
        b for b in first_two if emulator.request_count(f"/v1/batches/{b}") > fetched_before[b]
    ]
    in_progress = {b for b in first_two if emulator.raw_batch(b).get("status") == "in-progress"}
    assert set(refetched) <= in_progress
    assert all(_count(engine, "batches", b) for b in emulator.batch_ids())
    with engine.connect() as connection:
        statuses = connection.execute(text("select status from sync_runs order by id")).scalars()
        assert list(statuses) == ["interrupted", "succeeded"]


def test_shards_split_the_batches_without_overlap(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """Shards 0/3, 1/3 and 2/3 together sync every batch exactly once."""
    seen: list[str] = []
    for index in range(3):
        result = sync_all(engine, source, shard=Shard(index, 3))
        seen += [o.batch_id for o in result.outcomes]
    assert sorted(seen) == sorted(emulator.batch_ids())


def test_concurrent_fetching_gives_the_same_rows(
    engine: Engine, source: V1Source, emulator: Emulator, tmp_path: Any
) -> None:
    """Fetching 4 batches at once stores exactly what fetching one at a time does."""
    sync_all(engine, source, concurrency=4)
    serial = create_db_engine(load_database(f"sqlite:///{tmp_path / 'serial.db'}"))
    upgrade(serial)
    sync_all(serial, source, concurrency=1)
    assert snapshot(engine, bookkeeping=False) == snapshot(serial, bookkeeping=False)


def test_run_result_as_json_sums_changes_per_table_and_names_failures(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """RunResult.as_json counts outcomes, totals row changes per table, lists failures."""
    first = emulator.batch_ids()[0]
    result = run_sync(engine, source, SyncOptions(batch_ids=(first, "missing-batch")))
    summary = result.as_json()
    assert summary["run_id"] == result.run_id
    assert summary["status"] == runs.PARTIAL
    assert summary["batches"] == {"synced": 1, "unchanged": 0, "skipped": 0, "failed": 1}
    assert summary["failed"][0]["batch_id"] == "missing-batch"
    assert summary["tables"]["calls"]["inserted"] == len(emulator.raw_batch(first)["call_data"])
    assert summary["finished_at"] is not None


@pytest.mark.parametrize("transcripts", [True, False], ids=["transcripts", "no-transcripts"])
def test_call_moved_to_a_new_batch_keeps_only_its_new_lines_though_the_old_is_skipped(
    engine: Engine, source: V1Source, emulator: Emulator, transcripts: bool
) -> None:
    """A call that reappears in a new batch ends with exactly the new response's lines (none
    without transcripts), though its old, completed batch is skipped and never re-synced."""
    sync_all(engine, source)
    old_id = emulator.batch_ids()[1]  # completed: skipped by the next run
    raw = emulator.raw_batch(old_id)
    moved = next(c for c in raw["call_data"] if c.get("transcripts"))
    moved["transcripts"] = [{"id": 987654321, "user": "user", "text": "only this line"}]
    raw["batch_params"]["id"] = raw["batch_params"]["batch_id"] = "moved-here"
    raw["call_data"] = [moved]
    emulator.put_batch(raw)

    result = sync_all(engine, source, parts=Parts(transcripts=transcripts))

    assert {o.batch_id: o.status for o in result.outcomes}.get(old_id, runs.SKIPPED) == runs.SKIPPED
    with engine.connect() as connection:
        lines = connection.execute(
            text("select line_id, batch_id, text from call_transcripts where call_id = :c"),
            {"c": call_id_of(moved)},
        ).all()
        owner = connection.execute(
            text("select batch_id from calls where call_id = :c"), {"c": call_id_of(moved)}
        ).scalar_one()
    assert owner == "moved-here"
    expected = [(987654321, "moved-here", "only this line")] if transcripts else []
    assert [tuple(line) for line in lines] == expected


# -- large bodies: parsed and written a chunk of calls at a time, in one transaction -----------


@pytest.fixture
def chunked_source(emulator: Emulator, sleeps: list[float]) -> Iterator[V1Source]:
    """A source that saves every body unparsed, for the writer to parse 5 calls at a time."""
    api = load_api(EMULATOR_URL, emulator.api_key)
    with BlandHttp(
        api, transport=emulator.transport(), sleep=sleeps.append, stream_threshold=0
    ) as http:
        yield V1Source(http, spool_large_bodies=True, chunk_calls=5)


def synced_whole(source: V1Source, tmp_path: Any, name: str, **options: Any) -> Any:
    """Rows and run summary of a sync with bodies parsed whole, into a fresh SQLite file."""
    fresh = create_db_engine(load_database(f"sqlite:///{tmp_path / name}"))
    upgrade(fresh)
    result = sync_all(fresh, source, **options)
    rows = snapshot(fresh, bookkeeping=False)
    fresh.dispose()
    return rows, result.as_json()["tables"]


def test_batches_written_in_chunks_store_what_whole_batches_store(
    engine: Engine,
    source: V1Source,
    chunked_source: V1Source,
    emulator: Emulator,
    tmp_path: Any,
) -> None:
    """Writing each batch's calls in chunks gives the rows and the change counts of writing
    it whole, on a first load and on a refresh after the API changed."""
    first = sync_all(engine, chunked_source)
    assert first.status == runs.SUCCEEDED
    assert [o.calls for o in first.outcomes] == [12] * len(emulator.batch_ids())
    assert (snapshot(engine, bookkeeping=False), first.as_json()["tables"]) == synced_whole(
        source, tmp_path, "first.db"
    )

    emulator.revision = 1
    again = sync_all(engine, chunked_source, refresh=True)
    whole_rows, _ = synced_whole(source, tmp_path, "again.db")
    assert snapshot(engine, bookkeeping=False) == whole_rows
    assert sum(t["deleted"] for t in again.as_json()["tables"].values()) > 0


def test_fault_in_a_late_call_rolls_back_the_chunks_already_written(
    engine: Engine, chunked_source: V1Source, emulator: Emulator
) -> None:
    """A call that cannot be parsed after two chunks were written fails the batch with the
    whole parser's message, and none of its rows stays; the other batches are stored."""
    victim = emulator.batch_ids()[1]
    raw = emulator.raw_batch(victim)
    raw["call_data"][11]["completed"] = "maybe"
    emulator.put_batch(raw)
    with pytest.raises(PayloadError) as expected:
        parse_batch(raw, batch_id=victim)

    result = sync_all(engine, chunked_source)

    assert [(o.batch_id, o.error) for o in result.failed] == [(victim, str(expected.value))]
    with engine.connect() as connection:
        for table in ("batches", "calls", "call_transcripts"):
            count = connection.execute(
                text(f"select count(*) from {table} where batch_id = :b"), {"b": victim}
            ).scalar_one()
            assert count == 0, table
    assert result.count(runs.SYNCED) == len(emulator.batch_ids()) - 1


def test_call_sent_again_in_a_later_chunk_keeps_the_later_copy_and_its_lines(
    engine: Engine,
    source: V1Source,
    chunked_source: V1Source,
    emulator: Emulator,
    tmp_path: Any,
) -> None:
    """A call repeated after its first copy was written in an earlier chunk ends as the later
    copy, with only the later copy's lines, as when the batch is parsed whole."""
    victim = emulator.batch_ids()[0]
    raw = emulator.raw_batch(victim)
    first = next(c for c in raw["call_data"][:5] if len(c.get("transcripts") or []) >= 2)
    later = copy.deepcopy(first)
    later["to"] = "+15559990000"
    later["transcripts"] = [dict(later["transcripts"][0], text="said again")]
    raw["call_data"].append(later)
    emulator.put_batch(raw)

    result = sync_all(engine, chunked_source)

    assert result.status == runs.SUCCEEDED
    whole_rows, _ = synced_whole(source, tmp_path, "whole.db")
    assert snapshot(engine, bookkeeping=False) == whole_rows
    lines = [r for r in whole_rows["call_transcripts"] if r[0] == call_id_of(first)]
    assert [r[-1] for r in lines] == ["said again"]
    assert result.outcomes[0].calls == 12


def test_moved_call_in_a_later_chunk_of_a_first_load_is_taken_over(
    engine: Engine,
    source: V1Source,
    chunked_source: V1Source,
    emulator: Emulator,
    tmp_path: Any,
) -> None:
    """A batch first loaded in chunks whose later chunk holds a call stored under another
    batch takes the call over, with only its new lines, as a whole write does."""
    old, new = emulator.batch_ids()[:2]
    sync_all(engine, chunked_source)
    moved = copy.deepcopy(emulator.raw_batch(old)["call_data"][2])
    moved["transcripts"] = [{"id": 1, "user": "user", "text": "moved here"}]
    raw = emulator.raw_batch(new)
    raw["call_data"].insert(8, moved)
    emulator.put_batch(raw)
    with engine.begin() as connection:  # make the new batch's next write a first load
        for table in ("call_transcripts", "calls", "errors", "queue_status_counts", "batches"):
            connection.execute(text(f"delete from {table} where batch_id = :b"), {"b": new})

    result = sync_all(engine, chunked_source, refresh=True)

    assert result.status == runs.SUCCEEDED
    whole_rows, _ = synced_whole(source, tmp_path, "whole.db")
    assert snapshot(engine, bookkeeping=False) == whole_rows
    owners = {r[0]: r[1] for r in whole_rows["calls"]}
    assert owners[call_id_of(moved)] == new


def test_call_data_sent_twice_stores_the_last_list_when_written_in_chunks(
    engine: Engine, emulator: Emulator, sleeps: list[float], tmp_path: Any
) -> None:
    """A body with two call_data lists, the first longer than a chunk, stores the last list
    only, as a whole parse does (the writer starts over without chunks)."""
    victim = emulator.batch_ids()[0]
    raw = emulator.raw_batch(victim)
    calls = raw.pop("call_data")
    body = (
        orjson.dumps(raw)[:-1]
        + b', "call_data": '
        + orjson.dumps(calls)
        + b', "call_data": '
        + orjson.dumps(calls[:3])
        + b"}"
    )

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"/v1/batches/{victim}":
            return httpx.Response(200, content=body)
        return emulator.handle(request)  # type: ignore[no-any-return]

    def synced(into: Engine, **client_options: Any) -> dict[str, list[tuple[Any, ...]]]:
        api = load_api(EMULATOR_URL, emulator.api_key)
        transport = httpx.MockTransport(handler)
        source = v1_source(api, transport=transport, sleep=sleeps.append, **client_options)
        with source.http:
            result = run_sync(into, source, SyncOptions(batch_ids=(victim,)))
        assert result.status == runs.SUCCEEDED, result.failed
        return snapshot(into, bookkeeping=False)

    chunked = synced(engine, stream_threshold=0, spool_large_bodies=True, chunk_calls=5)
    fresh = create_db_engine(load_database(f"sqlite:///{tmp_path / 'whole.db'}"))
    upgrade(fresh)
    assert chunked == synced(fresh)
    assert len(chunked["calls"]) == 3


def test_dry_run_of_batches_written_in_chunks_reports_changes_and_writes_nothing(
    engine: Engine, chunked_source: V1Source, emulator: Emulator
) -> None:
    """A dry run whose batches are written in chunks counts every row, then rolls back
    all of them, and a real run after it stores the batches as usual."""
    dry = sync_all(engine, chunked_source, dry_run=True)
    assert dry.as_json()["tables"]["calls"]["inserted"] == 12 * len(emulator.batch_ids())
    assert all(not rows for rows in snapshot(engine).values())
    real = sync_all(engine, chunked_source)
    assert real.as_json()["tables"] == dry.as_json()["tables"]
    assert len(snapshot(engine)["calls"]) == 12 * len(emulator.batch_ids())


@pytest.mark.parametrize(
    "policy",
    [PhonePolicy(PhoneMode.HASH, Secret("k3y-ids")), PhonePolicy(PhoneMode.DROP)],
    ids=["hash", "drop"],
)
def test_a_batch_written_in_chunks_remembers_its_numbers_across_chunks(
    engine: Engine,
    source: V1Source,
    chunked_source: V1Source,
    emulator: Emulator,
    tmp_path: Any,
    policy: PhonePolicy,
) -> None:
    """Call ids that are phone numbers get one stored id per call across every chunk (drop:
    ``[phone]``, ``[phone] 2``, ... numbered through the batch, not restarted per chunk), and
    a number that only a late chunk's calls hold is still masked in the batch's label and
    error messages: the rows are those of the batch written whole."""
    batch_id = emulator.batch_ids()[0]
    raw = emulator.raw_batch(batch_id)
    numbers = [f"+1415555{index:04d}" for index in range(len(raw["call_data"]))]
    for call, number in zip(raw["call_data"], numbers, strict=True):
        call.pop("call_id", None)
        call["c_id"] = number
        call["to"] = number
    raw["batch_params"]["label"] = f"follow-up for {numbers[-1]}"
    raw["analysis"]["errors"] = [{"call_id": numbers[-1], "error_message": f"busy: {numbers[-1]}"}]
    emulator.put_batch(raw)

    result = sync_all(engine, chunked_source, phones=policy)
    assert result.status == runs.SUCCEEDED, result.failed
    whole_rows, _ = synced_whole(source, tmp_path, "whole.db", phones=policy)
    chunked_rows = snapshot(engine, bookkeeping=False)
    assert chunked_rows == whole_rows
    with engine.connect() as connection:
        ids = (
            connection.execute(
                text("select call_id from calls where batch_id = :b"), {"b": batch_id}
            )
            .scalars()
            .all()
        )
    assert len(set(ids)) == len(numbers)
    assert not any(number[2:] in repr(chunked_rows) for number in numbers)


def test_batches_written_in_chunks_are_under_the_phone_policy_like_whole_ones(
    engine: Engine,
    source: V1Source,
    chunked_source: V1Source,
    emulator: Emulator,
    tmp_path: Any,
) -> None:
    """Calls and transcript lines written in chunks are hashed and redacted exactly as when
    the batch is written whole."""
    raw = emulator.raw_batch(emulator.batch_ids()[0])
    for call in raw["call_data"]:
        for line in call.get("transcripts") or []:
            line["text"] = f"call me on {call['to']} or mail jane@example.com"
    emulator.put_batch(raw)
    policy = PhonePolicy(PhoneMode.HASH, Secret("k3y-chunks"), redact_transcripts=True)
    sync_all(engine, chunked_source, phones=policy)
    whole_rows, _ = synced_whole(source, tmp_path, "whole.db", phones=policy)
    assert snapshot(engine, bookkeeping=False) == whole_rows
    assert "jane@example.com" not in repr(whole_rows)

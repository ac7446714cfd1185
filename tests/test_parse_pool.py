"""Parsing in worker processes: the records, the errors and the end of the workers are those
of parsing in the fetching threads."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select, text

from batchsync import parse_pool, runs
from batchsync.bland.auto import build_source
from batchsync.bland.http import BlandHttp, RetryPolicy
from batchsync.cli import cli
from batchsync.config import load_api, load_database
from batchsync.db import create_db_engine, upgrade
from batchsync.emulator import Emulator, Fault
from batchsync.encoded import Dialect, Encoder, decoded
from batchsync.errors import PayloadError
from batchsync.models import SyncRunBatch
from batchsync.parse_pool import ParsePool, default_parse_workers
from batchsync.payload import parse_batch_body
from batchsync.store import row_spec
from batchsync.sync import SyncOptions, run_sync
from tests.conftest import EMULATOR_URL
from tests.test_sync import call_id_of, snapshot


@pytest.fixture(scope="module")
def pool() -> Iterator[ParsePool]:
    with ParsePool(1) as pool:
        yield pool


def quirky_body(emulator: Emulator) -> bytes:
    """An emulator batch with the API's loose types: c_id, numeric strings, a one-element
    answered_by list, an unknown field, a non-UTC timestamp, a NUL escape."""
    raw = emulator.raw_batch(emulator.batch_ids()[0])
    call = raw["call_data"][0]
    call.pop("call_id", None)
    call["c_id"] = "quirky-1"
    call["call_length"] = "2.5"
    call["corrected_duration"] = "12"
    call["answered_by"] = ["human"]
    call["shoe_size"] = {"eu": 44}
    call["created_at"] = "2024-08-23T08:17:24+02:00"
    call["status"] = "done\u0000"
    return orjson.dumps(raw)


def test_pool_gives_the_records_of_the_inline_parser(pool: ParsePool, emulator: Emulator) -> None:
    """Every emulator body, and one with the API's quirks, parse to equal records in a worker."""
    bodies = [(b, orjson.dumps(emulator.raw_batch(b))) for b in emulator.batch_ids()]
    bodies.append((emulator.batch_ids()[0], quirky_body(emulator)))
    for batch_id, body in bodies:
        for transcripts in (True, False):
            inline = parse_batch_body(body, batch_id=batch_id, transcripts_requested=transcripts)
            pooled = pool.parse_batch_body(
                body, batch_id=batch_id, transcripts_requested=transcripts
            )
            assert pooled == inline
            assert [type(c) for c in pooled.calls or []] == [type(c) for c in inline.calls or []]
            assert type(pooled.batch) is type(inline.batch)


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'{"batch_params": 3}', b'{"batch_params": {}, "call_data": {}}'],
    ids=["not-json", "a-list", "batch-params", "call-data"],
)
def test_pool_raises_the_payload_error_of_the_inline_parser(pool: ParsePool, body: bytes) -> None:
    """A body that cannot be parsed raises, from the worker, PayloadError with the same words."""
    with pytest.raises(PayloadError) as inline:
        parse_batch_body(body, batch_id="b-1")
    with pytest.raises(PayloadError) as pooled:
        pool.parse_batch_body(body, batch_id="b-1")
    assert str(pooled.value) == str(inline.value)


def test_a_worker_killed_leaves_the_pool_parsing_inline(emulator: Emulator) -> None:
    """A parser process that dies does not fail the body in hand: it is parsed in the caller."""
    batch_id = emulator.batch_ids()[0]
    body = orjson.dumps(emulator.raw_batch(batch_id))
    with ParsePool(1) as pool:
        pool.parse_batch_body(body, batch_id=batch_id)
        for pid in list(pool._executor._processes):
            os.kill(pid, signal.SIGKILL)
        pooled = pool.parse_batch_body(body, batch_id=batch_id)
    assert pooled == parse_batch_body(body, batch_id=batch_id)


def sync_with(engine: Engine, emulator: Emulator, pool: ParsePool | None, **options: Any) -> None:
    api = load_api(EMULATOR_URL, emulator.api_key)
    with BlandHttp(
        api, transport=emulator.transport(), retry=RetryPolicy(attempts=1), sleep=lambda _: None
    ) as http:
        parser = parse_batch_body if pool is None else pool.parse_batch_body
        source = build_source(http, "v1", body_parser=parser)  # as the command builds it
        run_sync(engine, source, SyncOptions(discover=True, concurrency=2, **options))


def test_sync_with_a_parse_pool_stores_the_rows_of_inline_parsing(
    engine: Engine, emulator: Emulator, pool: ParsePool, tmp_path: Path
) -> None:
    """A run whose bodies are parsed in a worker stores exactly what parsing inline stores."""
    sync_with(engine, emulator, pool)
    inline = create_db_engine(load_database(f"sqlite:///{tmp_path / 'inline.db'}"))
    upgrade(inline)
    sync_with(inline, emulator, None)
    assert snapshot(engine, bookkeeping=False) == snapshot(inline, bookkeeping=False)
    inline.dispose()


def failures(engine: Engine) -> dict[str, str | None]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(SyncRunBatch.batch_id, SyncRunBatch.error).where(
                SyncRunBatch.status == runs.BATCH_FAILED
            )
        )
        return {row.batch_id: row.error for row in rows}


@pytest.mark.parametrize("kind", ["invalid_json", "wrong_shape", "huge_number"])
def test_an_error_in_a_worker_reaches_the_ledger_in_the_inline_words(
    engine: Engine, emulator: Emulator, pool: ParsePool, tmp_path: Path, kind: str
) -> None:
    """A body a worker cannot parse fails its batch alone, recorded as parsing inline records it."""
    bad = emulator.batch_ids()[1]
    emulator.inject(bad, Fault(kind))  # type: ignore[arg-type]
    sync_with(engine, emulator, pool)
    inline = create_db_engine(load_database(f"sqlite:///{tmp_path / 'inline.db'}"))
    upgrade(inline)
    emulator.inject(bad, Fault(kind))  # type: ignore[arg-type]
    sync_with(inline, emulator, None)
    pooled, expected = failures(engine), failures(inline)
    assert list(pooled) == [bad]
    assert pooled == expected
    inline.dispose()


def test_parse_workers_is_an_option_of_sync_with_its_variable() -> None:
    """`sync --help` shows --parse-workers and BATCHSYNC_PARSE_WORKERS."""
    result = CliRunner().invoke(cli, ["sync", "--help"], terminal_width=200)
    assert "--parse-workers" in result.output
    assert "BATCHSYNC_PARSE_WORKERS" in result.output


def test_default_parse_workers_leave_one_cpu_to_the_writer() -> None:
    """The default is the usable CPUs minus one, and 0 on one CPU."""
    cpus = len(os.sched_getaffinity(0))
    assert default_parse_workers() == (cpus - 1 if cpus > 1 else 0)


def worker_pids(parent: int) -> list[int]:
    """The processes descending from ``parent`` (its workers, and the fork server's)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [parent]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds processes through /proc")
def test_a_killed_run_leaves_no_parser_process(database_url: str) -> None:
    """SIGKILL of a sync whose workers are parsing leaves none of them running."""
    emulator = Emulator(seed=5, batches=4, calls_per_batch=300)
    held = emulator.batch_ids()[2]
    emulator.inject(held, Fault("slow", delay=600))
    with emulator.serve() as server:
        env = {
            **os.environ,
            "BLAND_BASE_URL": server.url,
            "BLAND_API_KEY": emulator.api_key,
            "BATCHSYNC_DATABASE_URL": database_url,
        }
        command = ["sync", "--all", "--migrate", "--concurrency", "2", "--parse-workers", "1"]
        process = subprocess.Popen(
            [sys.executable, "-m", "batchsync", *command],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while emulator.request_count(f"/v1/batches/{held}") == 0:
                assert process.poll() is None, "the run ended before it requested the held batch"
                time.sleep(0.05)
            workers = worker_pids(process.pid)
            assert workers, "the run started no parser process"
            process.kill()
            process.wait(timeout=30)
            deadline = time.monotonic() + 30
            while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not [pid for pid in workers if alive(pid)], "parser processes outlived the run"
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_workers_parse_with_the_cyclic_collector_off(pool: ParsePool) -> None:
    """A worker's records hold no cycles: its collector stays off (see batchsync.gcpause)."""
    assert pool._executor.submit(gc.isenabled).result() is False


# -- calls and lines encoded as driver rows in the parser process (batchsync.encoded) ---------


@pytest.fixture(scope="module")
def encoding_pools() -> Iterator[dict[str, ParsePool]]:
    """One pool per database, started when first asked for."""
    pools: dict[str, ParsePool] = {}
    yield pools
    for each in pools.values():
        each.close()


@pytest.fixture
def encoding_pool(engine: Engine, encoding_pools: dict[str, ParsePool]) -> ParsePool:
    """A pool that encodes calls and lines for the engine's database."""
    dialect = engine.dialect.name
    if dialect not in encoding_pools:
        encoding_pools[dialect] = ParsePool(1, encode_for=row_spec(cast(Dialect, dialect)))
    return encoding_pools[dialect]


def sync_both(
    engine: Engine, pool: ParsePool, inline: Engine, emulator: Emulator, **options: Any
) -> None:
    """The same run into ``engine`` through ``pool`` and into ``inline`` parsing inline."""
    sync_with(engine, emulator, pool, **options)
    sync_with(inline, emulator, None, **options)


@pytest.fixture
def inline(tmp_path: Path) -> Iterator[Engine]:
    """A SQLite database written by parsing inline: what every other run must equal."""
    engine = create_db_engine(load_database(f"sqlite:///{tmp_path / 'inline.db'}"))
    upgrade(engine)
    yield engine
    engine.dispose()


def test_encoding_pool_gives_rows_not_records(encoding_pool: ParsePool, emulator: Emulator) -> None:
    """A pool asked to encode hands back the calls and lines as rows, the rest as records."""
    batch_id = emulator.batch_ids()[0]
    body = orjson.dumps(emulator.raw_batch(batch_id))
    pooled = encoding_pool.parse_batch_body(body, batch_id=batch_id)
    inline = parse_batch_body(body, batch_id=batch_id)
    assert pooled.encoded is not None
    assert pooled.calls is None
    assert pooled.transcripts is None
    assert inline.calls is not None
    assert inline.transcripts is not None
    assert len(pooled.encoded.calls) == len(inline.calls)
    assert pooled.encoded.transcripts is not None
    assert len(pooled.encoded.transcripts) == len(inline.transcripts)
    assert (
        pooled._replace(encoded=None, calls=inline.calls, transcripts=inline.transcripts) == inline
    )
    assert decoded(pooled) == inline


def test_an_encoding_pool_stores_the_rows_of_inline_parsing(
    engine: Engine, encoding_pool: ParsePool, inline: Engine, emulator: Emulator
) -> None:
    """First loads, the API's quirks, extreme numbers in JSON, then a re-sync with changed,
    vanished and moved calls: a run whose rows a parser process encoded stores exactly what
    a run parsing inline stores, on either database."""
    first, second, third = emulator.batch_ids()[:3]
    raw = orjson.loads(quirky_body(emulator))
    raw["call_data"][1]["request_data"] = {"big": 2**63 - 1, "f": 1e300, "nested": [{"x": None}]}
    raw["call_data"][2]["transcripts"] = []
    emulator.put_batch(raw)
    sync_both(engine, encoding_pool, inline, emulator)
    assert snapshot(engine, bookkeeping=False) == snapshot(inline, bookkeeping=False)

    changed = emulator.raw_batch(second)
    changed["call_data"][0]["status"] = "changed"
    del changed["call_data"][1]
    # Two calls stored under the third batch move: one to the second, one to a new batch.
    # Each is in one response only, so the result does not hang on the order of writes.
    left = emulator.raw_batch(third)
    moved, moved_to_new = left["call_data"][:2]
    del left["call_data"][:2]
    emulator.put_batch(left)
    changed["call_data"].append(moved)
    emulator.put_batch(changed)
    fresh = emulator.raw_batch(first)
    fresh["batch_params"]["id"] = fresh["batch_params"]["batch_id"] = "new-with-a-moved-call"
    fresh["call_data"] = [moved_to_new]
    emulator.put_batch(fresh)
    sync_both(engine, encoding_pool, inline, emulator, refresh=True)
    assert snapshot(engine, bookkeeping=False) == snapshot(inline, bookkeeping=False)


def test_encoded_rows_are_stamped_with_the_write_of_their_batch(
    engine: Engine, encoding_pool: ParsePool, emulator: Emulator
) -> None:
    """Every call and line row carries its batch's synced_at and the run's id, as the batch
    row does: the placeholders the parser process wrote are all replaced."""
    sync_with(engine, emulator, encoding_pool)
    with engine.connect() as connection:
        for table in ("calls", "call_transcripts"):
            mismatched = connection.execute(
                text(
                    f"select count(*) from {table} t join batches b using (batch_id)"
                    " where t.synced_at != b.synced_at or t.sync_run_id != b.sync_run_id"
                )
            ).scalar_one()
            total = connection.execute(text(f"select count(*) from {table}")).scalar_one()
            assert total > 0
            assert mismatched == 0, table


def test_an_encoded_batch_keeps_the_stored_details_of_its_calls(
    engine: Engine, encoding_pool: ParsePool, inline: Engine, emulator: Emulator
) -> None:
    """Where a stored call has its detail (an earlier --call-details run), the batch is
    written from records after all, so that the detail stays, as parsing inline keeps it."""
    sync_both(engine, encoding_pool, inline, emulator)
    batch_id = emulator.batch_ids()[0]
    call_id = call_id_of(emulator.raw_batch(batch_id)["call_data"][0])
    for each in (engine, inline):
        with each.begin() as connection:
            connection.execute(
                text(
                    "update calls set price = 1.25, summary = 'from the detail',"
                    " details_synced_at = created_at where call_id = :c"
                ),
                {"c": call_id},
            )
    sync_both(engine, encoding_pool, inline, emulator, refresh=True)
    with engine.connect() as connection:
        kept = connection.execute(
            text("select price, summary from calls where call_id = :c"), {"c": call_id}
        ).one()
    assert tuple(kept) == (1.25, "from the detail")
    assert snapshot(engine, bookkeeping=False) == snapshot(inline, bookkeeping=False)


def test_an_encoded_body_that_quotes_the_api_key_is_stored_redacted(
    engine: Engine, encoding_pool: ParsePool, emulator: Emulator
) -> None:
    """A body echoing the API key is written from records after all, with the key masked."""
    batch_id = emulator.batch_ids()[0]
    raw = emulator.raw_batch(batch_id)
    raw["call_data"][0]["request_data"] = {"echo": f"key={emulator.api_key}"}
    raw["call_data"][0]["transcripts"] = [{"id": 1, "user": "user", "text": emulator.api_key}]
    emulator.put_batch(raw)
    sync_with(engine, emulator, encoding_pool)
    stored = repr(snapshot(engine))
    assert emulator.api_key not in stored
    assert "***" in stored


@pytest.mark.parametrize(
    ("field", "value"),
    [("corrected_duration", 2**40), ("status", "nul\u0000inside"), ("max_duration", 1e309)],
    ids=["int4-overflow", "nul", "float-overflow"],
)
def test_a_value_the_driver_refuses_fails_as_it_does_without_encoding(
    engine: Engine,
    encoding_pool: ParsePool,
    inline: Engine,
    emulator: Emulator,
    field: str,
    value: Any,
) -> None:
    """A value no row can be made of reaches the writer as a record: the batch gets the
    outcome and the words it gets when parsed inline, and the other batches are written."""
    bad = emulator.batch_ids()[1]
    raw = emulator.raw_batch(bad)
    raw["call_data"][0][field] = value
    emulator.put_batch(raw)
    sync_both(engine, encoding_pool, inline, emulator)
    assert failures(engine) == failures(inline)
    assert snapshot(engine, bookkeeping=False) == snapshot(inline, bookkeeping=False)


class _RefusingEncoder(Encoder):
    """An encoder meeting a value it cannot format (the parser lets none through today)."""

    def encode(self, field: str, records: Any) -> Any:
        raise ValueError("int too large to convert")


def test_rows_that_cannot_be_encoded_go_back_as_records(emulator: Emulator) -> None:
    """Where encoding fails, the worker hands back the records, for the writer to meet the
    value with the outcome and words of a batch written from records."""
    batch_id = emulator.batch_ids()[0]
    body = orjson.dumps(emulator.raw_batch(batch_id))
    inline = parse_batch_body(body, batch_id=batch_id)
    packed = parse_pool._packed(inline, _RefusingEncoder(row_spec("sqlite")))
    back = parse_pool._unpacked(packed)
    assert back.encoded is None
    assert back == inline


def test_text_is_stored_as_sent_whatever_the_client_encoding_says(
    engine: Engine,
    encoding_pool: ParsePool,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PGCLIENTENCODING=LATIN1 in the environment changes nothing: rows made in a parser
    process and JSON columns are UTF-8, and so is every batchsync connection."""
    monkeypatch.setenv("PGCLIENTENCODING", "LATIN1")
    batch_id = emulator.batch_ids()[0]
    raw = emulator.raw_batch(batch_id)
    raw["call_data"][0]["error_message"] = "café crème"
    raw["call_data"][0]["request_data"] = {"greeting": "naïve Grüße"}
    raw["call_data"][0]["transcripts"] = [{"id": 7, "user": "user", "text": "Grüße, señor"}]
    emulator.put_batch(raw)
    call_id = call_id_of(raw["call_data"][0])
    url = engine.url.render_as_string(hide_password=False)
    fresh = create_db_engine(load_database(url))  # connections made under the variable
    try:
        sync_with(fresh, emulator, encoding_pool)
        with fresh.connect() as connection:
            error, request = connection.execute(
                text("select error_message, request_data from calls where call_id = :c"),
                {"c": call_id},
            ).one()
            line = connection.execute(
                text("select text from call_transcripts where call_id = :c"), {"c": call_id}
            ).scalar_one()
    finally:
        fresh.dispose()
    if isinstance(request, str):  # SQLite gives JSON columns back as their text
        request = orjson.loads(request)
    assert (error, request, line) == ("café crème", {"greeting": "naïve Grüße"}, "Grüße, señor")

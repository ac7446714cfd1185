"""Every batch stands alone: a fault of one batch fails that batch, never the run.

Each kind of fault a real server produces is injected through the emulator into a whole run
on SQLite and PostgreSQL: the run goes on, the batch is recorded failed with a one-line
reason naming it, every other batch is stored whole. Only an API that stops answering
stops the run.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from batchsync import runs
from batchsync.bland.http import BlandHttp, RetryPolicy
from batchsync.bland.v1 import V1Source
from batchsync.config import load_api
from batchsync.emulator import Emulator, Fault
from batchsync.errors import ApiUnavailable
from batchsync.payload import MAX_KEY_BYTES
from batchsync.sync import UNREACHABLE_BATCHES_LIMIT, RunResult, SyncOptions, run_sync
from tests.conftest import EMULATOR_URL


def make_source(
    transport: httpx.BaseTransport, sleeps: list[float], *, attempts: int = 3
) -> V1Source:
    http = BlandHttp(
        load_api(EMULATOR_URL, "emulator-key"),
        transport=transport,
        retry=RetryPolicy(attempts=attempts),
        sleep=sleeps.append,
    )
    return V1Source(http)


def recorded(engine: Engine, run_id: int | None) -> dict[str, tuple[str, str | None]]:
    """sync_run_batches of one run: batch id -> (status, error)."""
    with engine.connect() as connection:
        rows = connection.execute(
            text("select batch_id, status, error from sync_run_batches where run_id = :r"),
            {"r": run_id},
        ).all()
    return {batch_id: (status, error) for batch_id, status, error in rows}


def run_status(engine: Engine, run_id: int | None) -> tuple[str, str | None]:
    with engine.connect() as connection:
        row = connection.execute(
            text("select status, error from sync_runs where id = :r"), {"r": run_id}
        ).one()
    return row[0], row[1]


def stored_calls(engine: Engine, batch_id: str) -> set[str]:
    with engine.connect() as connection:
        return set(
            connection.execute(
                text("select call_id from calls where batch_id = :b"), {"b": batch_id}
            ).scalars()
        )


def assert_stored_whole(engine: Engine, emulator: Emulator, batch_id: str) -> None:
    """The batch and exactly its calls and transcript lines are stored."""
    raw = emulator.raw_batch(batch_id)
    calls = {str(c.get("call_id") or c.get("c_id")) for c in raw["call_data"]}
    lines = sum(len(c.get("transcripts") or []) for c in raw["call_data"])
    with engine.connect() as connection:
        stored_lines = connection.execute(
            text("select count(*) from call_transcripts where batch_id = :b"), {"b": batch_id}
        ).scalar_one()
        batches = connection.execute(
            text("select count(*) from batches where batch_id = :b"), {"b": batch_id}
        ).scalar_one()
    assert batches == 1
    assert stored_calls(engine, batch_id) == calls
    assert stored_lines == lines


def assert_failed_alone(
    engine: Engine, emulator: Emulator, result: RunResult, victim: str, *reason: str
) -> None:
    """The victim failed with a one-line reason naming it; everything else is stored whole."""
    assert result.status == runs.PARTIAL
    [failure] = result.failed
    assert failure.batch_id == victim
    error = failure.error or ""
    assert "\n" not in error
    assert f"batch {victim}" in error
    for part in reason:
        assert part in error
    assert recorded(engine, result.run_id)[victim] == (runs.BATCH_FAILED, error)
    assert run_status(engine, result.run_id) == (runs.PARTIAL, None)
    assert stored_calls(engine, victim) == set()
    for batch_id in emulator.batch_ids():
        if batch_id != victim:
            assert_stored_whole(engine, emulator, batch_id)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Fault("wrong_encoding"), ("field (body)", "Content-Encoding", "gzip")),
        (Fault("bad_escape"), ("field (body)",)),
        (Fault("huge_number"), ()),
        (Fault("truncated"), ("field (body)",)),
    ],
    ids=lambda value: value.kind if isinstance(value, Fault) else "",
)
def test_a_body_fault_fails_its_batch_and_the_run_goes_on(
    engine: Engine,
    source: V1Source,
    emulator: Emulator,
    fault: Fault,
    reason: tuple[str, ...],
) -> None:
    """A wrong Content-Encoding, an invalid escape, an unstorable number: that batch fails alone."""
    victim = emulator.batch_ids()[1]
    emulator.inject(victim, fault)

    result = run_sync(engine, source, SyncOptions(discover=True))

    assert_failed_alone(engine, emulator, result, victim, *reason)
    assert result.count(runs.SYNCED) == len(emulator.batch_ids()) - 1


def test_a_lone_surrogate_escape_never_ends_the_run(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """A \\ud800 escape in a label either fails that batch alone or is stored as U+FFFD."""
    victim = emulator.batch_ids()[2]
    emulator.inject(victim, Fault("lone_surrogate"))

    result = run_sync(engine, source, SyncOptions(discover=True))

    if result.failed:
        assert_failed_alone(engine, emulator, result, victim)
    else:
        with engine.connect() as connection:
            label = connection.execute(
                text("select label from batches where batch_id = :b"), {"b": victim}
            ).scalar_one()
        assert label.endswith("\ufffd")
    for batch_id in emulator.batch_ids():
        if batch_id != victim:
            assert_stored_whole(engine, emulator, batch_id)


SPECIAL_IDS = [
    "a/b",
    "q?x=1&y=2",
    "frag#ment",
    "100%25%",
    "with space",
    "tab\tand\nnewline",
    "bell\x07",
    "caf\u00e9-\u6771\u4eac-\U0001f4de",
    "..",
    "+plus+",
]


def _put_batches(emulator: Emulator, ids: list[str]) -> None:
    """Serve a copy of the emulator's first batch under each id."""
    template = emulator.raw_batch(emulator.batch_ids()[0])
    for number, batch_id in enumerate(ids):
        raw = dict(template, batch_params={**template["batch_params"], "id": batch_id})
        raw["batch_params"]["created_at"] = f"2026-01-01T00:00:{number:02d}+00:00"
        for call in raw["call_data"]:  # each copy's calls are its own
            for key in ("call_id", "c_id"):
                if key in call:
                    call[key] = f"{call[key]}-{number}"
            for line in call.get("transcripts") or []:
                line["id"] = line["id"] + 1000 * (number + 1)
        emulator.put_batch(raw)


def test_ids_with_url_special_or_unprintable_characters_are_synced_whole(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """Ids holding '/', '?', '#', '%', spaces, control characters or any script sync as data."""
    special = [i for i in SPECIAL_IDS if i != ".."]  # ".." cannot be a URL path segment
    _put_batches(emulator, special)

    result = run_sync(engine, source, SyncOptions(discover=True))

    assert result.status == runs.SUCCEEDED, [o.error for o in result.failed]
    with engine.connect() as connection:
        stored = set(connection.execute(text("select batch_id from batches")).scalars())
    assert set(special) <= stored
    for batch_id in special:
        assert_stored_whole(engine, emulator, batch_id)


@pytest.mark.parametrize(
    ("bad_id", "shown"),
    [("", "''"), ("   ", "'   '"), ("a\x00b", "'a\\x00b'"), ("..", "'..'"), ("\ud800x", "x")],
)
def test_ids_that_cannot_be_sent_fail_their_batch_with_a_clear_reason(
    engine: Engine, source: V1Source, emulator: Emulator, bad_id: str, shown: str
) -> None:
    """A blank, NUL-holding, dot-segment or non-Unicode id fails alone, recorded; others sync."""
    good = emulator.batch_ids()[:2]

    result = run_sync(engine, source, SyncOptions(batch_ids=(good[0], bad_id, good[1])))

    assert result.status == runs.PARTIAL
    [failure] = result.failed
    assert "cannot" in (failure.error or "") or "not valid Unicode" in (failure.error or "")
    assert shown in (failure.error or "")
    assert (failure.error or "").isprintable()
    assert result.count(runs.SYNCED) == 2
    recorded_ids = recorded(engine, result.run_id)
    assert [status for status, _ in recorded_ids.values()].count(runs.BATCH_FAILED) == 1
    for batch_id in good:
        assert_stored_whole(engine, emulator, batch_id)


def test_a_listed_id_with_nul_fails_alone_during_discovery(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """A listed id holding NUL is decoded like a detail body (NUL -> U+FFFD), so that id is
    asked for and fails alone (recorded); the other batches sync."""
    _put_batches(emulator, ["nul\x00id"])

    result = run_sync(engine, source, SyncOptions(discover=True))

    assert [o.batch_id for o in result.failed] == ["nul\ufffdid"]
    assert "not found" in (result.failed[0].error or "")
    assert recorded(engine, result.run_id)["nul\ufffdid"][0] == runs.BATCH_FAILED
    assert result.count(runs.SYNCED) == len(emulator.batch_ids()) - 1


def test_a_database_refusal_fails_its_batch_and_the_run_goes_on(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """Data the database refuses (a trigger here) fails that batch alone, recorded with why."""
    victim = emulator.batch_ids()[0]
    raw = emulator.raw_batch(victim)
    raw["batch_params"]["label"] = "REFUSE-ME"
    emulator.put_batch(raw)
    _refuse_label(engine, "REFUSE-ME")

    result = run_sync(engine, source, SyncOptions(discover=True))

    assert_failed_alone(engine, emulator, result, victim, "the database rejected it")


def test_a_value_refused_as_too_large_fails_its_batch_not_the_run(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """A refusal PostgreSQL raises as an OperationalError (54000, index row too large) or
    SQLite as a plain abort fails that batch alone; the run goes on and ends partial."""
    victim = emulator.batch_ids()[0]
    raw = emulator.raw_batch(victim)
    raw["batch_params"]["label"] = "TOO-LARGE"
    emulator.put_batch(raw)
    _refuse_label(engine, "TOO-LARGE", errcode="program_limit_exceeded")

    result = run_sync(engine, source, SyncOptions(discover=True))

    assert_failed_alone(engine, emulator, result, victim, "the database rejected it")


def _refuse_label(engine: Engine, word: str, *, errcode: str = "raise_exception") -> None:
    """A trigger that makes the database reject a batch whose label is ``word`` (on
    PostgreSQL with the SQLSTATE condition ``errcode``)."""
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON batches "
                f"WHEN NEW.label = '{word}' BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
            )
        else:
            connection.exec_driver_sql(
                "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
                f"RAISE EXCEPTION 'refused by test' USING ERRCODE = '{errcode}'; END $$ "
                "LANGUAGE plpgsql"
            )
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON batches FOR EACH ROW "
                f"WHEN (NEW.label = '{word}') EXECUTE FUNCTION refuse()"
            )


def _raising_for(emulator: Emulator, batch_id: str, error: Exception) -> httpx.MockTransport:
    """The emulator, except that fetching ``batch_id`` raises ``error`` inside the client."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"/v1/batches/{batch_id}":
            raise error
        return emulator.handle(request)

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(
    "error",
    [UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), ValueError("odd")],
    ids=["UnicodeDecodeError", "ValueError"],
)
def test_an_unexpected_exception_fails_its_batch_as_an_internal_error(
    engine: Engine,
    emulator: Emulator,
    sleeps: list[float],
    caplog: pytest.LogCaptureFixture,
    error: Exception,
) -> None:
    """An exception batchsync has no rule for fails that batch only, its traceback logged."""
    victim = emulator.batch_ids()[1]
    source = make_source(_raising_for(emulator, victim, error), sleeps)

    with caplog.at_level(logging.INFO, logger="batchsync"):
        result = run_sync(engine, source, SyncOptions(discover=True))

    name = type(error).__name__
    assert_failed_alone(
        engine, emulator, result, victim, f"internal error while fetching or parsing ({name})"
    )
    assert "\\xff" not in (result.failed[0].error or "")  # no payload byte quoted
    assert any(f"{name} while fetching or parsing, at:" in r.getMessage() for r in caplog.records)


def _down_for(emulator: Emulator, down: Callable[[str], bool]) -> httpx.MockTransport:
    """The emulator, with connections refused for the batches ``down`` names."""

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.startswith("/v1/batches/") and down(path.rsplit("/", 1)[1]):
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return emulator.handle(request)

    return httpx.MockTransport(handle)


def test_api_dying_after_the_first_batch_stops_the_run_with_api_unavailable(
    engine: Engine, sleeps: list[float]
) -> None:
    """After N batches in a row find the API down, the run stops; the rest are not tried."""
    emulator = Emulator(seed=5, batches=7, calls_per_batch=3)
    emulator.inject("*", Fault("api_down", after=1))
    source = make_source(emulator.transport(), sleeps, attempts=3)
    ids = emulator.batch_ids()

    with pytest.raises(ApiUnavailable, match=f"did not answer for {UNREACHABLE_BATCHES_LIMIT}"):
        run_sync(engine, source, SyncOptions(batch_ids=tuple(ids)))

    details = [r.url.path for r in emulator.requests if r.url.path != "/v1/batches"]
    tried = 1 + UNREACHABLE_BATCHES_LIMIT
    assert len(details) == 1 + 3 * UNREACHABLE_BATCHES_LIMIT  # 3 attempts per dead batch
    assert {p.rsplit("/", 1)[1] for p in details} == set(ids[:tried])
    assert_stored_whole(engine, emulator, ids[0])
    with engine.connect() as connection:
        run_id = connection.execute(text("select max(id) from sync_runs")).scalar_one()
    status, error = run_status(engine, run_id)
    assert status == runs.FAILED
    left = len(ids) - tried
    assert f"{left} batch{'' if left == 1 else 'es'} not tried" in (error or "")
    batches = recorded(engine, run_id)
    assert set(batches) == set(ids[:tried])
    for batch_id in ids[1:tried]:
        assert batches[batch_id][0] == runs.BATCH_FAILED
        assert "cannot reach" in (batches[batch_id][1] or "")


def test_unreachable_batches_separated_by_answers_do_not_stop_the_run(
    engine: Engine, sleeps: list[float]
) -> None:
    """Fewer than N unreachable batches in a row, with answers between, leave the run going."""
    emulator = Emulator(seed=5, batches=7, calls_per_batch=3)
    ids = emulator.batch_ids()
    down = {ids[i] for i in range(len(ids)) if i % 3 != 0}  # two down, one up, ...
    source = make_source(_down_for(emulator, down.__contains__), sleeps, attempts=2)

    result = run_sync(engine, source, SyncOptions(batch_ids=tuple(ids)))

    assert result.status == runs.PARTIAL
    assert {o.batch_id for o in result.failed} == down
    for batch_id in set(ids) - down:
        assert_stored_whole(engine, emulator, batch_id)


def test_a_not_found_batch_between_unreachable_ones_resets_the_count(
    engine: Engine, sleeps: list[float]
) -> None:
    """A batch the API answers (even 404) shows the API is up: the count starts again."""
    emulator = Emulator(seed=5, batches=6, calls_per_batch=3)
    ids = emulator.batch_ids()
    down = set(ids[:2]) | set(ids[3:5])
    emulator.remove_batch(ids[2])
    source = make_source(_down_for(emulator, down.__contains__), sleeps, attempts=1)

    result = run_sync(engine, source, SyncOptions(batch_ids=tuple(ids)))

    assert {o.batch_id for o in result.failed} == down | {ids[2]}
    assert result.count(runs.SYNCED) == 1


def test_concurrent_fetching_also_stops_when_the_api_dies(
    engine: Engine, sleeps: list[float]
) -> None:
    """With several fetches in flight, an API that dies still stops the run with exit 5.

    The two batches fetched before it died may be written after failures (results come in
    the order fetches finish), each starting the count again: at most 2 + 3 x 3 results
    are read, and 3 more are in flight, 12 of the 20 batches at worst.
    """
    emulator = Emulator(seed=5, batches=20, calls_per_batch=2)
    emulator.inject("*", Fault("api_down", after=2))
    source = make_source(emulator.transport(), sleeps, attempts=2)

    with pytest.raises(ApiUnavailable):
        run_sync(
            engine,
            source,
            SyncOptions(discover=False, batch_ids=tuple(emulator.batch_ids()), concurrency=3),
        )

    tried = {r.url.path for r in emulator.requests}
    assert len(tried) < len(emulator.batch_ids())


@pytest.mark.parametrize("where", ["label", "transcript", "request_data"])
def test_a_nul_character_never_ends_the_run(
    engine: Engine, source: V1Source, emulator: Emulator, where: str
) -> None:
    """NUL in text or JSON (PostgreSQL refuses it as is) fails that batch alone or is replaced."""
    victim = emulator.batch_ids()[1]
    raw = emulator.raw_batch(victim)
    if where == "label":
        raw["batch_params"]["label"] = "nul\x00here"
    elif where == "transcript":
        call = next(c for c in raw["call_data"] if c.get("transcripts"))
        call["transcripts"][0]["text"] = "nul\x00here"
    else:
        raw["call_data"][0]["request_data"] = {"note": "nul\x00here"}
    emulator.put_batch(raw)

    result = run_sync(engine, source, SyncOptions(discover=True))

    if result.failed:
        assert_failed_alone(engine, emulator, result, victim)
    else:
        assert result.status == runs.SUCCEEDED
    for batch_id in emulator.batch_ids():
        if batch_id != victim:
            assert_stored_whole(engine, emulator, batch_id)


def test_detail_without_id_is_stored_as_requested_and_one_for_another_batch_fails(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """No id in the detail: the batch requested. Another batch's id: that batch fails alone."""
    template = emulator.raw_batch(emulator.batch_ids()[0])
    missing = {**template, "batch_params": dict(template["batch_params"])}
    del missing["batch_params"]["id"]
    emulator.put_batch(missing, batch_id="no-id-in-detail")
    other = {**template, "batch_params": {**template["batch_params"], "id": "someone-else"}}
    emulator.put_batch(other, batch_id="mismatched")

    result = run_sync(engine, source, SyncOptions(batch_ids=("no-id-in-detail", "mismatched")))

    assert [o.batch_id for o in result.failed] == ["mismatched"]
    assert "batch mismatched, field batch_params.id" in (result.failed[0].error or "")
    assert recorded(engine, result.run_id)["mismatched"][0] == runs.BATCH_FAILED
    assert stored_calls(engine, "no-id-in-detail") == {
        str(c.get("call_id") or c.get("c_id")) for c in template["call_data"]
    }


def _incompressible(size: int, seed: str) -> str:
    """``size`` bytes of hex text that no index compression shrinks."""
    text = "".join(hashlib.sha256(f"{seed}{i}".encode()).hexdigest() for i in range(size // 64 + 1))
    return text[:size]


def _with_indexed_values(raw: dict[str, Any], size: int, where: str) -> None:
    """Put a ``size``-byte value at ``where``: a call id, answered_by or a queue status name."""
    call = raw["call_data"][0]
    value = _incompressible(size, where)
    if where == "call_id":
        call.pop("c_id", None)
        call["call_id"] = value
        for line in call.get("transcripts") or []:
            line.pop("call_id", None)
    elif where == "answered_by":
        call["answered_by"] = value
    else:
        raw["analysis"]["queue_statuses"] = {value: 1}


@pytest.mark.parametrize("where", ["call_id", "answered_by", "queue_statuses"])
def test_an_indexed_value_over_the_key_limit_fails_its_batch_naming_the_field(
    engine: Engine, source: V1Source, emulator: Emulator, where: str
) -> None:
    """A 3,000-byte call id, answered_by or queue status fails that batch with a PayloadError
    naming the field, alike on both databases (PostgreSQL could not index it); the run goes on."""
    victim = emulator.batch_ids()[1]
    raw = emulator.raw_batch(victim)
    _with_indexed_values(raw, 3000, where)
    emulator.put_batch(raw)

    result = run_sync(engine, source, SyncOptions(discover=True))

    field = "analysis.queue_statuses" if where == "queue_statuses" else f"call_data[0].{where}"
    assert_failed_alone(engine, emulator, result, victim, f"field {field}", "3,000 bytes")
    assert len(result.failed[0].error or "") < 400  # the value itself is never quoted


@pytest.mark.parametrize("where", ["call_id", "answered_by", "queue_statuses"])
def test_an_indexed_value_at_the_key_limit_is_stored_on_both_databases(
    engine: Engine, source: V1Source, emulator: Emulator, where: str
) -> None:
    """A value of exactly MAX_KEY_BYTES that does not compress is stored, PostgreSQL included."""
    victim = emulator.batch_ids()[1]
    raw = emulator.raw_batch(victim)
    _with_indexed_values(raw, MAX_KEY_BYTES, where)
    emulator.put_batch(raw)

    result = run_sync(engine, source, SyncOptions(discover=True))

    assert result.status == runs.SUCCEEDED
    assert_stored_whole(engine, emulator, victim)


def test_a_listed_id_too_long_to_record_fails_alone_and_is_recorded_shortened(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """A 3,000-character listed id is not requested; its failure is recorded under its first
    200 characters and a hash, and every other batch syncs."""
    long_id = "L" + _incompressible(2999, "batch")
    other_long_id = long_id[:-1] + "x"  # same beginning: must still be recorded apart
    _put_batches(emulator, [long_id, other_long_id])

    result = run_sync(engine, source, SyncOptions(discover=True))

    assert result.status == runs.PARTIAL
    assert len(result.failed) == 2
    recorded_ids = recorded(engine, result.run_id)
    shortened = [b for b, (status, _) in recorded_ids.items() if status == runs.BATCH_FAILED]
    assert len(set(shortened)) == 2
    for batch_id in shortened:
        assert batch_id.startswith(long_id[:200] + "\u2026#")
        assert len(batch_id.encode()) <= MAX_KEY_BYTES
        assert "3,000 bytes" in (recorded_ids[batch_id][1] or "")
    assert result.count(runs.SYNCED) == len(emulator.batch_ids()) - 2


def _listing(emulator: Emulator, bad_entry: bytes) -> httpx.MockTransport:
    """The emulator, with a batch list of its batches and ``bad_entry`` (raw JSON) among them."""
    good = [
        b'{"batch_id": "%s", "created_at": "2026-01-0%dT00:00:00Z", "label": "other", '
        b'"call_params": {"n": 1}}' % (batch_id.encode(), number + 1)
        for number, batch_id in enumerate(emulator.batch_ids())
    ]
    page = b'{"status": "success", "batches": [' + b", ".join([*good[:1], bad_entry, *good[1:]])
    page += b"]}"

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/batches":
            first = request.url.params.get("from") in (None, "0")
            body = page if first else b'{"status": "success", "batches": []}'
            return httpx.Response(200, content=body, headers={"content-type": "application/json"})
        return emulator.handle(request)

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(
    "bad_entry",
    [
        b'{"batch_id": "odd", "label": "caf\\ud800", "created_at": "2026-01-09T00:00:00Z"}',
        b'{"batch_id": "odd", "call_params": {"n": 1e400}}',
        b'{"batch_id": "odd", "call_params": {"n": 123456789012345678901234567890}}',
        b'{"batch_id": "odd", "note": "\\u0000"}',
    ],
    ids=["lone_surrogate", "huge_number", "long_integer", "nul"],
)
def test_a_list_entry_with_odd_values_is_decoded_like_a_detail_body(
    engine: Engine, emulator: Emulator, sleeps: list[float], bad_entry: bytes
) -> None:
    """A lone surrogate, NUL or huge number in the list never ends discovery: the entry is
    decoded like a batch body (U+FFFD, unused fields unchecked) and its batch is requested."""
    source = make_source(_listing(emulator, bad_entry), sleeps)
    result = run_sync(engine, source, SyncOptions(discover=True))

    assert result.count(runs.SYNCED) == len(emulator.batch_ids())
    assert [o.batch_id for o in result.failed] == ["odd"]  # a 404 from the emulator
    assert "not found" in (result.failed[0].error or "").lower()


@pytest.mark.parametrize(
    ("bad_entry", "field"),
    [
        (b'{"batch_id": ""}', "batches[1].batch_id"),
        (b'{"batch_id": null}', "batches[1].batch_id"),
        (b'"just-a-string"', "batches[1]"),
        (b'{"batch_id": {"x": 1}}', "batches[1].batch_id"),
    ],
    ids=["empty_id", "null_id", "not_an_object", "id_not_text"],
)
def test_a_list_entry_without_a_usable_id_is_left_out_with_a_warning(
    engine: Engine,
    emulator: Emulator,
    sleeps: list[float],
    caplog: pytest.LogCaptureFixture,
    bad_entry: bytes,
    field: str,
) -> None:
    """An entry with no usable id is left out with a warning naming it; the rest sync, exit 0."""
    source = make_source(_listing(emulator, bad_entry), sleeps)
    with caplog.at_level(logging.WARNING, logger="batchsync"):
        result = run_sync(engine, source, SyncOptions(discover=True))

    assert result.status == runs.SUCCEEDED
    assert result.count(runs.SYNCED) == len(emulator.batch_ids())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"field {field}" in w and "left out" in w for w in warnings)


def test_a_list_entry_with_an_unreadable_created_at_fails_its_batch_naming_the_field(
    engine: Engine, emulator: Emulator, sleeps: list[float]
) -> None:
    """An entry whose created_at is not a timestamp is recorded failed, the field named;
    the other batches sync and the run ends partial (exit 1)."""
    bad_entry = b'{"batch_id": "undated", "created_at": "yesterday"}'
    source = make_source(_listing(emulator, bad_entry), sleeps)
    result = run_sync(engine, source, SyncOptions(discover=True))

    assert result.status == runs.PARTIAL
    [failure] = result.failed
    assert failure.batch_id == "undated"
    assert "batch undated" in (failure.error or "")
    assert "batches[1].created_at" in (failure.error or "")
    assert recorded(engine, result.run_id)["undated"] == (runs.BATCH_FAILED, failure.error)
    assert result.count(runs.SYNCED) == len(emulator.batch_ids())


@pytest.mark.parametrize(
    ("options", "word"),
    [
        (SyncOptions(discover=True, since=datetime(2020, 1, 1, tzinfo=UTC)), "created_at"),
        (SyncOptions(discover=True, label="L"), "label"),
    ],
    ids=["since", "label"],
)
def test_entries_a_filter_cannot_judge_are_counted_in_one_warning(
    engine: Engine,
    emulator: Emulator,
    sleeps: list[float],
    caplog: pytest.LogCaptureFixture,
    options: SyncOptions,
    word: str,
) -> None:
    """Entries without created_at (under --since) or label (under --label) are left out, and
    one warning says how many."""
    bad_entry = b'{"batch_id": "bare-1"}, {"batch_id": "bare-2"}'
    source = make_source(_listing(emulator, bad_entry), sleeps)
    with caplog.at_level(logging.WARNING, logger="batchsync"):
        result = run_sync(engine, source, options)

    assert "bare-1" not in {o.batch_id for o in result.outcomes}
    warnings = [r.getMessage() for r in caplog.records if word in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith("2 listed batches had no")


def _gateway(emulator: Emulator, status: int, down: Callable[[str], bool]) -> httpx.MockTransport:
    """The emulator behind a gateway answering ``status`` for what ``down`` names (a batch id,
    or "*list*" for the batch list)."""

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        target = "*list*" if path == "/v1/batches" else path.rsplit("/", 1)[1]
        if down(target):
            return httpx.Response(status, text="Bad Gateway")
        return emulator.handle(request)

    return httpx.MockTransport(handle)


@pytest.mark.parametrize("status", [502, 503, 504])
@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_gateway_answering_for_a_dead_api_stops_the_run(
    engine: Engine, sleeps: list[float], status: int, concurrency: int
) -> None:
    """502/503/504 for every request, the list included, counts as the API not answering:
    the run stops with ApiUnavailable instead of trying every batch."""
    emulator = Emulator(seed=5, batches=9, calls_per_batch=2)
    ids = emulator.batch_ids()
    source = make_source(_gateway(emulator, status, lambda target: True), sleeps, attempts=2)

    with pytest.raises(ApiUnavailable, match="did not answer"):
        run_sync(engine, source, SyncOptions(batch_ids=tuple(ids), concurrency=concurrency))

    with engine.connect() as connection:
        tried = connection.execute(text("select count(*) from sync_run_batches")).scalar_one()
    assert UNREACHABLE_BATCHES_LIMIT <= tried < len(ids)


@pytest.mark.parametrize("concurrency", [1, 2])
def test_slow_batches_while_the_api_answers_do_not_stop_the_run(
    engine: Engine, sleeps: list[float], concurrency: int
) -> None:
    """When the first batches get no answer but the API answers the list, they were slow, not
    the API down: the count starts again and every other batch syncs, whatever --concurrency."""
    emulator = Emulator(seed=5, batches=7, calls_per_batch=2)
    ids = emulator.batch_ids()
    slow = set(ids[:UNREACHABLE_BATCHES_LIMIT])

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.rsplit("/", 1)[1] in slow:
            raise httpx.ReadTimeout("timed out", request=request)
        return emulator.handle(request)

    source = make_source(httpx.MockTransport(handle), sleeps, attempts=2)

    result = run_sync(engine, source, SyncOptions(batch_ids=tuple(ids), concurrency=concurrency))

    assert result.status == runs.PARTIAL
    assert {o.batch_id for o in result.failed} == slow
    assert result.count(runs.SYNCED) == len(ids) - len(slow)
    for batch_id in set(ids) - slow:
        assert_stored_whole(engine, emulator, batch_id)


@pytest.mark.parametrize("status", [500, 502, 503])
@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_list_that_answers_while_every_batch_gets_a_5xx_stops_the_run(
    engine: Engine, sleeps: list[float], status: int, concurrency: int
) -> None:
    """A gateway that answers the batch list but a 5xx (after retries) for every batch: once
    the first N batches have all failed so and none succeeded, the run stops as the API
    down (ApiUnavailable, exit 5) with the rest not tried, instead of trying every batch."""
    emulator = Emulator(seed=5, batches=9, calls_per_batch=2)
    emulator.inject("*", Fault("server_error", times=-1, status=status))
    client = make_source(emulator.transport(), sleeps, attempts=2)

    with pytest.raises(ApiUnavailable, match="the batch list answers") as raised:
        run_sync(engine, client, SyncOptions(discover=True, concurrency=concurrency))

    assert f"HTTP {status}" in str(raised.value)
    with engine.connect() as connection:
        run_id = connection.execute(text("select max(id) from sync_runs")).scalar_one()
    status_, error = run_status(engine, run_id)
    assert status_ == runs.FAILED
    batches = recorded(engine, run_id)
    assert UNREACHABLE_BATCHES_LIMIT <= len(batches) < UNREACHABLE_BATCHES_LIMIT + concurrency
    assert all(state == runs.BATCH_FAILED for state, _ in batches.values())
    left = 9 - len(batches)
    assert f"{left} batches not tried" in (error or "")
    details = {r.url.path for r in emulator.requests if r.url.path != "/v1/batches"}
    assert len(details) < 9


def test_5xx_batches_after_one_that_succeeded_do_not_stop_the_run(
    engine: Engine, sleeps: list[float]
) -> None:
    """Once a batch of the run has been stored, later batches failing with a 5xx are those
    batches' failures: every batch is tried and the run ends partial."""
    emulator = Emulator(seed=5, batches=6, calls_per_batch=2)
    ids = emulator.batch_ids()
    for batch_id in ids[1:]:
        emulator.inject(batch_id, Fault("server_error", times=-1, status=500))
    client = make_source(emulator.transport(), sleeps, attempts=2)

    result = run_sync(engine, client, SyncOptions(batch_ids=tuple(ids)))

    assert result.status == runs.PARTIAL
    assert result.count(runs.SYNCED) == 1
    assert {o.batch_id for o in result.failed} == set(ids[1:])
    assert_stored_whole(engine, emulator, ids[0])


def test_5xx_batches_separated_by_a_not_found_one_do_not_stop_the_run(
    engine: Engine, sleeps: list[float]
) -> None:
    """A batch the API answers for (a 404) between 5xx batches starts the count again."""
    emulator = Emulator(seed=5, batches=6, calls_per_batch=2)
    ids = emulator.batch_ids()
    emulator.remove_batch(ids[2])
    for batch_id in ids[:2] + ids[3:5]:
        emulator.inject(batch_id, Fault("server_error", times=-1, status=500))
    client = make_source(emulator.transport(), sleeps, attempts=1)

    result = run_sync(engine, client, SyncOptions(batch_ids=tuple(ids)))

    assert result.count(runs.SYNCED) == 1
    assert len(result.failed) == 5

"""Syncing an account with v1 and v2 batches into the same tables, on SQLite and PostgreSQL:
what lands, idempotence, convergence, incremental skips, faults and request counts."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select, text

from batchsync.bland.auto import build_source
from batchsync.bland.http import BlandHttp, RetryPolicy
from batchsync.cli import cli
from batchsync.config import load_api
from batchsync.emulator import Emulator, parse_fault
from batchsync.errors import PayloadError
from batchsync.models import Base
from batchsync.store import purge, stored_calls
from batchsync.sync import RunResult, SyncOptions, run_sync
from tests.conftest import EMULATOR_URL

BOOKKEEPING = {"synced_at", "sync_run_id", "details_synced_at"}
LEDGER = {"sync_runs", "sync_run_batches"}


@pytest.fixture
def account() -> Emulator:
    return Emulator(seed=5, batches=3, calls_per_batch=4, v2_batches=3, v2_calls_per_batch=6)


@pytest.fixture
def http(account: Emulator, sleeps: list[float]) -> Iterator[BlandHttp]:
    api = load_api(EMULATOR_URL, account.api_key)
    with BlandHttp(
        api, transport=account.transport(), retry=RetryPolicy(attempts=3), sleep=sleeps.append
    ) as http:
        yield http


def sync(engine: Engine, http: BlandHttp, **options: Any) -> RunResult:
    api = options.pop("api", "auto")
    details = options.pop("call_details", None)
    spool_chunk_calls = options.pop("spool_chunk_calls", None)
    # As the CLI builds it under --phone-numbers keep.
    source = build_source(
        http,
        api,
        details,
        stored_calls=partial(stored_calls, engine),
        refresh=bool(options.get("refresh")),
        spool_large_bodies=spool_chunk_calls is not None,
    )
    if spool_chunk_calls is not None:
        source.v1.chunk_calls = spool_chunk_calls
    options.setdefault("concurrency", 2)
    return run_sync(engine, source, SyncOptions(discover=True, **options))


def dump(engine: Engine, *, bookkeeping: bool = True) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every data table, in key order (without the write stamps if asked)."""
    rows = {}
    with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            if table.name in LEDGER:
                continue
            columns = [c for c in table.columns if bookkeeping or c.name not in BOOKKEEPING]
            query = select(*columns).order_by(*table.primary_key.columns)
            rows[table.name] = [tuple(row) for row in connection.execute(query)]
    return rows


def paths(account: Emulator) -> list[str]:
    return [str(request.url) for request in account.requests]


def test_mixed_account_in_auto_stores_both_kinds_in_the_same_tables(
    engine: Engine, http: BlandHttp, account: Emulator
) -> None:
    """auto syncs every v1 and v2 batch; v2 rows carry their logs, calls, details, counts."""
    result = sync(engine, http)
    assert result.count("synced") == 6
    assert not result.failed
    with engine.connect() as connection:
        versions = dict(
            connection.execute(
                text("select api_version, count(*) from batches group by api_version")
            ).all()
        )
        assert versions == {"v1": 3, "v2": 3}
        newest = list(account.v2.batches.values())[-1]
        row = connection.execute(
            text(
                "select status, total_calls, in_progress_calls, org_id, calls_successful "
                "from batches where batch_id = :b"
            ),
            {"b": newest.batch_id},
        ).one()
        assert row == ("in_progress", 6, 1, newest.batch["user_id"], None)
        first = next(iter(account.v2.batches.values()))
        row = connection.execute(
            text(
                "select status, label, calls_successful, calls_failed from batches "
                "where batch_id = :b"
            ),
            {"b": first.batch_id},
        ).one()
        assert row == ("completed", "Untitled Batch", 5, 1)
        v2_calls = connection.execute(
            text(
                "select count(*), count(price), count(details_synced_at) from calls c "
                "join batches b using (batch_id) where b.api_version = 'v2'"
            )
        ).one()
        assert v2_calls[0] == 18
        assert v2_calls[2] == 18  # every v2 call has its detail
        logs = connection.execute(text("select count(*) from batch_logs")).scalar_one()
        assert logs == 2 * 3 + 2  # two lifecycle entries each, a complete entry in two
        v1_detail = connection.execute(
            text(
                "select count(*) from calls c join batches b using (batch_id) "
                "where b.api_version = 'v1' and c.details_synced_at is not null"
            )
        ).scalar_one()
        assert v1_detail == 0
        lines = connection.execute(
            text(
                "select count(*) from call_transcripts t join batches b using (batch_id) "
                "where b.api_version = 'v2'"
            )
        ).scalar_one()
        assert lines > 0


def test_resync_of_an_unchanged_account_changes_no_row_and_asks_nothing_of_final_v2_batches(
    engine: Engine, http: BlandHttp, account: Emulator
) -> None:
    """A second run leaves every row as it was (stamps included) and makes no request for a
    stored final v2 batch; only the unfinished one is fetched again, and found unchanged."""
    sync(engine, http)
    before = dump(engine)
    account.requests.clear()
    result = sync(engine, http)
    assert dump(engine) == before
    final = list(account.v2.batches)[:-1]
    asked = paths(account)
    assert not [url for url in asked for batch_id in final if batch_id in url]
    assert result.count("synced") == 0
    unfinished = list(account.v2.batches)[-1]
    assert any(o.batch_id == unfinished and o.status == "unchanged" for o in result.outcomes)


def test_changed_api_converges_to_what_a_fresh_sync_stores(
    engine: Engine, http: BlandHttp, account: Emulator
) -> None:
    """A call vanishes, the batch moves from in_progress to completed and a call's detail
    changes: the re-sync stores exactly what a sync from scratch stores."""
    sync(engine, http)
    newest = list(account.v2.batches.values())[-1]
    vanished = newest.calls.pop(0)
    newest.calls[-1]["summary"] = "The user asked to be called back."  # was queued
    newest.complete()
    sync(engine, http)
    converged = dump(engine, bookkeeping=False)
    with engine.connect() as connection:
        status = connection.execute(
            text("select status from batches where batch_id = :b"), {"b": newest.batch_id}
        ).scalar_one()
        gone = connection.execute(
            text("select count(*) from calls where call_id = :c"), {"c": vanished["call_id"]}
        ).scalar_one()
    assert status == "completed"
    assert gone == 0

    purge(engine, before=datetime(2100, 1, 1, tzinfo=UTC))
    sync(engine, http)
    assert dump(engine, bookkeeping=False) == converged


def test_refresh_rewrites_nothing_when_nothing_changed(engine: Engine, http: BlandHttp) -> None:
    """--refresh fetches every batch again and leaves the values as they were."""
    sync(engine, http)
    before = dump(engine, bookkeeping=False)
    result = sync(engine, http, refresh=True)
    assert result.count("synced") == 6
    assert dump(engine, bookkeeping=False) == before


def test_call_detail_not_found_fails_only_its_batch_and_writes_none_of_it(
    engine: Engine, http: BlandHttp, account: Emulator
) -> None:
    """A failed call-detail request fails the batch whole; the others are synced."""
    target = list(account.v2.batches.values())[1]
    account.inject(*parse_fault(f"{target.calls[2]['call_id']}:not_found"))
    result = sync(engine, http)
    assert [o.batch_id for o in result.failed] == [target.batch_id]
    assert target.calls[2]["call_id"] in (result.failed[0].error or "")
    assert result.count("synced") == 5
    with engine.connect() as connection:
        for table in ("batches", "calls", "batch_logs", "errors"):
            count = connection.execute(
                text(f"select count(*) from {table} where batch_id = :b"),
                {"b": target.batch_id},
            ).scalar_one()
            assert count == 0, table


@pytest.mark.parametrize("target", ["*v2*", "*logs*", "*calls*", "*call*"])
def test_a_fault_on_each_new_endpoint_after_retries_fails_only_that_batch(
    engine: Engine, http: BlandHttp, account: Emulator, target: str
) -> None:
    """A 503 that outlasts the retries on any v2 endpoint fails one batch; the run goes on."""
    if target == "*call*":  # details are fetched concurrently: aim at one call
        target = next(iter(account.v2.batches.values())).calls[0]["call_id"]
    account.inject(*parse_fault(f"{target}:server_error x3"))
    result = sync(engine, http, concurrency=1)
    assert len(result.failed) == 1
    assert "gave up after 3 attempts" in (result.failed[0].error or "")
    assert result.count("synced") == 5


def test_calls_list_shorter_than_total_count_fails_the_batch_and_keeps_stored_rows(
    engine: Engine, http: BlandHttp, account: Emulator
) -> None:
    """A short calls list on re-sync fails the batch; its stored calls stay as they were."""
    sync(engine, http)
    before = dump(engine)
    newest = list(account.v2.batches.values())[-1]
    newest.hidden_calls = 2
    result = sync(engine, http)
    assert [o.batch_id for o in result.failed] == [newest.batch_id]
    assert "total_count" in (result.failed[0].error or "")
    assert dump(engine) == before


def test_no_call_details_stores_list_fields_only_with_one_request_per_page(
    engine: Engine, http: BlandHttp, account: Emulator
) -> None:
    """--no-call-details: no detail request; v2 calls have no price and no transcript."""
    sync(engine, http, call_details=False)
    assert not [url for url in paths(account) if "/v1/calls/" in url]
    with engine.connect() as connection:
        priced = connection.execute(
            text("select count(*) from calls where price is not null")
        ).scalar_one()
        tagged = connection.execute(
            text("select count(*) from calls where pathway_tags is not null")
        ).scalar_one()
    assert priced == 0
    assert tagged == 18  # the list entries carry pathway_tags in practice


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_api_choice_syncs_only_that_apis_batches(engine: Engine, http: BlandHttp, api: str) -> None:
    """--api v1 / v2 syncs only that API's batches."""
    sync(engine, http, api=api)
    with engine.connect() as connection:
        versions = connection.execute(text("select distinct api_version from batches")).all()
    assert versions == [(api,)]


def test_v2_batch_named_on_the_command_line_is_synced(
    engine: Engine, http: BlandHttp, account: Emulator
) -> None:
    """A named UUID is fetched from v2; a named v1 id (UUID-shaped here) falls back to v1."""
    v2_id = next(iter(account.v2.batches))
    v1_id = account.batch_ids()[0]
    source = build_source(http)
    result = run_sync(engine, source, SyncOptions(batch_ids=(v2_id, v1_id)))
    assert result.count("synced") == 2
    with engine.connect() as connection:
        rows = dict(connection.execute(text("select batch_id, api_version from batches")).all())
    assert rows == {v2_id: "v2", v1_id: "v1"}


def test_phone_policy_drop_covers_v2_calls_and_errors(engine: Engine, http: BlandHttp) -> None:
    """--phone-numbers drop leaves no v2 number in the call columns or error messages."""
    from batchsync.privacy import PhoneMode, PhonePolicy

    sync(engine, http, phones=PhonePolicy(PhoneMode.DROP))
    with engine.connect() as connection:
        numbers = connection.execute(
            text(
                "select count(*) from calls where to_number is not null or from_number is not null"
            )
        ).scalar_one()
        messages = [m for (m,) in connection.execute(text("select error_message from errors"))]
    assert numbers == 0
    assert messages
    assert not any("+1555" in m for m in messages)


def test_cli_sync_with_api_v2_and_no_call_details(database_url: str, account: Emulator) -> None:
    """`sync --all --api v2 --no-call-details` over HTTP syncs the v2 batches from the lists."""
    with account.serve() as server:
        env = {
            "BLAND_BASE_URL": server.url,
            "BLAND_API_KEY": account.api_key,
            "BATCHSYNC_DATABASE_URL": database_url,
        }
        result = CliRunner().invoke(
            cli,
            ["sync", "--all", "--migrate", "--json", "--api", "v2", "--no-call-details"],
            env=env,
            catch_exceptions=False,
        )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["batches"]["synced"] == 3
    # the v2 list (a page, then an empty one), and per batch: itself, its logs (a page, then
    # an empty one), one calls page
    assert summary["http"]["requests"] == 2 + 3 * 4
    shown = CliRunner().invoke(
        cli, ["runs", "show", "1", "--json"], env=env, catch_exceptions=False
    )
    options = json.loads(shown.stdout)["options"]
    assert (options["api"], options["call_details"]) == ("v2", False)  # recorded with the run


def test_sync_help_shows_api_and_call_details_with_their_variables() -> None:
    """--api and --call-details are in --help with their environment variables."""
    result = CliRunner().invoke(cli, ["sync", "--help"], terminal_width=200)
    assert "--api [auto|v1|v2]" in result.output
    assert "BATCHSYNC_API" in result.output
    assert "--call-details / --no-call-details" in result.output
    assert "BATCHSYNC_CALL_DETAILS" in result.output


def test_resync_fetches_details_only_of_unfinished_and_changed_calls(
    engine: Engine, http: BlandHttp, account: Emulator
) -> None:
    """Incremental details: a final call listed as before keeps its stored detail; a queued
    call and a call whose list entry changed are fetched again."""
    sync(engine, http)
    newest = list(account.v2.batches.values())[-1]
    queued = [c["call_id"] for c in newest.calls if c["queue_status"] == "queued"]
    changed = newest.calls[0]
    changed["answered_by"] = "voicemail"
    changed["summary"] = "Left a voicemail."
    account.requests.clear()
    sync(engine, http)
    fetched = {url.rsplit("/", 1)[-1] for url in paths(account) if "/v1/calls/" in url}
    assert fetched == {*queued, changed["call_id"]}
    with engine.connect() as connection:
        summary = connection.execute(
            text("select summary from calls where call_id = :c"), {"c": changed["call_id"]}
        ).scalar_one()
        kept_lines = connection.execute(
            text("select count(*) from call_transcripts where call_id = :c"),
            {"c": newest.calls[1]["call_id"]},
        ).scalar_one()
    assert summary == "Left a voicemail."
    assert kept_lines == 2  # a kept call keeps its transcript


def test_refresh_fetches_every_detail_again(
    engine: Engine, http: BlandHttp, account: Emulator
) -> None:
    """--refresh fetches the detail of every call of every batch."""
    sync(engine, http)
    account.requests.clear()
    sync(engine, http, refresh=True)
    fetched = [url for url in paths(account) if "/v1/calls/" in url]
    assert len(fetched) == 18


def test_call_details_for_v1_batches_fill_the_detail_columns_and_keep_transcripts(
    engine: Engine, http: BlandHttp, account: Emulator
) -> None:
    """--call-details: v1 calls get price, summary and the other detail columns from
    GET /v1/calls/{id}; their transcript lines are those of the batch response."""
    sync(engine, http, api="v1")
    lines_before = dump(engine)["call_transcripts"]
    account.requests.clear()
    result = sync(engine, http, api="v1", call_details=True, refresh=True)
    assert not result.failed
    assert len([url for url in paths(account) if "/v1/calls/" in url]) == 12
    with engine.connect() as connection:
        filled = connection.execute(
            text(
                "select count(*) from calls where summary is not null "
                "and details_synced_at is not null and call_ended_by is not null"
            )
        ).scalar_one()
    assert filled == 12
    assert dump(engine)["call_transcripts"] == lines_before


def test_call_details_for_v1_resync_of_unchanged_batches_changes_no_row(
    engine: Engine, http: BlandHttp
) -> None:
    """With --call-details a second run over unchanged v1 batches rewrites nothing."""
    sync(engine, http, api="v1", call_details=True)
    before = dump(engine)
    result = sync(engine, http, api="v1", call_details=True)
    assert result.count("synced") == 0
    assert dump(engine) == before


def test_v1_call_detail_failing_fails_its_batch_only(
    engine: Engine, http: BlandHttp, account: Emulator
) -> None:
    """With --call-details, a v1 call's detail that stays a 503 fails its batch only."""
    batch_id = account.batch_ids()[0]
    call = account.raw_batch(batch_id)["call_data"][0]
    account.inject(*parse_fault(f"{call.get('call_id') or call['c_id']}:server_error x3"))
    result = sync(engine, http, api="v1", call_details=True)
    assert [o.batch_id for o in result.failed] == [batch_id]
    assert result.count("synced") == 2


@pytest.mark.parametrize("redact", [False, True], ids=["as-said", "redact-transcripts"])
@pytest.mark.parametrize("mode", ["hash", "drop"])
def test_no_number_of_a_v2_batch_is_stored_in_clear_under_hash_or_drop(
    database_url: str, engine: Engine, http: BlandHttp, account: Emulator, mode: str,
    redact: bool,
) -> None:  # fmt: skip
    """The phone policy covers the v2 columns and tables: detail columns, JSON at any
    depth, summaries, transcripts and log payloads hold no number in clear."""
    from batchsync.config import Secret
    from batchsync.privacy import PhoneMode, PhonePolicy
    from tests.test_privacy import EMAIL, PLANTED, raw_numbers_in, table_texts

    v2 = next(iter(account.v2.batches.values()))
    call = v2.calls[0]
    call.update(
        to="+1 555-123-0001",
        transferred_to="+15559990000",
        variables={"to": "+15551230001", "note": "customer 5551230001 prefers mornings"},
        metadata={"crm": {"record": {"PhoneNumber": 442079460958}}},
        analysis={"callback_phone": "+44 20 7946 0958"},
        pathway_tags=[{"name": "+15551230001", "color": "#fff"}],
        summary=f"Reached +1 555 123 0001; wrote to {EMAIL}.",
    )
    call["transcripts"][0]["text"] = f"Call me on 555-123-0001 or mail {EMAIL}."
    v2.logs[0]["payload"]["message"] = "Transfer line +1 555 999 0000 validated."
    policy = PhonePolicy(PhoneMode(mode), Secret("k3y"), redact_transcripts=redact)
    result = sync(engine, http, phones=policy, api="v2")
    assert not result.failed
    numbers = sorted({*PLANTED, *(str(c["to"]) for c in v2.calls), str(call["from"])})
    texts = table_texts(database_url)
    for name, written in texts.items():
        assert raw_numbers_in(written, numbers) == [], name
    assert (EMAIL in texts["calls"] + texts["call_transcripts"]) is not redact


def test_no_call_details_after_a_detailed_sync_keeps_the_stored_details(
    engine: Engine, http: BlandHttp, account: Emulator
) -> None:
    """A run with --no-call-details does not erase the details an earlier run stored."""
    sync(engine, http)
    before = dump(engine)
    result = sync(engine, http, call_details=False, refresh=True)
    assert not result.failed
    after = dump(engine)
    assert after["calls"] == before["calls"]
    assert after["call_transcripts"] == before["call_transcripts"]


def test_calls_list_over_several_pages_stores_every_call_once(
    engine: Engine, http: BlandHttp, account: Emulator
) -> None:
    """Calls listed 4 a page (6 per batch: two pages each) are all stored, each once."""
    from batchsync.bland.auto import AutoSource
    from batchsync.bland.v1 import V1Source
    from batchsync.bland.v2 import V2Source

    source = AutoSource(V1Source(http), V2Source(http, calls_page_size=4), "v2")
    result = run_sync(engine, source, SyncOptions(discover=True))
    assert result.count("synced") == 3
    assert len([url for url in paths(account) if "/v1/calls?" in url]) == 6
    with engine.connect() as connection:
        stored = connection.execute(text("select count(distinct call_id) from calls")).scalar_one()
    assert stored == 18


# -- the v2 batch list, read leniently --------------------------------------------------------


def _v2_listing(
    account: Emulator, change: Callable[[list[Any]], list[Any]], skips: list[int]
) -> httpx.MockTransport:
    """The emulator, with its v2 batch list rewritten by ``change`` (paged by take/skip as
    asked); the skips asked for are appended to ``skips``."""
    handle_rest = account.transport().handler

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path != "/v2/batches/list":
            return handle_rest(request)  # type: ignore[no-any-return]
        ordered = sorted(account.v2.batches.values(), key=lambda b: str(b.batch["created_at"]))
        entries = change([dict(b.batch) for b in ordered])
        take, skip = int(request.url.params["take"]), int(request.url.params["skip"])
        skips.append(skip)
        page = {"data": entries[skip : skip + take], "errors": None}
        return httpx.Response(200, json=page)

    return httpx.MockTransport(handle)


def _v2_client(transport: httpx.BaseTransport, account: Emulator) -> BlandHttp:
    api = load_api(EMULATOR_URL, account.api_key)
    return BlandHttp(api, transport=transport, retry=RetryPolicy(attempts=2), sleep=lambda _: None)


@pytest.mark.parametrize(
    ("bad_entry", "field"),
    [
        ({"description": "no id"}, "data[1].id"),
        ({"id": None}, "data[1].id"),
        ({"id": ""}, "data[1].id"),
        ({"id": 7}, "data[1].id"),
        ({"id": ["x"]}, "data[1].id"),
        ("652ad643-5b6c-4a3f-9f1e-3c2d7b8e9a10", "data[1]"),
    ],
    ids=["missing", "null", "empty", "number", "list", "not_an_object"],
)
def test_v2_list_entry_without_a_usable_id_is_left_out_and_the_rest_sync(
    engine: Engine,
    account: Emulator,
    caplog: pytest.LogCaptureFixture,
    bad_entry: Any,
    field: str,
) -> None:
    """An entry of the v2 list with no usable id is left out with a warning naming it;
    every other v1 and v2 batch syncs, with pages of two whose offsets count the bad entry."""
    skips: list[int] = []
    transport = _v2_listing(account, lambda e: [e[0], bad_entry, *e[1:]], skips)
    with (
        caplog.at_level(logging.WARNING, logger="batchsync"),
        _v2_client(transport, account) as client,
    ):
        source = build_source(client)
        source.v2.list_page_size = 2
        result = run_sync(engine, source, SyncOptions(discover=True))
    assert result.status == "succeeded"
    assert result.count("synced") == 6
    assert skips == [0, 2, 4]  # 4 entries: two full pages, then an empty one
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"field {field}" in w and "left out" in w for w in warnings)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"created_at": "last tuesday"}, "created_at"),
        ({"created_at": 1746732492}, None),  # read as seconds since the epoch, as in v1
        ({"description": {"text": "x"}}, "description"),
        ({"description": ["a", "b"]}, "description"),
    ],
    ids=["created_at_text", "created_at_number", "description_object", "description_list"],
)
def test_v2_list_entry_with_an_unreadable_field_fails_only_its_batch(
    engine: Engine, account: Emulator, change: dict[str, Any], field: str | None
) -> None:
    """An entry with an id but a created_at or description that cannot be read fails that
    batch, unfetched, naming the field; the other batches sync and the run ends partial."""
    target = list(account.v2.batches)[1]

    def spoil(entries: list[Any]) -> list[Any]:
        return [{**e, **change} if e["id"] == target else e for e in entries]

    with _v2_client(_v2_listing(account, spoil, []), account) as client:
        source = build_source(client)
        source.v2.list_page_size = 2  # the entry ends a page: the next page starts after it
        result = run_sync(engine, source, SyncOptions(discover=True))
    if field is None:
        assert result.count("synced") == 6
        return
    assert result.status == "partial"
    [failure] = result.failed
    assert failure.batch_id == target
    assert f"data[1].{field}" in (failure.error or "")
    assert result.count("synced") == 5
    assert not [r for r in account.requests if f"/v2/batches/{target}" in str(r.url)]
    with engine.connect() as connection:
        recorded = connection.execute(
            text("select status from sync_run_batches where batch_id = :b"), {"b": target}
        ).scalar_one()
    assert recorded == "failed"


@pytest.mark.parametrize(
    "body", [b'"no list here"', b'{"data": {"id": "x"}, "errors": null}', b"<html>502</html>"]
)
def test_v2_list_page_that_is_not_a_list_still_fails_discovery(
    engine: Engine, account: Emulator, body: bytes
) -> None:
    """A v2 list page that is no list of entries at all fails discovery with a clear message
    (exit 5 from the CLI); nothing is synced."""
    handle_rest = account.transport().handler

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/batches/list":
            return httpx.Response(200, content=body, headers={"content-type": "application/json"})
        return handle_rest(request)  # type: ignore[no-any-return]

    with (
        _v2_client(httpx.MockTransport(handle), account) as client,
        pytest.raises(PayloadError, match=r"v2 batch list|field data"),
    ):
        run_sync(engine, build_source(client), SyncOptions(discover=True))
    with engine.connect() as connection:
        stored = connection.execute(text("select count(*) from batches")).scalar_one()
    assert stored == 0


# -- --no-call-details under every phone-number policy ----------------------------------------


POLICIES = ["keep", "keep-redacted", "hash", "hash-redacted", "drop"]


def _policy(name: str) -> Any:
    from batchsync.config import Secret
    from batchsync.privacy import PhoneMode, PhonePolicy

    mode, _, redacted = name.partition("-")
    key = Secret("k3y") if mode == "hash" else None
    return PhonePolicy(PhoneMode(mode), key, redact_transcripts=bool(redacted))


def _sync_as_the_cli(engine: Engine, http: BlandHttp, policy: Any, **options: Any) -> RunResult:
    """A run built as `batchsync sync --all` builds it under ``policy``: stored calls are
    handed to the source only where their values are the API's own."""
    from batchsync.privacy import PhoneMode

    as_sent = policy.mode is PhoneMode.KEEP and not policy.redact_transcripts
    source = build_source(
        http,
        "auto",
        options.pop("call_details", None),
        stored_calls=partial(stored_calls, engine) if as_sent else None,
        refresh=bool(options.get("refresh")),
    )
    return run_sync(engine, source, SyncOptions(discover=True, phones=policy, **options))


def _calls_and_lines(engine: Engine) -> tuple[list[Any], list[Any]]:
    """The calls (without their write stamps) and transcript lines as stored."""
    rows = dump(engine)
    calls = Base.metadata.tables["calls"]
    keep = [i for i, c in enumerate(calls.columns) if c.name not in ("synced_at", "sync_run_id")]
    return [tuple(row[i] for i in keep) for row in rows["calls"]], rows["call_transcripts"]


@pytest.mark.parametrize("policy_name", POLICIES)
def test_no_call_details_keeps_stored_details_under_every_phone_policy(
    engine: Engine, http: BlandHttp, account: Emulator, policy_name: str
) -> None:
    """A --refresh run with --no-call-details rewrites every call from the calls list and
    keeps each stored detail column (and transcript line) as the detailed run stored it,
    under keep, hash and drop alike."""
    policy = _policy(policy_name)
    _sync_as_the_cli(engine, http, policy)
    calls_before, lines_before = _calls_and_lines(engine)
    with engine.connect() as connection:
        detailed = connection.execute(
            text("select count(*) from calls where details_synced_at is not null")
        ).scalar_one()
    assert detailed == 18  # the v2 calls; v1 calls get none by default

    account.requests.clear()
    result = _sync_as_the_cli(engine, http, policy, call_details=False, refresh=True)
    assert not result.failed
    assert result.count("synced") == 6
    assert not [r for r in account.requests if r.url.path.startswith("/v1/calls/")]
    calls_after, lines_after = _calls_and_lines(engine)
    assert calls_after == calls_before
    assert lines_after == lines_before


@pytest.mark.parametrize("policy_name", POLICIES)
def test_no_call_details_takes_changed_list_fields_and_keeps_the_detail_under_every_policy(
    engine: Engine, http: BlandHttp, account: Emulator, policy_name: str
) -> None:
    """A call whose list entry changed gets the new list values; its detail columns (a
    summary, a price) stay as stored, under every phone-number policy."""
    policy = _policy(policy_name)
    _sync_as_the_cli(engine, http, policy)
    call = list(account.v2.batches.values())[-1].calls[0]  # of the unfinished batch
    query = text(
        "select answered_by, summary, price, details_synced_at from calls where call_id = :c"
    )
    with engine.connect() as connection:
        before = connection.execute(query, {"c": call["call_id"]}).one()
    call["answered_by"] = "voicemail" if call.get("answered_by") != "voicemail" else "human"
    call["summary"] = "Changed since: not fetched with --no-call-details."

    result = _sync_as_the_cli(engine, http, policy, call_details=False)
    assert not result.failed
    with engine.connect() as connection:
        after = connection.execute(query, {"c": call["call_id"]}).one()
    assert after.answered_by == call["answered_by"]
    assert (after.summary, after.price, after.details_synced_at) == (
        before.summary,
        before.price,
        before.details_synced_at,
    )
    assert after.summary is not None


def test_cli_exits_5_when_every_v1_and_v2_batch_gets_a_502_while_the_lists_answer(
    database_url: str, account: Emulator
) -> None:
    """A gateway that answers both lists but 502 for every batch: `sync --all` stops after
    the first three batches with exit 5, the rest not tried, the run recorded failed."""
    from batchsync.emulator import Fault

    account.inject("*", Fault("server_error", times=-1, status=502))
    account.inject("*v2*", Fault("server_error", times=-1, status=502))
    with account.serve() as server:
        env = {
            "BLAND_BASE_URL": server.url,
            "BLAND_API_KEY": account.api_key,
            "BATCHSYNC_DATABASE_URL": database_url,
        }
        result = CliRunner().invoke(
            cli,
            ["sync", "--all", "--migrate", "--concurrency", "1", "--retries", "2",
             "--max-retry-wait", "0"],
            env=env,
        )  # fmt: skip
        runs_shown = CliRunner().invoke(cli, ["runs", "show", "1", "--json"], env=env)
    assert result.exit_code == 5, result.output
    assert "the batch list answers" in result.output
    assert "3 batches not tried" in result.output
    shown = json.loads(runs_shown.stdout)
    assert shown["status"] == "failed"
    assert account.api_key not in result.output


# -- --call-details on v1 bodies large enough to be spooled -----------------------------------


@pytest.fixture
def spooling_client(account: Emulator, sleeps: list[float]) -> Iterator[BlandHttp]:
    """A client for which every v1 batch body is large: with ``spool_chunk_calls=3`` the v1
    source saves it unparsed, for the writer to parse 3 calls at a time (as it does bodies
    above the 12 MB threshold)."""
    api = load_api(EMULATOR_URL, account.api_key)
    with BlandHttp(
        api,
        transport=account.transport(),
        retry=RetryPolicy(attempts=3),
        sleep=sleeps.append,
        stream_threshold=0,
    ) as spooling:
        yield spooling


def test_call_details_on_spooled_v1_bodies_store_every_calls_detail(
    engine: Engine, spooling_client: BlandHttp, account: Emulator, tmp_path: Any
) -> None:
    """--call-details on v1 bodies parsed in chunks: each call's detail is fetched once and
    stored (price, summary, recording_url, ...), the same rows a body parsed whole gives."""
    result = sync(engine, spooling_client, api="v1", call_details=True, spool_chunk_calls=3)
    assert not result.failed
    assert result.count("synced") == 3
    detail_requests = [r for r in account.requests if r.url.path.startswith("/v1/calls/")]
    assert len(detail_requests) == 12 == len({r.url.path for r in detail_requests})
    with engine.connect() as connection:
        filled = connection.execute(
            text(
                "select count(*) from calls where details_synced_at is not null "
                "and summary is not null and call_ended_by is not null"
            )
        ).scalar_one()
    assert filled == 12

    from batchsync.config import load_database
    from batchsync.db import create_db_engine, upgrade

    whole = create_db_engine(load_database(f"sqlite:///{tmp_path / 'whole.db'}"))
    try:
        upgrade(whole)
        api = load_api(EMULATOR_URL, account.api_key)
        with BlandHttp(api, transport=account.transport(), sleep=lambda _: None) as plain:
            sync(whole, plain, api="v1", call_details=True)
        spooled, parsed_whole = dump(engine, bookkeeping=False), dump(whole, bookkeeping=False)
    finally:
        whole.dispose()
    # content_sha256 differs: a spooled body's hash cannot cover details fetched later.
    sha = [c.name for c in Base.metadata.tables["batches"].columns].index("content_sha256")
    for rows in (spooled, parsed_whole):
        rows["batches"] = [row[:sha] + row[sha + 1 :] for row in rows["batches"]]
    assert spooled == parsed_whole


def test_call_details_on_a_spooled_v1_body_failing_fails_its_batch_whole(
    engine: Engine, spooling_client: BlandHttp, account: Emulator
) -> None:
    """A detail that stays a 503 for a call of the last chunk of a spooled v1 body fails
    that batch with nothing of it written (earlier chunks undone); the others sync."""
    batch_id = account.batch_ids()[0]
    call = account.raw_batch(batch_id)["call_data"][-1]
    account.inject(*parse_fault(f"{call.get('call_id') or call['c_id']}:server_error x3"))
    result = sync(
        engine, spooling_client, api="v1", call_details=True, spool_chunk_calls=3, concurrency=1
    )
    assert [o.batch_id for o in result.failed] == [batch_id]
    assert "gave up after 3 attempts" in (result.failed[0].error or "")
    assert result.count("synced") == 2
    with engine.connect() as connection:
        for table in ("batches", "calls", "call_transcripts"):
            count = connection.execute(
                text(f"select count(*) from {table} where batch_id = :b"), {"b": batch_id}
            ).scalar_one()
            assert count == 0, table


def test_call_details_on_spooled_v1_bodies_resync_unchanged_fetches_no_detail(
    engine: Engine, spooling_client: BlandHttp, account: Emulator
) -> None:
    """A second --call-details run over unchanged spooled v1 bodies rewrites nothing and
    asks for no call detail."""
    sync(engine, spooling_client, api="v1", call_details=True, spool_chunk_calls=3)
    before = dump(engine)
    account.requests.clear()
    result = sync(
        engine, spooling_client, api="v1", call_details=True, spool_chunk_calls=3, refresh=False
    )
    assert result.count("synced") == 0
    assert not [r for r in account.requests if r.url.path.startswith("/v1/calls/")]
    assert dump(engine) == before


# -- logs paged past a server's cap, finality, and detail fields in the calls list ----------------


def only_v2_account(calls: int = 4) -> Emulator:
    return Emulator(seed=23, batches=0, v2_batches=1, v2_calls_per_batch=calls)


def batch_row(engine: Engine, batch_id: str) -> tuple[Any, ...]:
    with engine.connect() as connection:
        return tuple(
            connection.execute(
                text(
                    "select status, calls_successful, calls_failed from batches where batch_id = :b"
                ),
                {"b": batch_id},
            ).one()
        )


def test_logs_capped_below_take_are_read_whole_and_the_batch_is_final(
    engine: Engine, sleeps: list[float]
) -> None:
    """A logs endpoint that answers 10 entries a page whatever take asks: all 26 entries are
    stored, the complete event (the newest) makes the batch completed with its figures, and
    the next run skips it as final."""
    account = only_v2_account()
    (v2,) = account.v2.batches.values()
    for position in range(23):
        v2.logs.append(
            {
                "id": f"log-{position:02d}",
                "batch_id": v2.batch_id,
                "event_type": "lifecycle",
                "timestamp": f"2025-06-02T00:{position:02d}:00.000Z",
                "payload": {"message": f"Dispatched {position}.", "state_change": "in_progress"},
            }
        )
    v2.complete()
    v2.logs_page_max = 10
    assert len(v2.logs) == 26
    assert v2.logs[-1]["event_type"] == "complete"
    api = load_api(EMULATOR_URL, account.api_key)
    with BlandHttp(api, transport=account.transport(), sleep=sleeps.append) as http:
        first = sync(engine, http, api="v2")
        assert first.count("synced") == 1
        with engine.connect() as connection:
            stored = connection.execute(
                text("select count(*) from batch_logs where batch_id = :b"), {"b": v2.batch_id}
            ).scalar_one()
        assert stored == 26
        figures = v2.logs[-1]["payload"]
        assert batch_row(engine, v2.batch_id) == (
            "completed",
            figures["calls_successful"],
            figures["calls_failed"],
        )
        account.requests.clear()
        second = sync(engine, http, api="v2")
    assert [o.status for o in second.outcomes] == ["skipped"]
    assert not [url for url in paths(account) if v2.batch_id in url]


@pytest.mark.parametrize(
    "state",
    [None, "in_progress", "validating", "paused_for_review"],
    ids=["no_logs", "in_progress", "validating", "unknown_state"],
)
def test_v2_batch_without_a_final_event_is_fetched_again_by_sync_all(
    engine: Engine, sleeps: list[float], state: str | None
) -> None:
    """A stored v2 batch whose logs hold no complete event and whose newest state is not
    final (no log entry at all, a running state, one Bland may add) is fetched again, even
    when none of its calls is left in progress."""
    account = only_v2_account()
    (v2,) = account.v2.batches.values()
    for call in v2.calls:
        call.update(queue_status="completed", status="completed", completed=True)
    v2.logs = [entry for entry in v2.logs if entry["event_type"] != "complete"]
    if state is None:
        v2.logs.clear()
    else:
        v2.logs[-1]["payload"]["state_change"] = state
    api = load_api(EMULATOR_URL, account.api_key)
    with BlandHttp(api, transport=account.transport(), sleep=sleeps.append) as http:
        sync(engine, http, api="v2")
        assert batch_row(engine, v2.batch_id) == (state, None, None)
        account.requests.clear()
        again = sync(engine, http, api="v2")
    assert [o.status for o in again.outcomes] != ["skipped"]
    assert any(url.endswith(f"/v2/batches/{v2.batch_id}") for url in paths(account))


@pytest.mark.parametrize("state", ["completed_partial", "failed"])
def test_v2_batch_in_a_final_lifecycle_state_is_skipped_by_sync_all(
    engine: Engine, sleeps: list[float], state: str
) -> None:
    """A v2 batch whose newest lifecycle state is completed_partial or failed is final."""
    account = only_v2_account()
    (v2,) = account.v2.batches.values()
    v2.logs[-1]["payload"]["state_change"] = state
    api = load_api(EMULATOR_URL, account.api_key)
    with BlandHttp(api, transport=account.transport(), sleep=sleeps.append) as http:
        sync(engine, http, api="v2")
        account.requests.clear()
        again = sync(engine, http, api="v2")
    assert [o.status for o in again.outcomes] == ["skipped"]
    assert not [url for url in paths(account) if v2.batch_id in url]


def test_v1_batch_without_status_or_in_progress_count_is_fetched_again_by_sync_all(
    engine: Engine, sleeps: list[float]
) -> None:
    """A v1 batch stored with neither a status nor an in_progress_calls count is not taken
    for complete: sync --all fetches it again."""
    account = Emulator(seed=23, batches=1, calls_per_batch=3)
    (batch_id,) = account.batch_ids()
    raw = account.raw_batch(batch_id)
    raw.pop("status", None)
    raw["analysis"].pop("in_progress_calls", None)
    account.put_batch(raw, batch_id=batch_id)
    api = load_api(EMULATOR_URL, account.api_key)
    with BlandHttp(api, transport=account.transport(), sleep=sleeps.append) as http:
        sync(engine, http, api="v1")
        account.requests.clear()
        again = sync(engine, http, api="v1")
    assert [o.status for o in again.outcomes] != ["skipped"]
    assert any(batch_id in url for url in paths(account))


def detail_requests(account: Emulator) -> list[str]:
    return [r.url.path for r in account.requests if r.url.path.startswith("/v1/calls/")]


def call_detail_columns(engine: Engine) -> list[tuple[Any, ...]]:
    calls = Base.metadata.tables["calls"].c
    query = select(
        calls.call_id, calls.pathway_tags, calls.price, calls.summary, calls.details_synced_at
    ).order_by(calls.call_id)
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(query)]


def test_resync_of_unchanged_calls_asks_no_detail_though_list_pathway_tags_differ(
    engine: Engine, sleeps: list[float]
) -> None:
    """The calls list names pathway tags the detail sends as objects: an unchanged batch
    still in progress is fetched again with zero detail requests for its final calls, and
    the stored pathway_tags stay the detail's."""
    account = only_v2_account(calls=6)
    (v2,) = account.v2.batches.values()
    for call in v2.calls:  # every call final: the batch itself stays in progress (no event)
        call.update(queue_status="completed", status="completed", completed=True)
    api = load_api(EMULATOR_URL, account.api_key)
    with BlandHttp(api, transport=account.transport(), sleep=sleeps.append) as http:
        sync(engine, http, api="v2")
        before = dump(engine)
        assert len(detail_requests(account)) == 6
        account.requests.clear()
        again = sync(engine, http, api="v2")
    assert [o.status for o in again.outcomes] == ["unchanged"]
    assert detail_requests(account) == []
    assert dump(engine) == before
    tags = {row[0]: row[1] for row in call_detail_columns(engine)}
    assert tags == {call["call_id"]: call["pathway_tags"] for call in v2.calls}
    assert any(isinstance(tag, dict) for call in v2.calls for tag in call["pathway_tags"])


def test_no_call_details_refresh_keeps_the_stored_detail_values(
    engine: Engine, sleeps: list[float]
) -> None:
    """--no-call-details --refresh after a sync with details keeps every detail column as
    the detail gave it (pathway_tags included), and details_synced_at with them."""
    account = only_v2_account(calls=6)
    api = load_api(EMULATOR_URL, account.api_key)
    with BlandHttp(api, transport=account.transport(), sleep=sleeps.append) as http:
        sync(engine, http, api="v2")
        before = call_detail_columns(engine)
        result = sync(engine, http, api="v2", call_details=False, refresh=True)
    assert result.count("synced") == 1
    assert call_detail_columns(engine) == before
    assert all(row[4] is not None for row in before)


def test_no_call_details_from_the_start_stores_list_values_until_a_detail_replaces_them(
    engine: Engine, sleeps: list[float]
) -> None:
    """Never fetched, a call keeps its list entry's pathway_tags with details_synced_at
    NULL; the next sync with details replaces them with the detail's."""
    account = only_v2_account(calls=4)
    (v2,) = account.v2.batches.values()
    api = load_api(EMULATOR_URL, account.api_key)
    with BlandHttp(api, transport=account.transport(), sleep=sleeps.append) as http:
        sync(engine, http, api="v2", call_details=False)
        listed = {row[0]: (row[1], row[4]) for row in call_detail_columns(engine)}
        assert listed == {
            call["call_id"]: (
                [t["name"] if isinstance(t, dict) else t for t in call["pathway_tags"]],
                None,
            )
            for call in v2.calls
        }
        sync(engine, http, api="v2")
    detailed = {row[0]: row[1] for row in call_detail_columns(engine)}
    assert detailed == {call["call_id"]: call["pathway_tags"] for call in v2.calls}
    assert all(row[4] is not None for row in call_detail_columns(engine))


# -- v1 calls' details through runs without --call-details ------------------------------------


@pytest.mark.parametrize("refresh", [False, True], ids=["plain", "refresh"])
def test_v1_call_details_stay_through_a_run_without_call_details(
    engine: Engine, http: BlandHttp, account: Emulator, refresh: bool
) -> None:
    """A v1 run without --call-details rewrites every v1 batch (the in-progress one among
    them) and keeps each call's stored detail columns and details_synced_at."""
    sync(engine, http, api="v1", call_details=True)
    calls_before, lines_before = _calls_and_lines(engine)
    with engine.connect() as connection:
        detailed = connection.execute(
            text("select count(*) from calls where details_synced_at is not null")
        ).scalar_one()
        statuses = connection.execute(text("select status from batches")).scalars().all()
    assert detailed == 12
    assert "in-progress" in statuses

    account.requests.clear()
    result = sync(engine, http, api="v1", refresh=refresh)
    assert not result.failed
    assert result.count("synced") == (3 if refresh else 1)  # else the in-progress one only
    assert not [r for r in account.requests if r.url.path.startswith("/v1/calls/")]
    assert _calls_and_lines(engine) == (calls_before, lines_before)


@pytest.mark.parametrize("policy_name", POLICIES)
def test_v1_call_details_stay_through_a_run_without_them_under_every_phone_policy(
    engine: Engine, http: BlandHttp, account: Emulator, policy_name: str
) -> None:
    """v1 calls enriched with --call-details keep their detail columns, as stored under
    the policy, through a --refresh run with the v1 default (--no-call-details), under
    keep, hash and drop alike."""
    policy = _policy(policy_name)
    v1_batches = set(account.batch_ids())

    def v1_calls() -> list[Any]:
        return [row for row in _calls_and_lines(engine)[0] if row[1] in v1_batches]

    _sync_as_the_cli(engine, http, policy, call_details=True)
    before = v1_calls()
    assert len(before) == 12
    assert all(row[-1] is not None for row in before)  # details_synced_at
    result = _sync_as_the_cli(engine, http, policy, refresh=True)
    assert not result.failed
    assert result.count("synced") == 6
    assert v1_calls() == before


def test_v1_call_details_stay_through_a_run_without_them_on_spooled_bodies(
    engine: Engine, spooling_client: BlandHttp
) -> None:
    """v1 bodies parsed in chunks as they are written keep each call's stored detail
    through a --refresh run without --call-details, in every chunk."""
    sync(engine, spooling_client, api="v1", call_details=True, spool_chunk_calls=3)
    calls_before, lines_before = _calls_and_lines(engine)
    assert all(row[-1] is not None for row in calls_before)
    result = sync(engine, spooling_client, api="v1", spool_chunk_calls=3, refresh=True)
    assert not result.failed
    assert result.count("synced") == 3
    assert _calls_and_lines(engine) == (calls_before, lines_before)

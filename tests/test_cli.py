"""The command line, through click's runner and as a real process: codes, messages, output."""

from __future__ import annotations

import http.server
import json
import os
import pty
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import click
import orjson
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import MetaData, create_engine, inspect, select, text

from batchsync.cli import (
    EXIT_API,
    EXIT_CONFIG,
    EXIT_DATABASE,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    cli,
)
from batchsync.config import load_database
from batchsync.db import create_db_engine
from batchsync.emulator import Emulator, EmulatorServer, Fault

KEY = "sk-test-5f2c9e0b7a"


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(seed=3, batches=3, calls_per_batch=6, api_key=KEY)


@pytest.fixture
def server(emulator: Emulator) -> Iterator[EmulatorServer]:
    with emulator.serve() as server:
        yield server


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def api_env(server: EmulatorServer, database_url: str, key: str = KEY) -> dict[str, str]:
    return {
        "BLAND_BASE_URL": server.url,
        "BLAND_API_KEY": key,
        "BATCHSYNC_DATABASE_URL": database_url,
    }


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command of the tree under ``group``, as the words that invoke it."""
    for name, command in group.commands.items():
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from command_paths(command, (*prefix, name))


def test_every_command_has_help_with_an_example() -> None:
    """`--help` of every command in the tree, found by walking it, shows an example."""
    paths = list(command_paths(cli))
    assert ("db", "current") in paths
    for path in paths:
        result = run(*path, "--help")
        assert result.exit_code == 0, path
        assert "Example" in result.output, path


def test_help_shows_environment_variables_but_never_their_values() -> None:
    """`sync --help` names the variables and never prints a configured key or password."""
    env = {"BLAND_API_KEY": KEY, "BATCHSYNC_DATABASE_URL": "postgresql://u:hunter22@h/db"}
    result = run("sync", "--help", env=env)
    assert "BLAND_API_KEY" in result.output
    assert "BATCHSYNC_DATABASE_URL" in result.output
    assert KEY not in result.output
    assert "hunter22" not in result.output


def test_db_upgrade_then_sync_all(server: EmulatorServer, database_url: str) -> None:
    """The documented path: db upgrade, then sync --all, exits 0 and reports what it wrote."""
    env = api_env(server, database_url)
    upgraded = run("db", "upgrade", env=env)
    assert upgraded.exit_code == EXIT_OK, upgraded.output
    assert "upgraded from nothing to" in upgraded.output

    result = run("sync", "--all", env=env)

    assert result.exit_code == EXIT_OK, result.output
    assert "3 batches synced" in result.output
    assert KEY not in result.output
    again = run("sync", "--all", env=env)
    assert again.exit_code == EXIT_OK
    assert "0 batches synced" in again.output


def test_sync_json_summary_is_machine_readable(server: EmulatorServer, database_url: str) -> None:
    """`--json` prints one JSON object with the run, batch counts, tables and HTTP figures."""
    env = api_env(server, database_url)
    result = run("sync", "--all", "--migrate", "--json", env=env)
    assert result.exit_code == EXIT_OK, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "succeeded"
    assert summary["batches"]["synced"] == 3
    assert summary["tables"]["calls"]["inserted"] == 18
    # Two v1 list pages (a short page may be a server's cap: only an empty one ends the
    # list), the v2 list's one empty page (--api auto) and three batches.
    assert summary["http"]["requests"] == 6
    assert "run_id" in summary


def test_sync_without_schema_says_to_upgrade(server: EmulatorServer, database_url: str) -> None:
    """Syncing into a database with no schema exits 4 and names `batchsync db upgrade`."""
    result = run("sync", "--all", env=api_env(server, database_url))
    assert result.exit_code == EXIT_DATABASE
    assert "batchsync db upgrade" in result.output


def test_some_batches_failing_exits_1_naming_them(
    server: EmulatorServer, database_url: str, emulator: Emulator
) -> None:
    """A batch that fails makes exit code 1; the summary names it and why."""
    env = api_env(server, database_url)
    first = emulator.batch_ids()[0]
    result = run("sync", "--migrate", first, "missing-batch", env=env)
    assert result.exit_code == EXIT_PARTIAL
    assert "missing-batch" in result.output
    assert "not found" in result.output


def test_rejected_key_exits_3_without_the_key(server: EmulatorServer, database_url: str) -> None:
    """A key the API rejects gives exit 3 and a message about the key, never the key."""
    wrong = "sk-wrong-0000000000"
    result = run("sync", "--all", "--migrate", env=api_env(server, database_url, key=wrong))
    assert result.exit_code == EXIT_CONFIG
    assert "API key" in result.output
    assert wrong not in result.output


def test_missing_key_exits_3(server: EmulatorServer, database_url: str) -> None:
    """No API key at all is a configuration error, exit 3."""
    env = api_env(server, database_url)
    env["BLAND_API_KEY"] = ""
    result = run("sync", "--all", "--migrate", env=env)
    assert result.exit_code == EXIT_CONFIG
    assert "BLAND_API_KEY" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["sync"],
        ["sync", "--all", "some-batch"],
        ["sync", "b1", "--since", "2025-01-01"],
        ["sync", "--all", "--since", "yesterday"],
        ["sync", "--all", "--retries", "0"],
    ],
)
def test_bad_usage_exits_2(args: list[str], sqlite_url: str) -> None:
    """Contradictory or malformed options exit 2 with one stderr line naming the --help."""
    result = run(*args, env={"BATCHSYNC_DATABASE_URL": sqlite_url, "BLAND_API_KEY": KEY})
    assert result.exit_code == EXIT_USAGE
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("batchsync: error: ")
    assert lines[0].endswith("--help`)")


def test_unsupported_database_url_exits_3() -> None:
    """A URL for a database batchsync does not write to is a configuration error."""
    result = run("db", "upgrade", "--database-url", "mysql://root@localhost/x")
    assert result.exit_code == EXIT_CONFIG
    assert "PostgreSQL or SQLite" in result.output


def test_unreachable_database_exits_4_with_password_hidden() -> None:
    """A database that cannot be reached exits 4; the password never shows."""
    url = "postgresql+psycopg://batch:s3cr3t-pw@127.0.0.1:1/nothing"
    result = run("db", "upgrade", "--database-url", url)
    assert result.exit_code == EXIT_DATABASE
    assert "cannot use the database" in result.output
    assert "s3cr3t-pw" not in result.output
    assert "***" in result.output


def test_demo_syncs_the_emulator_into_a_sqlite_file(tmp_path: Path) -> None:
    """`batchsync demo` needs nothing configured and leaves a queryable SQLite file."""
    target = tmp_path / "demo.db"
    result = run("demo", "--database", str(target), "--batches", "3", "--calls", "5")
    assert result.exit_code == EXIT_OK, result.output
    assert target.exists()
    assert "calls" in result.output
    rerun = run("demo", "--database", str(target), "--batches", "3", "--calls", "5")
    assert rerun.exit_code == EXIT_OK
    assert "0 batches synced" in rerun.output


def test_runs_lists_and_shows_runs(server: EmulatorServer, database_url: str) -> None:
    """`runs` lists recent runs; `runs show ID` details each batch's outcome."""
    env = api_env(server, database_url)
    run("sync", "--all", "--migrate", env=env)
    listing = run("runs", env=env)
    assert listing.exit_code == EXIT_OK
    assert "succeeded" in listing.output
    shown = run("runs", "show", "1", "--json", env=env)
    assert shown.exit_code == EXIT_OK
    detail = json.loads(shown.output)
    assert len(detail["batches"]) == 3
    missing = run("runs", "show", "999", env=env)
    assert missing.exit_code == EXIT_USAGE


def test_db_current_reports_missing_schema(sqlite_url: str) -> None:
    """`db current` exits 4 on a database without the schema, 0 once upgraded."""
    assert run("db", "current", "--database-url", sqlite_url).exit_code == EXIT_DATABASE
    run("db", "upgrade", "--database-url", sqlite_url)
    assert run("db", "current", "--database-url", sqlite_url).exit_code == EXIT_OK


def test_emulator_command_serves_on_loopback(tmp_path: Path) -> None:
    """`batchsync emulator` serves the API on 127.0.0.1 until stopped."""
    process = subprocess.Popen(
        [sys.executable, "-m", "batchsync", "emulator", "--port", "0", "--batches", "2"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert "http://127.0.0.1:" in first
        url = first.split()[4]
        import httpx

        response = httpx.get(f"{url}/v1/batches", headers={"authorization": "emulator-key"})
        assert response.status_code == 200
        assert len(response.json()["batches"]) == 2
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_emulator_refuses_a_non_loopback_host() -> None:
    """The emulator never listens beyond loopback."""
    result = run("emulator", "--host", "0.0.0.0")  # noqa: S104 - the refusal is the point
    assert result.exit_code == EXIT_USAGE


def test_purge_deletes_a_batch_in_one_go_and_reports_it(
    server: EmulatorServer, database_url: str, emulator: Emulator
) -> None:
    """`purge --batch` removes a batch and its rows, reporting per-table counts."""
    env = api_env(server, database_url)
    run("sync", "--all", "--migrate", env=env)
    victim = emulator.batch_ids()[0]

    preview = run("purge", "--batch", victim, "--dry-run", "--json", env=env)
    done = run("purge", "--batch", victim, "--json", "--yes", env=env)
    again = run("purge", "--batch", victim, "--json", "--yes", env=env)

    assert json.loads(preview.output) == {**json.loads(done.output), "dry_run": True}
    deleted = json.loads(done.output)["deleted"]
    assert deleted["batches"] == 1
    assert deleted["calls"] == 6
    assert json.loads(again.output)["deleted"]["batches"] == 0


def test_purge_before_a_date_and_without_arguments(
    server: EmulatorServer, database_url: str
) -> None:
    """`purge --before` removes older batches; `purge` alone is a usage error."""
    env = api_env(server, database_url)
    run("sync", "--all", "--migrate", env=env)
    assert run("purge", env=env).exit_code == EXIT_USAGE
    result = run("purge", "--before", "2100-01-01", "--yes", env=env)
    assert result.exit_code == EXIT_OK
    assert "deleted 3 batches" in result.output


def test_dry_run_prints_changes_and_writes_nothing(
    server: EmulatorServer, database_url: str
) -> None:
    """`sync --dry-run --json` reports would-be inserts and leaves no run behind."""
    env = api_env(server, database_url)
    run("db", "upgrade", env=env)
    summary = json.loads(run("sync", "--all", "--dry-run", "--json", env=env).output)
    assert summary["dry_run"] is True
    assert summary["tables"]["calls"]["inserted"] == 18
    assert "no runs yet" in run("runs", env=env).output


def test_phone_hash_mode_needs_its_key(server: EmulatorServer, database_url: str) -> None:
    """--phone-numbers hash without BATCHSYNC_PHONE_HASH_KEY is a configuration error."""
    env = {**api_env(server, database_url), "BATCHSYNC_PHONE_HASH_KEY": ""}
    result = run("sync", "--all", "--migrate", "--phone-numbers", "hash", env=env)
    assert result.exit_code == EXIT_CONFIG
    assert "BATCHSYNC_PHONE_HASH_KEY" in result.output


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Fault("truncated"), "not valid JSON"),
        (Fault("invalid_json"), "not valid JSON"),
        (Fault("wrong_shape"), "batch_params"),
        (Fault("not_found"), "not found"),
        (Fault("server_error", times=-1, status=503), "gave up after 2 attempts"),
        (Fault("rate_limit", times=-1, retry_after="0"), "rate limited"),
        (Fault("slow", times=-1, delay=2.0), "timed out"),
        (Fault("wrong_encoding"), "Content-Encoding"),
        (Fault("bad_escape"), "field (body)"),
        (Fault("huge_number"), "field (body)"),
    ],
    ids=lambda value: value.kind if isinstance(value, Fault) else "",
)
def test_a_faulty_batch_fails_alone_with_exit_1(
    server: EmulatorServer, database_url: str, emulator: Emulator, fault: Fault, message: str
) -> None:
    """Each terminal fault on one batch: exit 1, the reason named, nothing of it stored."""
    victim = emulator.batch_ids()[1]
    emulator.inject(victim, fault)
    env = api_env(server, database_url)
    result = run(
        "sync", "--all", "--migrate", "--retries", "2", "--max-retry-wait", "0",
        "--timeout", "0.5", "--json", env=env,
    )  # fmt: skip
    assert result.exit_code == EXIT_PARTIAL, result.output
    summary = json.loads(result.stdout)
    assert [f["batch_id"] for f in summary["failed"]] == [victim]
    assert message in summary["failed"][0]["error"]
    assert victim in summary["failed"][0]["error"]
    assert summary["batches"]["synced"] == 2
    shown = run("runs", "show", str(summary["run_id"]), "--json", env=env)
    recorded = {b["batch_id"]: b for b in json.loads(shown.output)["batches"]}
    assert recorded[victim]["status"] == "failed"
    assert message in recorded[victim]["error"]


def test_failing_discovery_exits_5(
    server: EmulatorServer, database_url: str, emulator: Emulator
) -> None:
    """When the batch list cannot be fetched, the run fails with exit 5 and says why."""
    emulator.inject(Emulator.LIST_TARGET, Fault("server_error", times=-1, status=502))
    env = api_env(server, database_url)
    result = run("sync", "--all", "--migrate", "--retries", "2", "--max-retry-wait", "0", env=env)
    assert result.exit_code == EXIT_API
    assert "the batch list" in result.output
    assert "502" in result.output


def test_api_dying_mid_run_exits_5_and_says_so(database_url: str) -> None:
    """An API that stops answering after the first batch stops the run: exit 5, not hours."""
    emulator = Emulator(seed=3, batches=6, calls_per_batch=2, api_key=KEY)
    emulator.inject("*", Fault("api_down", after=1))
    with emulator.serve() as server:
        env = api_env(server, database_url)
        result = run(
            "sync", "--all", "--migrate", "--concurrency", "1", "--retries", "2",
            "--max-retry-wait", "0", "--json", env=env,
        )  # fmt: skip
    assert result.exit_code == EXIT_API, result.output
    assert "did not answer for 3 batches in a row" in result.output
    assert "2 batches not tried" in result.output
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            status = connection.execute(text("select status from sync_runs")).scalar_one()
            recorded = connection.execute(text("select count(*) from sync_run_batches")).scalar()
    finally:
        engine.dispose()
    assert status == "failed"
    assert recorded == 4  # one synced, three failed; the last two never tried
    # The JSON summary of a run that stopped says what it did before, in the keys of a
    # finished run's summary.
    summary = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert summary["status"] == "failed"
    assert summary["exit_code"] == EXIT_API
    assert summary["batches"] == {"synced": 1, "unchanged": 0, "skipped": 0, "failed": 3}
    assert len(summary["failed"]) == 3
    assert all("cannot reach" in failure["error"] for failure in summary["failed"])
    assert summary["tables"]["calls"]["inserted"] == 2


def test_retried_faults_succeed_with_exit_0(
    server: EmulatorServer, database_url: str, emulator: Emulator
) -> None:
    """A few 429s and 5xx answers are retried; the run succeeds and counts the retries."""
    first, second = emulator.batch_ids()[:2]
    emulator.inject(first, Fault("rate_limit", times=2, retry_after="0"))
    emulator.inject(second, Fault("server_error", times=1, status=500))
    env = api_env(server, database_url)
    result = run("sync", "--all", "--migrate", "--max-retry-wait", "0", "--json", env=env)
    assert result.exit_code == EXIT_OK, result.output
    summary = json.loads(result.stdout)
    assert summary["http"]["retries"] == 3
    assert summary["batches"]["synced"] == 3


def test_logging_options_work_after_the_command(server: EmulatorServer, database_url: str) -> None:
    """`sync ... --log-format json -v` is accepted and logs JSON lines, like before the command."""
    env = api_env(server, database_url)
    result = run("sync", "--all", "--migrate", "--log-format", "json", "-v", env=env)
    assert result.exit_code == EXIT_OK, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines
    assert all(json.loads(line)["level"] for line in lines)


def test_json_failure_prints_a_json_object(server: EmulatorServer, database_url: str) -> None:
    """With --json, a failed run still prints one JSON object on stdout, with the exit code."""
    result = run("sync", "--all", "--json", env=api_env(server, database_url))
    assert result.exit_code == EXIT_DATABASE
    failure = json.loads(result.stdout)
    assert failure["exit_code"] == EXIT_DATABASE
    assert "batchsync db upgrade" in failure["error"]


def test_postgres_scheme_urls_are_accepted() -> None:
    """postgres:// URLs, as Heroku and Airflow hand them out, are understood."""
    result = run("db", "current", "--database-url", "postgres://u:pw-123456@127.0.0.1:1/x")
    assert result.exit_code == EXIT_DATABASE
    assert "cannot use the database" in result.output
    assert "pw-123456" not in result.output


def test_default_phone_policy_refuses_to_unhash_stored_numbers(
    server: EmulatorServer, database_url: str
) -> None:
    """Leaving --phone-numbers unset over hashed batches is refused; saying keep is honoured."""
    env = {**api_env(server, database_url), "BATCHSYNC_PHONE_HASH_KEY": "hash-key-0001"}
    env.pop("BATCHSYNC_PHONE_NUMBERS", None)
    assert run("sync", "--all", "--migrate", "--phone-numbers", "hash", env=env).exit_code == 0
    refused = run("sync", "--all", "--refresh", env=env)
    assert refused.exit_code == EXIT_CONFIG
    assert "in clear" in refused.output
    explicit = run("sync", "--all", "--refresh", "--phone-numbers", "keep", env=env)
    assert explicit.exit_code == EXIT_OK


def test_purge_older_than_days(server: EmulatorServer, database_url: str) -> None:
    """`purge --older-than DAYS` deletes batches created more than DAYS days ago."""
    env = api_env(server, database_url)
    run("sync", "--all", "--migrate", env=env)
    kept = run("purge", "--older-than", "36500", "--json", "--yes", env=env)
    assert json.loads(kept.output)["deleted"]["batches"] == 0
    gone = run("purge", "--older-than", "1", "--json", "--yes", env=env)
    assert json.loads(gone.output)["deleted"]["batches"] == 3


def test_ids_special_in_urls_sync_over_http_with_exit_0(database_url: str) -> None:
    """Through a real HTTP server, ids holding '/', '?', '#', '%', spaces or tabs sync whole."""
    emulator = Emulator(seed=3, batches=1, calls_per_batch=2, api_key=KEY)
    template = emulator.raw_batch(emulator.batch_ids()[0])
    special = ["a/b", "q?x=1#frag", "50% off", "tab\there"]
    for number, batch_id in enumerate(special):
        raw = {**template, "batch_params": {**template["batch_params"], "id": batch_id}}
        raw["call_data"] = [
            {**call, "call_id": f"{batch_id}-{number}-{position}", "transcripts": []}
            for position, call in enumerate(template["call_data"])
        ]
        emulator.put_batch(raw)
    with emulator.serve() as server:
        env = api_env(server, database_url)
        result = run("sync", "--all", "--migrate", "--json", env=env)
    assert result.exit_code == EXIT_OK, result.output
    assert json.loads(result.stdout)["batches"]["synced"] == 1 + len(special)
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            stored = set(connection.execute(text("select batch_id from batches")).scalars())
    finally:
        engine.dispose()
    assert set(special) <= stored


# -- secrets the API echoes back --------------------------------------------------------------

ECHOED_KEY = 'sk-live_9f/2c+e0"b7-5a1d'
ECHO_BATCHES = ["echo-404", "echo-400", "echo-422", "echo-429", "echo-500", "echo-503"]


def key_spellings(key: str) -> list[str]:
    """The key as an API may quote it: raw, percent-encoded, form-encoded, JSON-escaped."""
    return [key, quote(key, safe=""), quote_plus(key), json.dumps(key)[1:-1]]


class EchoingApi(http.server.ThreadingHTTPServer):
    """A Bland API double that answers errors quoting the key it was sent, in every form.

    ``list_status``: the status of the batch list (200 lists ECHO_BATCHES); each batch
    "echo-NNN" answers HTTP NNN, and every batch answers ``detail_status`` when it is set.
    """

    def __init__(self, list_status: int, detail_status: int | None = None) -> None:
        self.list_status = list_status
        self.detail_status = detail_status
        super().__init__(("127.0.0.1", 0), EchoingHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class EchoingHandler(http.server.BaseHTTPRequestHandler):
    server: EchoingApi

    def do_GET(self) -> None:
        key = self.headers.get("authorization", "")
        path = urlsplit(self.path).path
        if path == "/v1/batches":
            status = self.server.list_status
            ok_body = {"batches": [{"batch_id": b} for b in ECHO_BATCHES]}
        elif path == "/v2/batches/list":  # an account with no v2 batch, or no v2 API
            status = self.server.list_status
            ok_body = {"data": [], "errors": None}
        else:
            batch_id = path.rsplit("/", 1)[-1]
            status = self.server.detail_status or int(batch_id.rpartition("-")[2])
            ok_body = {}
        if status == 200:
            self.answer(200, ok_body)
            return
        echoed = " | ".join(
            [f"Bearer {key}", *key_spellings(key), f"url=/v1/batches?api_key={quote(key)}"]
        )
        envelope: dict[str, Any] = (
            {"message": f"bad request for key {echoed}"}
            if status % 2
            else {"errors": [{"error": "E", "message": f"key {echoed} refused"}]}
        )
        self.answer(status, envelope)

    def answer(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        if status == 429:
            self.send_header("retry-after", "0")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads batchsync's output, not the double's."""


@contextmanager
def echoing_api(list_status: int, detail_status: int | None = None) -> Iterator[EchoingApi]:
    server = EchoingApi(list_status, detail_status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def every_stored_text(database_url: str) -> str:
    """Every value of every row of every table, as text."""
    engine = create_db_engine(load_database(database_url))
    try:
        metadata = MetaData()
        metadata.reflect(engine)
        with engine.connect() as connection:
            return "\n".join(
                repr(tuple(row))
                for table in metadata.sorted_tables
                for row in connection.execute(select(table))
            )
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("list_status", "detail_status", "exit_code"),
    [
        pytest.param(401, None, EXIT_CONFIG, id="list-401"),
        pytest.param(403, None, EXIT_CONFIG, id="list-403"),
        pytest.param(404, None, EXIT_API, id="list-404"),
        pytest.param(422, None, EXIT_API, id="list-422"),
        pytest.param(429, None, EXIT_API, id="list-429"),
        pytest.param(500, None, EXIT_API, id="list-500"),
        pytest.param(200, None, EXIT_PARTIAL, id="detail-4xx-429-5xx"),
        pytest.param(200, 401, EXIT_CONFIG, id="detail-401"),
        pytest.param(200, 403, EXIT_CONFIG, id="detail-403"),
    ],
)
def test_api_echoing_the_key_in_errors_leaks_it_into_no_output_or_table(
    database_url: str, list_status: int, detail_status: int | None, exit_code: int
) -> None:
    """An API quoting the key in any error body (any status, list or detail, raw,
    encoded or escaped) leaves it in no stdout, stderr (text or JSON logs, -vv) or row."""
    run("db", "upgrade", "--database-url", database_url)
    outputs = []
    with echoing_api(list_status, detail_status) as api:
        env = {"BLAND_BASE_URL": api.url, "BLAND_API_KEY": ECHOED_KEY}
        for log_format in ("text", "json"):
            for extra in ([], ["--json"]):
                result = run(
                    "-vv",
                    "--log-format",
                    log_format,
                    "sync",
                    "--all",
                    "--retries",
                    "1",
                    "--database-url",
                    database_url,
                    *extra,
                    env=env,
                )
                assert result.exit_code == exit_code, result.output
                outputs += [result.stdout, result.stderr]
        outputs += [run("runs", "--json", "--database-url", database_url).stdout]
        outputs += [run("runs", "show", "1", "--database-url", database_url).stdout]
    seen = "\n".join(outputs)
    stored = every_stored_text(database_url)
    assert "***" in seen  # the echoed text did come through, redacted
    assert "***" in stored
    for spelling in [*key_spellings(ECHOED_KEY), "9f/2c", "9f%2F2c"]:
        assert spelling not in seen
        assert spelling not in stored


# -- every user error has its exit code ------------------------------------------------------


def test_database_url_with_a_port_that_is_not_a_number_exits_3_without_the_password() -> None:
    """A port that is not a number is a configuration error (3), not an internal one (70)."""
    url = "postgresql+psycopg://u:pw-9a8b7c@127.0.0.1:notaport/db"
    result = run("runs", "--database-url", url)
    assert result.exit_code == EXIT_CONFIG
    assert "port" in result.stderr
    assert "pw-9a8b7c" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_database_host_that_does_not_resolve_exits_4() -> None:
    """A host name that does not resolve means the database is unreachable: exit 4."""
    result = run("runs", "--database-url", "postgresql+psycopg://u@nonexistent.invalid/db")
    assert result.exit_code == EXIT_DATABASE
    assert "nonexistent.invalid" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["db", "upgrade", "--revision", "no-such-rev"], id="upgrade"),
        pytest.param(["db", "downgrade", "no-such-rev", "--yes"], id="downgrade"),
        pytest.param(["db", "downgrade", "no-such-rev", "--dry-run"], id="downgrade-dry-run"),
    ],
)
def test_unknown_revision_is_a_usage_error_naming_the_known_ones(
    database_url: str, args: list[str]
) -> None:
    """An unknown schema revision exits 2 with a message listing the revisions there are."""
    run("db", "upgrade", "--database-url", database_url)
    result = run(*args, "--database-url", database_url)
    assert result.exit_code == EXIT_USAGE, result.output
    assert "'no-such-rev'" in result.stderr
    assert "0001" in result.stderr
    assert "internal error" not in result.stderr


@pytest.mark.parametrize("shard", ["3/2", "2/2", "1/0", "x/4", "1-4"])
def test_shard_that_does_not_exist_is_a_usage_error(shard: str, sqlite_url: str) -> None:
    """--shard K/N with K >= N, N = 0 or not K/N at all exits 2, naming --shard."""
    result = run("sync", "--all", "--shard", shard, "--database-url", sqlite_url)
    assert result.exit_code == EXIT_USAGE
    assert "--shard" in result.stderr


def test_since_after_until_is_a_usage_error(sqlite_url: str) -> None:
    """An empty window (--since at or after --until) exits 2 instead of syncing nothing."""
    for since, until in (("2025-02-01", "2025-01-01"), ("2025-01-01", "2025-01-01")):
        result = run("sync", "--all", "--since", since, "--until", until, "--database-url",
                     sqlite_url, env={"BLAND_API_KEY": KEY})  # fmt: skip
        assert result.exit_code == EXIT_USAGE
        assert "--since" in result.stderr
        assert "before --until" in result.stderr


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2025-01-01", "2025-01-01T00:00:00+00:00"),
        ("2025-01-01T06:30:00", "2025-01-01T06:30:00+00:00"),
        ("2025-01-01T06:30:00Z", "2025-01-01T06:30:00+00:00"),
        ("2025-01-01T06:30:00+00:00", "2025-01-01T06:30:00+00:00"),
        ("2025-01-01T06:30:00+02:00", "2025-01-01T04:30:00+00:00"),
        ("2025-01-01 06:30:00", "2025-01-01T06:30:00+00:00"),
        ("2025-01-01 06:30:00.123456-05:00", "2025-01-01T11:30:00.123456+00:00"),
    ],
)
def test_since_accepts_what_orchestrators_render_converted_to_utc(
    server: EmulatorServer, sqlite_url: str, given: str, expected: str
) -> None:
    """--since takes a date, a datetime with T or a space, Z or an offset; offsets are
    converted to UTC (not relabelled) in the recorded run options."""
    env = api_env(server, sqlite_url)
    result = run("sync", "--all", "--migrate", "--since", given, "--json", env=env)
    assert result.exit_code == EXIT_OK, result.output
    shown = json.loads(run("runs", "show", "1", "--json", env=env).stdout)
    assert shown["options"]["since"] == expected


def test_before_rejects_text_that_is_not_a_date(sqlite_url: str) -> None:
    """`purge --before` with words instead of a date is a usage error naming the forms."""
    result = run("purge", "--before", "last week", "--database-url", sqlite_url)
    assert result.exit_code == EXIT_USAGE
    assert "ISO-8601" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["sync", "--all", "--json", "--no-such-option"], id="unknown-option"),
        pytest.param(["sync", "--json"], id="no-batches"),
        pytest.param(["sync", "--all", "--json", "--shard", "3/2"], id="bad-shard"),
        pytest.param(["sync", "--all", "--json", "--since", "soon"], id="bad-date"),
        pytest.param(["runs", "--json", "--limit", "0"], id="runs-bad-limit"),
        pytest.param(["purge", "--json"], id="purge-no-selection"),
    ],
)
def test_json_usage_error_prints_one_json_object_with_exit_2(
    sqlite_url: str, args: list[str]
) -> None:
    """With --json, a usage error still ends with exactly one JSON object on stdout."""
    result = run(*args, env={"BATCHSYNC_DATABASE_URL": sqlite_url})
    assert result.exit_code == EXIT_USAGE
    summary = json.loads(result.stdout)
    assert summary["status"] == "failed"
    assert summary["exit_code"] == EXIT_USAGE
    assert summary["error"]
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("batchsync: error: ")


def test_json_error_after_the_run_started_carries_its_run_id(database_url: str) -> None:
    """A run that fails once recorded (here: the key rejected mid-run) names its run id."""
    run("db", "upgrade", "--database-url", database_url)
    with echoing_api(list_status=200, detail_status=401) as api:
        env = {"BLAND_BASE_URL": api.url, "BLAND_API_KEY": KEY}
        result = run("sync", "--all", "--json", "--database-url", database_url, env=env)
    assert result.exit_code == EXIT_CONFIG, result.output
    summary = json.loads(result.stdout)
    assert summary["run_id"] == 1
    assert summary["status"] == "failed"
    assert summary["exit_code"] == EXIT_CONFIG


# -- logs an operator can use ----------------------------------------------------------------


def test_vv_logs_every_http_request_with_its_figures_and_never_the_key(
    server: EmulatorServer, database_url: str
) -> None:
    """-vv writes one line per request: method, path with query, status, bytes, ms."""
    env = api_env(server, database_url)
    result = run("-vv", "--log-format", "json", "sync", "--all", "--migrate", "--json", env=env)
    assert result.exit_code == EXIT_OK, result.output
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    requests = [line for line in lines if line["message"].startswith("HTTP GET ")]
    assert len(requests) == json.loads(result.stdout)["http"]["requests"]
    for line in requests:
        assert re.fullmatch(
            r"HTTP GET /v(1/batches|2/batches/list)\S* -> 200, \d+ bytes, \d+ ms",
            line["message"],
        ), line
        assert line["status"] == 200
    assert any("?" in line["message"] for line in requests)  # the query is kept
    assert KEY not in result.stderr


def test_v_logs_every_batch_outcome_off_a_terminal(
    server: EmulatorServer, database_url: str, emulator: Emulator
) -> None:
    """-v logs each batch's outcome (synced, unchanged, skipped, failed) without a terminal."""
    env = api_env(server, database_url)
    first, second, third = emulator.batch_ids()
    emulator.inject(third, Fault("not_found"))
    synced = run("-v", "sync", first, second, third, "--migrate", env=env)
    unchanged = run("-v", "sync", first, env=env)
    skipped = run("-v", "sync", "--all", env=env)

    assert f"batch {first}: synced" in synced.stderr
    assert f"batch {third}: failed" in synced.stderr
    assert f"batch {first}: unchanged" in unchanged.stderr
    completed = [b for b in (first, second) if emulator.raw_batch(b).get("status") == "completed"]
    assert completed
    for batch_id in completed:
        assert f"batch {batch_id}: skipped" in skipped.stderr


def test_on_a_terminal_progress_shows_batches_per_second_and_outcomes_are_logged(
    server: EmulatorServer, sqlite_url: str
) -> None:
    """On a terminal, -v still logs each outcome, and the bar's rate is in batches/s, so
    unchanged batches (whose calls are not parsed) do not make it read 0 calls/s."""
    env = {**os.environ, **api_env(server, sqlite_url)}
    assert run("sync", "--all", "--migrate", env=api_env(server, sqlite_url)).exit_code == 0
    leader, follower = pty.openpty()
    try:
        process = subprocess.run(
            [sys.executable, "-m", "batchsync", "-v", "sync", "--all"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
            timeout=60,
        )
        os.close(follower)
        terminal = b""
        while chunk := _read_pty(leader):
            terminal += chunk
    finally:
        os.close(leader)
    shown = terminal.decode()
    assert process.returncode == EXIT_OK, shown
    assert "batches/s" in shown
    assert "calls/s" not in shown
    assert ": unchanged" in shown


def _read_pty(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the other end is closed and everything was read
        return b""


def test_runs_show_prints_options_as_json(server: EmulatorServer, database_url: str) -> None:
    """`runs show` prints the run's options as one JSON object, not a Python dict."""
    env = api_env(server, database_url)
    run("sync", "--all", "--migrate", "--phone-numbers", "drop", env=env)
    shown = run("runs", "show", "1", env=env)
    options_line = next(line for line in shown.stdout.splitlines() if "options:" in line)
    options = json.loads(options_line.split("options:", 1)[1])
    assert options["all"] is True
    assert options["phone_numbers"].partition(";")[0] == "drop"


def test_one_batch_reads_singular(
    server: EmulatorServer, database_url: str, emulator: Emulator
) -> None:
    """The summary says "1 batch synced", not "1 batches"."""
    env = api_env(server, database_url)
    result = run("sync", emulator.batch_ids()[0], "--migrate", env=env)
    assert "1 batch synced" in result.stdout
    assert "1 batches" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["runs"], id="runs"),
        pytest.param(["runs", "show", "1"], id="runs-show"),
        pytest.param(["purge", "--batch", "b1", "--dry-run"], id="purge"),
    ],
)
def test_read_only_commands_do_not_suggest_migrate(database_url: str, args: list[str]) -> None:
    """On a database without the schema, commands without --migrate do not advise it."""
    result = run(*args, "--database-url", database_url)
    assert result.exit_code == EXIT_DATABASE
    assert "batchsync db upgrade" in result.stderr
    assert "--migrate" not in result.stderr


def test_sync_without_schema_suggests_migrate(database_url: str) -> None:
    """`sync`, which has --migrate, does suggest it."""
    result = run("sync", "--all", "--database-url", database_url, env={"BLAND_API_KEY": KEY})
    assert result.exit_code == EXIT_DATABASE
    assert "--migrate" in result.stderr


# -- destructive commands ask first ----------------------------------------------------------


def stored_batch_count(database_url: str) -> int:
    engine = create_db_engine(load_database(database_url))
    try:
        with engine.connect() as connection:
            return int(connection.execute(text("select count(*) from batches")).scalar_one())
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["purge", "--before", "2100-01-01"], id="purge"),
        pytest.param(["purge", "--older-than", "1", "--json"], id="purge-json"),
        pytest.param(["db", "downgrade", "0001"], id="downgrade"),
        pytest.param(["db", "downgrade", "base"], id="downgrade-base"),
    ],
)
def test_destructive_command_off_a_terminal_without_yes_exits_2_and_changes_nothing(
    server: EmulatorServer, database_url: str, args: list[str]
) -> None:
    """Without a terminal to ask on, purge and downgrade refuse unless given --yes."""
    env = api_env(server, database_url)
    run("sync", "--all", "--migrate", env=env)
    result = run(*args, env=env)
    assert result.exit_code == EXIT_USAGE
    assert "--yes" in result.stderr
    assert stored_batch_count(database_url) == 3
    assert "up to date" in run("db", "current", env=env).stdout


def test_downgrade_dry_run_lists_revisions_and_what_they_drop_and_changes_nothing(
    server: EmulatorServer, database_url: str
) -> None:
    """`db downgrade --dry-run` names each revision it would undo and each table and view
    it would drop, and leaves schema and rows as they were."""
    env = api_env(server, database_url)
    run("sync", "--all", "--migrate", env=env)
    to_0001 = run("db", "downgrade", "0001", "--dry-run", env=env)
    to_base = run("db", "downgrade", "base", "--dry-run", env=env)

    assert to_0001.exit_code == EXIT_OK, to_0001.output
    assert "0002" in to_0001.stdout
    assert "drops table or view batch_outcomes" in to_0001.stdout
    assert "drops table or view calls\n" not in to_0001.stdout
    assert "would undo 4 revisions" in to_base.stdout
    assert "drops table or view calls\n" in to_base.stdout
    assert "drops table or view sync_runs\n" in to_base.stdout
    assert stored_batch_count(database_url) == 3
    assert "up to date" in run("db", "current", env=env).stdout


def test_downgrade_with_yes_drops_what_the_dry_run_listed(
    server: EmulatorServer, database_url: str
) -> None:
    """`db downgrade 0001 --yes` runs without asking; the views the dry run named are gone."""
    env = api_env(server, database_url)
    run("sync", "--all", "--migrate", env=env)
    result = run("db", "downgrade", "0001", "--yes", env=env)
    assert result.exit_code == EXIT_OK, result.output
    assert "schema now at 0001" in result.stdout
    engine = create_db_engine(load_database(database_url))
    assert "batch_outcomes" not in inspect(engine).get_view_names()
    engine.dispose()
    nothing_left = run("db", "downgrade", "0001", env=env)
    assert nothing_left.exit_code == EXIT_OK
    assert "nothing to undo" in nothing_left.stdout


def test_downgrade_that_drops_nothing_runs_off_a_terminal_without_yes(
    server: EmulatorServer, database_url: str
) -> None:
    """`db downgrade 0003` only restores a foreign key: it needs no --yes and keeps the rows."""
    env = api_env(server, database_url)
    run("sync", "--all", "--migrate", env=env)
    result = run("db", "downgrade", "0003", env=env)
    assert result.exit_code == EXIT_OK, result.output
    assert "schema now at 0003" in result.stdout
    assert stored_batch_count(database_url) == 3


def run_on_terminal(args: list[str], answer: bytes, env: dict[str, str]) -> tuple[int, str]:
    """Run batchsync as a process whose stdin and stderr are a terminal; answer its prompt."""
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "batchsync", *args],
            env={**os.environ, **env},
            stdin=follower,
            stdout=subprocess.PIPE,
            stderr=follower,
        )
        os.close(follower)
        shown = b""
        while b"[y/N]" not in shown and (chunk := _read_pty(leader)):
            shown += chunk
        os.write(leader, answer)
        stdout, _ = process.communicate(timeout=60)
        while chunk := _read_pty(leader):
            shown += chunk
    finally:
        os.close(leader)
    return process.returncode, shown.decode() + stdout.decode()


@pytest.mark.parametrize(
    ("answer", "left"), [pytest.param(b"n\n", 3, id="declined"), pytest.param(b"y\n", 0, id="yes")]
)
def test_purge_on_a_terminal_asks_first(
    server: EmulatorServer, sqlite_url: str, answer: bytes, left: int
) -> None:
    """On a terminal `purge` says what it would delete and deletes only on a yes."""
    env = api_env(server, sqlite_url)
    run("sync", "--all", "--migrate", env=env)
    code, shown = run_on_terminal(["purge", "--before", "2100-01-01"], answer, env)
    assert code == EXIT_OK, shown
    assert "Delete 3 batches and" in shown
    assert stored_batch_count(sqlite_url) == left


def test_sqlite_file_in_a_folder_that_cannot_be_created_exits_4() -> None:
    """A SQLite path whose folder cannot be made is an unusable database (4), not a bug."""
    result = run("db", "upgrade", "--database-url", "sqlite:////proc/no-such-folder/batchsync.db")
    assert result.exit_code == EXIT_DATABASE
    assert "cannot create the folder" in result.stderr


def test_downgrade_on_a_terminal_asks_and_a_no_keeps_the_schema(sqlite_url: str) -> None:
    """On a terminal `db downgrade` names what it would drop and, declined, drops nothing."""
    env = {"BATCHSYNC_DATABASE_URL": sqlite_url}
    run("db", "upgrade", env=env)
    code, shown = run_on_terminal(["db", "downgrade", "base"], b"n\n", env)
    assert code == EXIT_OK, shown
    assert "dropping" in shown
    assert "sync_runs" in shown
    assert "cancelled" in shown
    assert "up to date" in run("db", "current", env=env).stdout


@pytest.mark.parametrize(
    "args",
    [
        ["sync", "--all", "--dry-run", "--json", "--since", "0001-01-01T00:00:00+01:00"],
        ["sync", "--all", "--dry-run", "--until", "9999-12-31T23:59:59-01:00"],
        ["purge", "--dry-run", "--before", "0001-01-01T00:30:00+01:00"],
        ["purge", "--dry-run", "--before", "9999-12-31T23:59:59-05:00"],
        ["purge", "--older-than", "99999999", "--yes", "--json"],
        ["purge", "--older-than", "800000", "--dry-run"],
        ["sync", "--all", "--dry-run", "--max-requests-per-second", "1e-300"],
    ],
)
def test_out_of_range_dates_and_values_exit_2_not_70(args: list[str], database_url: str) -> None:
    """Dates that leave years 1-9999 in UTC, ages beyond 100 years and a near-zero request
    rate are usage errors naming the option, not internal errors."""
    result = run(*args, env={"BATCHSYNC_DATABASE_URL": database_url, "BLAND_API_KEY": KEY})
    assert result.exit_code == EXIT_USAGE, result.output
    option = next(a for a in args if a in OUT_OF_RANGE)
    assert option in result.output


OUT_OF_RANGE = ("--since", "--until", "--before", "--older-than", "--max-requests-per-second")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--timeout", "nan"),
        ("--timeout", "inf"),
        ("--timeout", "1e308"),
        ("--base-url", "http://[::1"),
        ("--base-url", "http://127.0.0.1:99999"),
    ],
)
def test_unusable_timeouts_and_base_urls_exit_3(option: str, value: str, sqlite_url: str) -> None:
    """A timeout that is no usable number of seconds, or a base URL whose host or port cannot
    be read, is a configuration error (3), not an internal one (70)."""
    env = {"BATCHSYNC_DATABASE_URL": sqlite_url, "BLAND_API_KEY": KEY}
    result = run("sync", "--all", "--dry-run", option, value, env=env)
    assert result.exit_code == EXIT_CONFIG, result.output


@pytest.mark.parametrize("key", ["é", "sk-test\x01key", "sk-test\nkey"])
def test_api_key_a_header_cannot_carry_exits_3_naming_the_variable(
    key: str, sqlite_url: str
) -> None:
    """A non-ASCII or control-character key exits 3 naming BLAND_API_KEY, never printing it."""
    result = run(
        "sync", "--all", "--dry-run", "--json",
        env={"BATCHSYNC_DATABASE_URL": sqlite_url, "BLAND_API_KEY": key},
    )  # fmt: skip
    assert result.exit_code == EXIT_CONFIG, result.output
    assert "BLAND_API_KEY" in result.output
    assert key not in result.output


def test_api_key_with_a_trailing_newline_is_used_stripped(
    server: EmulatorServer, database_url: str
) -> None:
    """A key read from a file with its newline ("key\\n ") syncs as the key itself."""
    result = run("sync", "--all", "--migrate", env=api_env(server, database_url, f"{KEY}\n "))
    assert result.exit_code == EXIT_OK, result.output


def test_an_id_with_control_characters_is_shown_escaped_in_logs_and_runs_show(
    server: EmulatorServer, database_url: str
) -> None:
    """A newline, BEL or ESC in a batch id never reaches the terminal raw: log lines at -v and
    `runs show` write it escaped, so it can neither split a line nor forge a log line."""
    env = api_env(server, database_url)
    evil = "evil\nbatchsync: info: run 9 succeeded\x07\x1b[31m"

    synced = run("-v", "sync", evil, "--migrate", env=env)
    shown = run("runs", "show", "1", env=env)

    assert synced.exit_code == EXIT_PARTIAL
    assert shown.exit_code == EXIT_OK
    for output in (synced.stderr, shown.stdout):
        assert "\x07" not in output
        assert "\x1b" not in output
        assert "\nbatchsync: info: run 9 succeeded" not in output
        assert "evil\\nbatchsync: info: run 9 succeeded\\x07\\x1b[31m" in output

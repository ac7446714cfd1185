"""How commands open the database: --schema, tables of other applications, read-only SQLite.

The command line through click's runner (and, for file permissions, as a real process of
an unprivileged user), on SQLite and PostgreSQL where both apply.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, inspect, make_url, text

from batchsync.cli import EXIT_CONFIG, EXIT_DATABASE, EXIT_OK, cli
from batchsync.emulator import Emulator, EmulatorServer
from tests.conftest import postgres_admin_url

KEY = "sk-test-91d0c4e2aa"
TABLES = {
    "batches",
    "batch_logs",
    "calls",
    "call_transcripts",
    "queue_status_counts",
    "errors",
    "sync_runs",
    "sync_run_batches",
    "batchsync_alembic_version",
}
VIEWS = {"batch_outcomes", "daily_call_outcomes", "calls_with_batch"}


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(seed=5, batches=3, calls_per_batch=5, api_key=KEY)


@pytest.fixture
def server(emulator: Emulator) -> Iterator[EmulatorServer]:
    with emulator.serve() as server:
        yield server


@pytest.fixture
def schema_name(postgres_url: str) -> Iterator[str]:
    """A schema name not yet in the test database; dropped afterwards if it was created."""
    name = f"bs_{uuid.uuid4().hex[:10]}"
    yield name
    admin = create_engine(postgres_admin_url())
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    admin.dispose()


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def api_env(server: EmulatorServer, database_url: str) -> dict[str, str]:
    return {
        "BLAND_BASE_URL": server.url,
        "BLAND_API_KEY": KEY,
        "BATCHSYNC_DATABASE_URL": database_url,
    }


def relations(url: str, schema: str) -> set[str]:
    """Tables and views of ``schema`` in the test database."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return set(
                connection.execute(
                    text(
                        "select table_name from information_schema.tables where table_schema = :s"
                    ),
                    {"s": schema},
                ).scalars()
            )
    finally:
        engine.dispose()


def default_schema(postgres_url: str) -> str:
    return postgres_url.rsplit("search_path%3D", 1)[-1].split("&")[0]


# -- --schema -----------------------------------------------------------------------------


def test_sync_with_schema_keeps_every_table_in_that_schema(
    server: EmulatorServer, emulator: Emulator, postgres_url: str, schema_name: str
) -> None:
    """db upgrade, a first sync (COPY) and a re-sync of changed data (staging tables) all
    write to the --schema schema, created on the way; nothing lands in the default schema
    or in public."""
    env = {**api_env(server, postgres_url), "BATCHSYNC_SCHEMA": schema_name}
    public_before = relations(postgres_url, "public")
    assert run("db", "upgrade", env=env).exit_code == EXIT_OK
    assert run("sync", "--all", env=env).exit_code == EXIT_OK

    batch_id = emulator.batch_ids()[0]
    raw = emulator.raw_batch(batch_id)
    raw["call_data"][0]["answered_by"] = "voicemail"
    raw["call_data"][0]["transcripts"] = raw["call_data"][0]["transcripts"][:1]
    emulator.put_batch(raw)
    resync = run("sync", batch_id, "--json", env=env)
    assert resync.exit_code == EXIT_OK, resync.output
    assert '"updated":1' in resync.output.replace(" ", "")

    assert relations(postgres_url, schema_name) == TABLES | VIEWS
    assert relations(postgres_url, default_schema(postgres_url)) == set()
    assert relations(postgres_url, "public") == public_before
    engine = create_engine(postgres_admin_url())
    with engine.connect() as connection:
        voicemail = connection.execute(
            text(f"select count(*) from \"{schema_name}\".calls where answered_by = 'voicemail'")
        ).scalar_one()
        runs_count = connection.execute(
            text(f'select count(*) from "{schema_name}".sync_runs')
        ).scalar_one()
    engine.dispose()
    assert voicemail >= 1
    assert runs_count == 2

    listed = run("runs", env=env)
    assert listed.exit_code == EXIT_OK
    assert "succeeded" in listed.output
    shown = run("runs", "show", "2", env=env)
    assert shown.exit_code == EXIT_OK
    current = run("db", "current", env=env)
    assert current.exit_code == EXIT_OK
    assert "up to date" in current.output
    assert f"(schema {schema_name})" in current.output
    assert run("purge", "--batch", batch_id, "--yes", env=env).exit_code == EXIT_OK


def test_schema_with_capitals_is_kept_as_written(postgres_url: str) -> None:
    """A schema name with capitals is quoted, not folded to lower case."""
    name = f"Bland_{uuid.uuid4().hex[:8]}"
    try:
        done = run("db", "upgrade", "--schema", name, "--database-url", postgres_url)
        assert done.exit_code == EXIT_OK, done.output
        assert "batches" in relations(postgres_url, name)
    finally:
        admin = create_engine(postgres_admin_url())
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        admin.dispose()


@pytest.mark.parametrize(
    "command", [["db", "upgrade"], ["db", "current"], ["runs"], ["sync", "--all"]]
)
def test_schema_on_sqlite_exits_3_saying_postgresql_only(
    command: list[str], sqlite_url: str, tmp_path: Path
) -> None:
    """--schema with a SQLite URL is refused as a configuration error, file untouched."""
    env = {"BATCHSYNC_DATABASE_URL": sqlite_url, "BLAND_API_KEY": KEY}
    result = run(*command, "--schema", "bland", env=env)
    assert result.exit_code == EXIT_CONFIG
    assert "PostgreSQL only" in result.output
    assert not (tmp_path / "batchsync.db").exists()


def test_schema_variable_on_sqlite_is_refused(sqlite_url: str) -> None:
    """BATCHSYNC_SCHEMA counts like --schema: refused on SQLite."""
    result = run(
        "db", "upgrade", env={"BATCHSYNC_DATABASE_URL": sqlite_url, "BATCHSYNC_SCHEMA": "x"}
    )
    assert result.exit_code == EXIT_CONFIG
    assert "BATCHSYNC_SCHEMA" in result.output


@pytest.mark.parametrize(
    "name", ["my-schema", "1abc", 'x"; drop table calls; --', "pg_bland", "a" * 64, "sch ema", "é"]
)
def test_invalid_schema_name_exits_3_naming_the_option(name: str, postgres_url: str) -> None:
    """A schema name that is not a plain identifier is refused before connecting."""
    result = run("db", "upgrade", "--schema", name, "--database-url", postgres_url)
    assert result.exit_code == EXIT_CONFIG
    assert "--schema" in result.output
    assert "Traceback" not in result.output


# -- tables of other applications ----------------------------------------------------------


def test_foreign_calls_table_is_named_with_the_way_out(database_url: str) -> None:
    """A `calls` table that is not batchsync's stops db upgrade with exit 4, naming it and
    the way out, before anything is created; it is left as it was."""
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("create table calls (id integer primary key, note text)"))
        connection.execute(text("insert into calls values (1, 'mine')"))
    result = run("db", "upgrade", "--database-url", database_url)
    assert result.exit_code == EXIT_DATABASE, result.output
    assert "calls" in result.output
    assert "did not create" in result.output
    if database_url.startswith("sqlite"):
        assert "another SQLite file" in result.output
    else:
        assert "--schema" in result.output
    assert set(inspect(engine).get_table_names()) == {"calls"}
    with engine.connect() as connection:
        assert connection.execute(text("select note from calls")).scalar_one() == "mine"
    engine.dispose()
    migrate = run(
        "sync",
        "--all",
        "--migrate",
        env={
            "BATCHSYNC_DATABASE_URL": database_url,
            "BLAND_API_KEY": KEY,
            "BLAND_BASE_URL": "http://127.0.0.1:9",
        },
    )
    assert migrate.exit_code == EXIT_DATABASE
    assert "calls" in migrate.output


def test_foreign_table_is_avoided_with_schema(postgres_url: str, schema_name: str) -> None:
    """Beside a foreign `calls` table, --schema gives batchsync a place of its own."""
    engine = create_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(text("create table calls (id integer primary key)"))
    engine.dispose()
    result = run("db", "upgrade", "--schema", schema_name, "--database-url", postgres_url)
    assert result.exit_code == EXIT_OK, result.output
    assert "calls" in relations(postgres_url, schema_name)
    assert relations(postgres_url, default_schema(postgres_url)) == {"calls"}


# -- SQLite readers ------------------------------------------------------------------------


@pytest.fixture
def synced_sqlite(server: EmulatorServer, sqlite_url: str) -> str:
    """A SQLite database with one run in it."""
    assert run("sync", "--all", "--migrate", env=api_env(server, sqlite_url)).exit_code == EXIT_OK
    return sqlite_url


def test_readers_answer_while_a_writer_holds_the_lock(synced_sqlite: str) -> None:
    """runs, runs show and db current answer while another connection holds the write lock."""
    path = synced_sqlite.removeprefix("sqlite:///")
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        env = {"BATCHSYNC_DATABASE_URL": synced_sqlite}
        for command in (["runs"], ["runs", "show", "1"], ["db", "current"]):
            result = run(*command, env=env)
            assert result.exit_code == EXIT_OK, (command, result.output)
        assert "succeeded" in run("runs", env=env).output
    finally:
        writer.execute("ROLLBACK")
        writer.close()


@pytest.mark.parametrize("command", [["runs"], ["runs", "show", "1"], ["db", "current"]])
def test_readers_report_a_missing_file_without_creating_it(
    command: list[str], tmp_path: Path
) -> None:
    """A reader on a missing SQLite file says there is no database there (exit 4) and
    creates neither the file nor its directory."""
    path = tmp_path / "nowhere" / "missing.db"
    result = run(*command, "--database-url", f"sqlite:///{path}")
    assert result.exit_code == EXIT_DATABASE
    assert f"no database at {path}" in result.output
    assert "`batchsync db upgrade`" in result.output
    assert "`batchsync sync` to" not in result.output  # sync alone refuses an empty file
    assert not path.parent.exists()


@pytest.mark.parametrize(
    ("command", "advice"),
    [
        (["purge", "--older-than", "5", "--yes"], "run `batchsync db upgrade`"),
        (["sync", "--all"], "run `batchsync sync --migrate`"),
        (["sync", "--all", "--dry-run"], "run `batchsync sync --migrate`"),
    ],
)
def test_writers_that_do_not_create_report_a_missing_file_without_creating_it(
    command: list[str], advice: str, tmp_path: Path
) -> None:
    """purge, and sync without --migrate, on a missing SQLite file exit 4 saying how to
    create it, and leave no empty file behind."""
    tmp_path.joinpath("here").mkdir()
    path = tmp_path / "here" / "missing.db"
    env = {"BLAND_API_KEY": KEY}
    result = run(*command, "--database-url", f"sqlite:///{path}", env=env)
    assert result.exit_code == EXIT_DATABASE, result.output
    assert f"no database at {path}" in result.output
    assert advice in result.output
    assert not path.exists()


def test_sync_into_a_missing_folder_says_the_folder_is_missing(tmp_path: Path) -> None:
    """sync without --migrate into a folder that does not exist names the folder and
    creates nothing, rather than report a missing schema."""
    path = tmp_path / "nowhere" / "x.db"
    result = run("sync", "--all", "--database-url", f"sqlite:///{path}", env={"BLAND_API_KEY": KEY})
    assert result.exit_code == EXIT_DATABASE, result.output
    assert f"its folder {path.parent} does not exist" in result.output
    assert not path.parent.exists()


# -- read-only SQLite files ------------------------------------------------------------------

NOBODY = 65534


def as_unprivileged(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run batchsync as a user file modes apply to (root ignores them)."""
    command = [sys.executable, "-m", "batchsync", *args]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: file modes cannot be tested")
        command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]
    return subprocess.run(
        command, env={**os.environ, **env}, cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged user can enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="batchsync-ro-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("directory_writable", [True, False], ids=["file-444", "dir-555"])
def test_read_only_file_is_readable_and_refuses_writes(
    server: EmulatorServer, shared_dir: Path, directory_writable: bool
) -> None:
    """A SQLite file the user may only read: runs and db current answer; sync, purge and
    db upgrade exit 4 saying the database is read-only, and the file is unchanged."""
    path = shared_dir / "batchsync.db"
    url = f"sqlite:///{path}"
    assert run("sync", "--all", "--migrate", env=api_env(server, url)).exit_code == EXIT_OK
    before = path.read_bytes()
    path.chmod(0o444)
    shared_dir.chmod(0o777 if directory_writable else 0o555)
    env = {**api_env(server, url), "BATCHSYNC_DATABASE_URL": url}
    try:
        for command in (["runs"], ["runs", "show", "1"], ["db", "current"]):
            done = as_unprivileged(*command, env=env, cwd=shared_dir)
            assert done.returncode == EXIT_OK, (command, done.stderr)
        for command in (["sync", "--all"], ["db", "upgrade"], ["purge", "--batch", "x"]):
            done = as_unprivileged(*command, env=env, cwd=shared_dir)
            assert done.returncode == EXIT_DATABASE, (command, done.stderr)
            assert "is read-only" in done.stderr
            assert KEY not in done.stderr
    finally:
        shared_dir.chmod(0o755)
    assert path.read_bytes() == before


def test_reader_on_a_file_without_schema_names_the_file(sqlite_url: str, tmp_path: Path) -> None:
    """`runs` on an existing SQLite file with no schema says which file, and to upgrade."""
    sqlite3.connect(tmp_path / "batchsync.db").close()
    result = run("runs", "--database-url", sqlite_url)
    assert result.exit_code == EXIT_DATABASE
    assert str(tmp_path / "batchsync.db") in result.output
    assert "batchsync db upgrade" in result.output


def test_reader_in_a_missing_schema_names_the_schema(postgres_url: str, schema_name: str) -> None:
    """`runs --schema X` before any upgrade names schema X and says to upgrade; creates nothing."""
    result = run("runs", "--schema", schema_name, "--database-url", postgres_url)
    assert result.exit_code == EXIT_DATABASE
    assert f"(schema {schema_name})" in result.output
    assert "batchsync db upgrade" in result.output
    admin = create_engine(postgres_admin_url())
    with admin.connect() as connection:
        found = connection.execute(
            text("select 1 from pg_namespace where nspname = :n"), {"n": schema_name}
        ).first()
    admin.dispose()
    assert found is None


@pytest.mark.slow
def test_other_user_reads_while_the_owner_writes(server: EmulatorServer, shared_dir: Path) -> None:
    """A user who may not write the file or its directory lists runs while the owner holds
    the write lock (its -wal and -shm files in place)."""
    path = shared_dir / "batchsync.db"
    url = f"sqlite:///{path}"
    assert run("sync", "--all", "--migrate", env=api_env(server, url)).exit_code == EXIT_OK
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE sync_runs SET error = 'in progress'")
    try:
        done = as_unprivileged("runs", env={"BATCHSYNC_DATABASE_URL": url}, cwd=shared_dir)
        assert done.returncode == EXIT_OK, done.stderr
        assert "succeeded" in done.stdout
    finally:
        writer.execute("ROLLBACK")
        writer.close()


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"username": "no_such_role_batchsync"}, id="unknown-role"),
        pytest.param({"database": "no_such_db_batchsync"}, id="unknown-database"),
        pytest.param({"port": 99999}, id="port-out-of-range"),
    ],
)
def test_settings_the_postgresql_server_refuses_exit_3_not_4(
    postgres_url: str, change: dict[str, object]
) -> None:
    """An unknown role or database, or a port out of range, is a configuration error (3)
    naming the way out, not 'database unavailable, retry' (4)."""
    url = make_url(postgres_url).set(**change).render_as_string(hide_password=False)  # type: ignore[arg-type]
    result = run("runs", "--database-url", url)
    assert result.exit_code == EXIT_CONFIG, result.output
    assert "BATCHSYNC_DATABASE_URL" in result.output


def test_unreachable_postgresql_port_still_exits_4(postgres_url: str) -> None:
    """Nothing listening on the port is the database being unavailable: exit 4."""
    url = make_url(postgres_url).set(port=1).render_as_string(hide_password=False)
    result = run("runs", "--database-url", url)
    assert result.exit_code == EXIT_DATABASE, result.output


def test_password_given_as_a_query_parameter_is_never_printed(postgres_url: str) -> None:
    """?password= in the URL shows as *** in the errors, whatever the outcome."""
    url = make_url(postgres_url).set(database="no_such_db_batchsync")
    shown = url.update_query_dict({"password": "hunter2-query"})
    result = run("runs", "--database-url", shown.render_as_string(hide_password=False))
    assert "hunter2" not in result.output
    assert "password=***" in result.output

"""Throughput benchmark of ``batchsync sync``: PostgreSQL, SQLite, their limits, and dlt.

One run, on one machine, against the package's emulator served from a subprocess on
127.0.0.1 (see ``serve_emulator.py``):

1. ``batchsync sync --all --migrate --json`` as a subprocess into a fresh PostgreSQL
   database and a fresh SQLite file: the first load, a re-sync with nothing changed
   (incremental: completed batches are skipped), the same with ``--refresh`` (everything
   re-fetched, nothing unchanged rewritten), and ``--refresh`` after the emulator moved to
   revision 1 with ``--changed-fraction`` of the calls changed;
2. the limits: binary ``COPY`` (psycopg 3 ``cursor.copy`` + ``write_row``) of the same call
   rows into an empty, logged table shaped like batchsync's ``calls`` (``LIKE calls
   INCLUDING ALL``), and a bare ``executemany`` INSERT of them into SQLite (WAL, one
   transaction); the rows are parsed with ``batchsync.payload.parse_batch`` beforehand,
   outside the timed part;
3. the peer: dlt merging the same batches' calls into the same PostgreSQL (``dlt_load.py``,
   in its own virtualenv), a first load and a re-run;
4. peak RSS of a first load with a quarter of the batches, to show whether memory stays
   flat as the number of batches grows;
5. v2 (``--v2-batches`` x ``--v2-calls``): ``batchsync sync --all --api v2`` first loads of
   the emulator's v2 batches into a fresh PostgreSQL database and a fresh SQLite file, once
   with call details (one ``GET /v1/calls/{id}`` per call, v2's default) and once with
   ``--no-call-details``; their rows add the HTTP requests the sync made, and per second.

It prints a table of the figures and the ratios batchsync/limit and batchsync/dlt, with
PASS/MISS beside the targets (informational: nothing here asserts on time), and writes
everything as JSON to ``bench/results/<timestamp>.json``.

Example:

    /tmp/venv/bin/python bench/run.py --batches 10 --calls 1000
"""

from __future__ import annotations

import compileall
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import click
import httpx
import orjson
import psutil
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from serve_emulator import EmulatorProcess, Mode, Workload
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

import batchsync
from batchsync.jsontext import json_dumps
from batchsync.models import Base
from batchsync.payload import ParsedBatch, parse_batch

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
DATABASE = "batchsync_bench"
RSS_DATABASE = "batchsync_bench_rss"
V2_DATABASE = "batchsync_bench_v2"
LIMIT_SCHEMA = "bench_limit"
DLT_DATASET = "dlt_bench"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_DLT_PYTHON = str(Path(tempfile.gettempdir(), "bench-dlt-venv", "bin", "python"))
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
MIB = 1024 * 1024
# The CLI of the batchsync this Python imports. Run from a work directory, never from a
# checkout, where `-m` would import the checkout's package instead of the installed one.
BATCHSYNC = [sys.executable, "-m", "batchsync"]

# The targets the figures are reported against (informational).
TARGET_COPY_RATIO = 0.5  # PostgreSQL first load >= 0.5 x raw COPY of calls + lines (calls/s)
TARGET_DLT_RATIO = 10.0  # PostgreSQL first load >= 10 x dlt merge (calls/s)
TARGET_RESYNC_FRACTION = 0.10  # re-sync with nothing changed < 10% of the first load's time
TARGET_EXECUTEMANY_RATIO = 0.5  # SQLite first load >= 0.5 x executemany of calls + lines
TARGET_PEAK_RSS_MIB = 300.0  # peak RSS of the full-size sync
TARGET_RSS_GROWTH = 1.2  # "flat": peak RSS at N batches <= 1.2 x peak RSS at N/4 batches
# The v2 first loads: one detail request per call, so far fewer calls than v1 for the same
# time; sized to take well under two minutes, all four of them, on a 2-core machine.
DEFAULT_V2_BATCHES = 5
DEFAULT_V2_CALLS = 1500


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and why."""


# -- measurements -------------------------------------------------------------------------


@dataclass
class Measurement:
    """One timed step: how long, how much work, and what it cost in memory and CPU."""

    key: str
    label: str
    wall_seconds: float
    calls: int  # calls handled: fetched and written or compared
    rows: int  # rows written (inserted, updated or deleted), all tables
    requests: int | None = None  # HTTP requests the sync sent (retries included), its count
    peak_rss_mib: float | None = None  # of the measured process, from wait4's ru_maxrss
    process_cpu_seconds: float | None = None  # user + system of the measured process
    emulator_cpu_seconds: float | None = None
    machine_cpu_seconds: float | None = None  # busy time summed over every core
    others_cpu_seconds: float | None = None  # unrelated processes: see CpuUse
    # The measured process's own children's children (batchsync's parser processes and
    # the fork server that starts them), and PostgreSQL's processes: sampled, see CpuUse.
    helpers_cpu_seconds: float | None = None
    postgres_cpu_seconds: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def calls_per_second(self) -> float:
        return self.calls / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def requests_per_second(self) -> float | None:
        if self.requests is None:
            return None
        return self.requests / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        per_second = self.requests_per_second
        return {
            **asdict(self),
            "calls_per_second": round(self.calls_per_second, 1),
            "rows_per_second": round(self.rows_per_second, 1),
            "requests_per_second": None if per_second is None else round(per_second, 1),
        }


@dataclass(frozen=True)
class ChildRun:
    """A finished subprocess: its output, wall time and resource usage (from wait4)."""

    returncode: int
    stdout: str
    stderr: str
    wall_seconds: float
    peak_rss_mib: float
    cpu_seconds: float


def run_child(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> ChildRun:
    """Run a command to completion; its peak RSS and CPU time come from ``os.wait4``.

    ``wait4`` reports the child's own ``ru_maxrss`` (KiB on Linux), exactly, with no
    sampling: the high-water mark of the process, however briefly it was reached.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=cwd)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ChildRun(
            returncode=process.returncode,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            wall_seconds=wall,
            peak_rss_mib=usage.ru_maxrss * 1024 / MIB,
            cpu_seconds=usage.ru_utime + usage.ru_stime,
        )


@dataclass
class CpuUse:
    emulator_seconds: float | None = None
    machine_seconds: float | None = None
    # Processes that are neither ours nor PostgreSQL's (another test run, say), counted
    # when alive at both ends of the step: their work competed with the step for the cores.
    others_seconds: float | None = None
    # Sampled every SAMPLE_SECONDS while the step runs (processes that end take their CPU
    # with them, so the last sample of each counts): the measured process's descendants
    # (not itself: wait4 gives its own exactly), and every PostgreSQL process.
    helpers_seconds: float | None = None
    postgres_seconds: float | None = None


SAMPLE_SECONDS = 0.25


class _CpuSampler(threading.Thread):
    """The CPU seconds, per process, of the processes a step's figures need but wait4 does
    not give: what the measured process started (parser processes), and PostgreSQL."""

    def __init__(self, emulator_pid: int | None) -> None:
        super().__init__(name="bench-cpu-sampler", daemon=True)
        self._emulator_pid = emulator_pid
        self._halt = threading.Event()
        self.first: dict[tuple[str, int], float] = {}
        self.last: dict[tuple[str, int], float] = {}
        self._sample(initial=True)

    def run(self) -> None:
        while not self._halt.wait(SAMPLE_SECONDS):
            self._sample()

    def finish(self) -> tuple[float, float]:
        """Stop; the helpers' and PostgreSQL's CPU seconds during the step."""
        self._halt.set()
        self.join()
        self._sample()
        totals = {"helpers": 0.0, "postgres": 0.0}
        for key, seconds in self.last.items():
            totals[key[0]] += seconds - self.first.get(key, 0.0)
        return round(totals["helpers"], 2), round(totals["postgres"], 2)

    def _sample(self, *, initial: bool = False) -> None:
        seen: list[tuple[tuple[str, int], psutil.Process]] = []
        for child in psutil.Process().children():
            if child.pid == self._emulator_pid:
                continue
            try:
                seen += [(("helpers", p.pid), p) for p in child.children(recursive=True)]
            except psutil.Error:
                continue
        for process in psutil.process_iter(["username"]):
            if process.info["username"] == "postgres":
                seen.append((("postgres", process.pid), process))
        for key, process in seen:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            seconds = times.user + times.system
            if initial:
                self.first[key] = seconds
            self.last[key] = seconds


def _busy_seconds() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def _others_cpu() -> dict[int, float]:
    """CPU seconds so far of every process outside this benchmark and PostgreSQL."""
    ours = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
    found = {}
    for process in psutil.process_iter(["username", "cpu_times"]):
        info = process.info
        if process.pid in ours or info["username"] == "postgres" or info["cpu_times"] is None:
            continue
        found[process.pid] = info["cpu_times"].user + info["cpu_times"].system
    return found


@contextmanager
def cpu_use(emulator: EmulatorProcess | None) -> Iterator[CpuUse]:
    """CPU seconds the emulator, the whole machine and unrelated processes spent in the block."""
    used = CpuUse()
    process = psutil.Process(emulator.pid) if emulator is not None else None
    emulator_before = sum(process.cpu_times()[:2]) if process is not None else 0.0
    machine_before = _busy_seconds()
    others_before = _others_cpu()
    sampler = _CpuSampler(emulator.pid if emulator is not None else None)
    sampler.start()
    try:
        yield used
    finally:
        used.helpers_seconds, used.postgres_seconds = sampler.finish()
    used.machine_seconds = round(_busy_seconds() - machine_before, 2)
    others_after = _others_cpu()
    used.others_seconds = round(
        sum(t - others_before[pid] for pid, t in others_after.items() if pid in others_before), 2
    )
    if process is not None:
        used.emulator_seconds = round(sum(process.cpu_times()[:2]) - emulator_before, 2)


# -- PostgreSQL -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Postgres:
    """The local server: an admin connection string and the databases the benchmark owns."""

    admin: dict[str, Any]

    @classmethod
    def from_url(cls, url: str) -> Postgres:
        params = conninfo_to_dict(url)
        host = str(params.get("host") or "localhost")
        if not (host in LOOPBACK_HOSTS or host.startswith(("127.", "/"))):
            raise click.BadParameter(
                f"host {host!r} is not a loopback address or a socket directory",
                param_hint="--postgres-url",
            )
        return cls(params)

    def conninfo(self, database: str) -> str:
        return make_conninfo(**{**self.admin, "dbname": database})

    def sqlalchemy_url(self, database: str) -> str:
        url = URL.create(
            "postgresql+psycopg",
            username=self.admin.get("user"),
            password=self.admin.get("password"),
            host=self.admin.get("host"),
            port=int(self.admin["port"]) if self.admin.get("port") else None,
            database=database,
        )
        return url.render_as_string(hide_password=False)

    def dlt_url(self, database: str) -> str:
        # dlt insists on a password; with trust authentication an empty one is ignored.
        url = URL.create(
            "postgresql",
            username=self.admin.get("user"),
            password=self.admin.get("password") or "",
            host=self.admin.get("host"),
            port=int(self.admin["port"]) if self.admin.get("port") else None,
            database=database,
        )
        return url.render_as_string(hide_password=False)

    def execute(self, statement: str, database: str | None = None) -> list[tuple[Any, ...]]:
        """Run one statement in autocommit mode (CREATE DATABASE, CHECKPOINT) and fetch."""
        conninfo = self.conninfo(database) if database else make_conninfo(**self.admin)
        with psycopg.connect(conninfo, autocommit=True) as connection:
            cursor = connection.execute(statement.encode())
            return cursor.fetchall() if cursor.description else []

    def recreate(self, database: str) -> None:
        self.drop(database)
        self.execute(f'CREATE DATABASE "{database}"')

    def drop(self, database: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    def checkpoint(self) -> None:
        """Flush dirty pages, so one step's writes are not paid for during the next."""
        self.execute("CHECKPOINT")

    def version(self) -> str:
        return str(self.execute("SHOW server_version")[0][0])


# -- batchsync runs ---------------------------------------------------------------------------


def child_env(**overrides: str) -> dict[str, str]:
    """The environment minus any batchsync or Bland settings, plus ``overrides``."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("BATCHSYNC_", "BLAND_", "DLT_"))
    }
    env.update(overrides)
    return env


def ledger_calls(database_url: str, run_id: int, calls_per_batch: int) -> int:
    """Calls in the batches a run fetched (synced or unchanged), from its own ledger.

    A batch fetched but not parsed (its content unchanged) may have no count there; it is
    counted as ``calls_per_batch``, which every batch of the emulator's workload has.
    """
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            counted, uncounted = connection.execute(
                text(
                    "SELECT coalesce(sum(calls), 0), count(*) FILTER (WHERE calls IS NULL)"
                    " FROM sync_run_batches"
                    " WHERE run_id = :run_id AND status IN ('synced', 'unchanged')"
                ),
                {"run_id": run_id},
            ).one()
    finally:
        engine.dispose()
    return int(counted) + int(uncounted) * calls_per_batch


def measure_sync(
    key: str,
    label: str,
    *,
    database_url: str,
    emulator: EmulatorProcess,
    concurrency: int,
    workdir: Path,
    refresh: bool = False,
    v2_call_details: bool | None = None,
) -> Measurement:
    """Time ``batchsync sync --all --migrate --json`` end to end, as a user runs it.

    ``v2_call_details`` None syncs as the v1 steps do (``--api`` left at auto); True or
    False syncs the v2 batches alone (``--api v2``) with ``--call-details`` or
    ``--no-call-details``. Raises BenchError when batchsync fails.
    """
    argv = [*BATCHSYNC, "sync", "--all", "--migrate", "--json"]
    argv += [f"--concurrency={concurrency}", *(["--refresh"] if refresh else [])]
    calls_per_batch = emulator.workload.calls
    if v2_call_details is not None:
        argv += ["--api=v2", "--call-details" if v2_call_details else "--no-call-details"]
        calls_per_batch = emulator.workload.v2_calls
    env = child_env(
        BLAND_BASE_URL=emulator.url,
        BLAND_API_KEY=emulator.api_key,
        BATCHSYNC_DATABASE_URL=database_url,
    )
    click.echo(f"  {label} ...", err=True, nl=False)
    with cpu_use(emulator) as cpu:
        child = run_child(argv, env, cwd=workdir)
    if child.returncode != 0:
        raise BenchError(f"{label}: batchsync exited {child.returncode}:\n{child.stderr[-3000:]}")
    summary = json.loads(child.stdout)
    tables = summary["tables"]
    rows = sum(c["inserted"] + c["updated"] + c["deleted"] for c in tables.values())
    calls = ledger_calls(database_url, int(summary["run_id"]), calls_per_batch)
    click.echo(f" {child.wall_seconds:.1f}s", err=True)
    return Measurement(
        key=key,
        label=label,
        wall_seconds=round(child.wall_seconds, 3),
        calls=calls,
        rows=rows,
        requests=int(summary["http"]["requests"]),
        peak_rss_mib=round(child.peak_rss_mib, 1),
        process_cpu_seconds=round(child.cpu_seconds, 2),
        emulator_cpu_seconds=cpu.emulator_seconds,
        machine_cpu_seconds=cpu.machine_seconds,
        others_cpu_seconds=cpu.others_seconds,
        helpers_cpu_seconds=cpu.helpers_seconds,
        postgres_cpu_seconds=cpu.postgres_seconds,
        details={
            "batches": summary["batches"],
            "tables": tables,
            "http": summary["http"],
            "sync_seconds": summary["duration_seconds"],
        },
    )


# -- the limits -----------------------------------------------------------------------------


def iter_parsed_batches(emulator: EmulatorProcess) -> Iterator[ParsedBatch]:
    """Every batch of the emulator, fetched and parsed as batchsync parses it."""
    headers = {"authorization": emulator.api_key}
    with httpx.Client(base_url=emulator.url, headers=headers, timeout=120) as client:
        listing = client.get("/v1/batches", params={"ascending": "true", "limit": 100_000})
        listing.raise_for_status()
        for entry in listing.json()["batches"]:
            batch_id = entry["batch_id"]
            response = client.get(
                f"/v1/batches/{batch_id}",
                params={
                    "include_calls": "true",
                    "include_transcripts": "true",
                    "include_analysis": "true",
                },
            )
            response.raise_for_status()
            yield parse_batch(orjson.loads(response.content), batch_id=batch_id)


class Stopwatch:
    """Adds up the time spent inside ``timed()`` blocks, and nothing else."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextmanager
    def timed(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - started


class PostgresCopyLimit:
    """Binary COPY of records into empty tables shaped like batchsync's, one commit per batch.

    The tables are ``LIKE public.<table> INCLUDING ALL`` in a schema of their own: the same
    columns, types, primary key and indexes as batchsync's, logged (not UNLOGGED); neither
    table has a foreign key in batchsync's schema either.
    """

    TABLES = ("calls", "call_transcripts")

    def __init__(self, postgres: Postgres, database: str) -> None:
        self.connection = psycopg.connect(postgres.conninfo(database))
        self.columns: dict[str, list[str]] = {}
        self.types: dict[str, list[str]] = {}
        self.watches = {table: Stopwatch() for table in self.TABLES}
        self.connection.execute(f"DROP SCHEMA IF EXISTS {LIMIT_SCHEMA} CASCADE")
        self.connection.execute(f"CREATE SCHEMA {LIMIT_SCHEMA}")
        for table in self.TABLES:
            self.connection.execute(
                f"CREATE TABLE {LIMIT_SCHEMA}.{table} (LIKE public.{table} INCLUDING ALL)"
            )
            described = self.connection.execute(
                "SELECT a.attname, t.typname FROM pg_attribute a"
                " JOIN pg_type t ON t.oid = a.atttypid"
                " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped"
                " ORDER BY a.attnum",
                (f"{LIMIT_SCHEMA}.{table}",),
            ).fetchall()
            # Records are in the order of batchsync's model, which is not the physical order
            # once a migration has added columns (ALTER TABLE appends them): follow the model.
            typname = dict(described)
            self.columns[table] = [c.name for c in Base.metadata.tables[table].columns]
            self.types[table] = [typname[name] for name in self.columns[table]]
        self.connection.commit()

    def write(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        """COPY ``rows`` into ``table`` and commit, on the stopwatch."""
        statement = (
            f"COPY {LIMIT_SCHEMA}.{table} ({', '.join(self.columns[table])})"
            " FROM STDIN (FORMAT BINARY)"
        )
        with (
            self.watches[table].timed(),
            self.connection.cursor() as cursor,
            cursor.copy(statement) as copy,
        ):
            copy.set_types(self.types[table])
            for row in rows:
                copy.write_row(row)
        with self.watches[table].timed():
            self.connection.commit()

    def close(self) -> None:
        self.connection.execute(f"DROP SCHEMA IF EXISTS {LIMIT_SCHEMA} CASCADE")
        self.connection.commit()
        self.connection.close()


class SqliteExecutemanyLimit:
    """A bare ``executemany`` INSERT into batchsync's SQLite tables: WAL, one transaction.

    Each table gets a file of its own so that each is loaded in one transaction of its own.
    The DDL (columns, primary key, indexes) is read from batchsync's own SQLite database.
    Timestamps and JSON arrive as the text batchsync stores, converted beforehand.
    """

    TABLES = ("calls", "call_transcripts")

    def __init__(self, workdir: Path, schema_source: Path) -> None:
        with sqlite3.connect(schema_source) as source:
            ddl = {
                table: [
                    sql
                    for (sql,) in source.execute(
                        "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL"
                        " ORDER BY type DESC",  # the table before its indexes
                        (table,),
                    )
                ]
                for table in self.TABLES
            }
        self.connections: dict[str, sqlite3.Connection] = {}
        self.statements: dict[str, str] = {}
        self.converters: dict[str, list[tuple[int, Callable[[Any], Any]]]] = {}
        self.watches = {table: Stopwatch() for table in self.TABLES}
        for table in self.TABLES:
            path = workdir / f"limit-{table}.db"
            path.unlink(missing_ok=True)
            connection = sqlite3.connect(path, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            for statement in ddl[table]:
                connection.execute(statement)
            info = {
                row[1]: str(row[2]).upper()
                for row in connection.execute(f"PRAGMA table_info({table})")
            }
            # In the model's order, which the records follow (added columns come last on disk).
            columns = [c.name for c in Base.metadata.tables[table].columns]
            declared = [info[name] for name in columns]
            marks = ", ".join("?" * len(columns))
            self.statements[table] = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
            self.converters[table] = [
                (i, _sqlite_timestamp if "DATETIME" in kind else json_dumps)
                for i, kind in enumerate(declared)
                if "DATETIME" in kind or kind == "JSON"
            ]
            self.connections[table] = connection
            with self.watches[table].timed():
                connection.execute("BEGIN")

    def rows(self, table: str, records: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Records as driver rows (done outside the stopwatch)."""
        converters = self.converters[table]
        converted = []
        for record in records:
            row = list(record)
            for index, convert in converters:
                if row[index] is not None:
                    row[index] = convert(row[index])
            converted.append(tuple(row))
        return converted

    def write(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        with self.watches[table].timed():
            self.connections[table].executemany(self.statements[table], rows)

    def close(self) -> None:
        for table, connection in self.connections.items():
            with self.watches[table].timed():
                connection.execute("COMMIT")
            connection.close()


def _sqlite_timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def measure_limits(
    postgres: Postgres, emulator: EmulatorProcess, workdir: Path, sqlite_schema: Path | None
) -> list[Measurement]:
    """Raw COPY into PostgreSQL and bare executemany into SQLite of the same call rows.

    Each batch is fetched and parsed outside the stopwatches; only the writes (and their
    commits) are timed. Transcript lines are written too, to their own table and timed
    apart, for a like-for-like rows/s limit.
    """
    click.echo("  limits: raw COPY and bare executemany ...", err=True, nl=False)
    postgres.checkpoint()
    stamp = (datetime.now(UTC), 0)
    copy_limit = PostgresCopyLimit(postgres, DATABASE)
    sqlite_limit = SqliteExecutemanyLimit(workdir, sqlite_schema) if sqlite_schema else None
    calls = lines = 0
    try:
        with cpu_use(emulator) as cpu:
            for parsed in iter_parsed_batches(emulator):
                call_rows = [record + stamp for record in parsed.calls or ()]
                line_rows = [record + stamp for record in parsed.transcripts or ()]
                calls += len(call_rows)
                lines += len(line_rows)
                copy_limit.write("calls", call_rows)
                copy_limit.write("call_transcripts", line_rows)
                if sqlite_limit is not None:
                    sqlite_limit.write("calls", sqlite_limit.rows("calls", call_rows))
                    sqlite_limit.write(
                        "call_transcripts", sqlite_limit.rows("call_transcripts", line_rows)
                    )
    finally:
        copy_limit.close()
        if sqlite_limit is not None:
            sqlite_limit.close()
    copy_calls = copy_limit.watches["calls"].seconds
    copy_all = copy_calls + copy_limit.watches["call_transcripts"].seconds
    found = [
        Measurement("pg_copy_calls", "raw binary COPY: calls", round(copy_calls, 3), calls, calls),
        Measurement(
            "pg_copy_all",
            "raw binary COPY: calls + transcript lines",
            round(copy_all, 3),
            calls,
            calls + lines,
        ),
    ]
    if sqlite_limit is not None:
        many_calls = sqlite_limit.watches["calls"].seconds
        many_all = many_calls + sqlite_limit.watches["call_transcripts"].seconds
        found += [
            Measurement(
                "sqlite_executemany_calls",
                "bare executemany: calls",
                round(many_calls, 3),
                calls,
                calls,
            ),
            Measurement(
                "sqlite_executemany_all",
                "bare executemany: calls + transcript lines",
                round(many_all, 3),
                calls,
                calls + lines,
            ),
        ]
    for m in found:
        m.others_cpu_seconds = cpu.others_seconds
        m.helpers_cpu_seconds = cpu.helpers_seconds
        m.postgres_cpu_seconds = cpu.postgres_seconds
    click.echo(f" COPY {copy_all:.1f}s", err=True)
    return found


# -- dlt ------------------------------------------------------------------------------------


def measure_dlt(
    key: str,
    label: str,
    *,
    dlt_python: str,
    postgres: Postgres,
    emulator: EmulatorProcess,
    workdir: Path,
    concurrency: int,
) -> Measurement:
    """Time ``dlt_load.py`` (a merge load of every batch's calls) in the dlt virtualenv."""
    argv = [
        dlt_python,
        str(BENCH_DIR / "dlt_load.py"),
        f"--base-url={emulator.url}",
        f"--api-key={emulator.api_key}",
        f"--postgres-url={postgres.dlt_url(DATABASE)}",
        f"--dataset={DLT_DATASET}",
        f"--pipelines-dir={workdir / 'dlt-pipelines'}",
        f"--concurrency={concurrency}",
    ]
    env = child_env(RUNTIME__DLTHUB_TELEMETRY="false")
    click.echo(f"  {label} ...", err=True, nl=False)
    postgres.checkpoint()
    with cpu_use(emulator) as cpu:
        child = run_child(argv, env, cwd=workdir)
    if child.returncode != 0:
        raise BenchError(f"{label}: dlt_load.py exited {child.returncode}:\n{child.stderr[-3000:]}")
    report = json.loads(child.stdout.strip().splitlines()[-1])
    click.echo(f" {child.wall_seconds:.1f}s", err=True)
    return Measurement(
        key=key,
        label=label,
        wall_seconds=round(child.wall_seconds, 3),
        calls=int(report["calls"]),
        rows=sum(int(n) for n in report["rows"].values()),
        peak_rss_mib=round(child.peak_rss_mib, 1),
        process_cpu_seconds=round(child.cpu_seconds, 2),
        emulator_cpu_seconds=cpu.emulator_seconds,
        machine_cpu_seconds=cpu.machine_seconds,
        others_cpu_seconds=cpu.others_seconds,
        helpers_cpu_seconds=cpu.helpers_seconds,
        postgres_cpu_seconds=cpu.postgres_seconds,
        details=report,
    )


# -- the report -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One ratio, and the target it is read against (None: informational only)."""

    label: str
    value: float | None
    target: str
    passed: bool | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def checks(m: dict[str, Measurement]) -> list[Check]:
    """The ratios batchsync/limit, batchsync/dlt and re-sync/first, against the targets."""
    found: list[Check] = []

    def add(
        label: str,
        value: float | None,
        target: str = "informational",
        ok: Callable[[float], bool] | None = None,
    ) -> None:
        found.append(
            Check(label, value, target, None if value is None or ok is None else ok(value))
        )

    def rate(key: str, what: str = "calls") -> float | None:
        if key not in m:
            return None
        return m[key].calls_per_second if what == "calls" else m[key].rows_per_second

    def wall(key: str) -> float | None:
        return m[key].wall_seconds if key in m else None

    def rss(key: str) -> float | None:
        return m[key].peak_rss_mib if key in m else None

    add(
        "PG first load / raw COPY of calls + lines (calls/s)",
        _ratio(rate("pg_first"), rate("pg_copy_all")),
        f">= {TARGET_COPY_RATIO}",
        lambda v: v >= TARGET_COPY_RATIO,
    )
    add(
        "PG first load / raw COPY of calls alone (calls/s)",
        _ratio(rate("pg_first"), rate("pg_copy_calls")),
    )
    add(
        "PG first load / dlt first load (calls/s)",
        _ratio(rate("pg_first"), rate("dlt_first")),
        f">= {TARGET_DLT_RATIO:g}",
        lambda v: v >= TARGET_DLT_RATIO,
    )
    add(
        "PG --refresh, nothing changed / dlt re-run (calls/s)",
        _ratio(rate("pg_refresh"), rate("dlt_rerun")),
    )
    for prefix, name in (("pg", "PG"), ("sqlite", "SQLite")):
        add(
            f"{name} re-sync, nothing changed / first load (time)",
            _ratio(wall(f"{prefix}_resync"), wall(f"{prefix}_first")),
            f"< {TARGET_RESYNC_FRACTION:.0%}",
            lambda v: v < TARGET_RESYNC_FRACTION,
        )
        add(  # --refresh rewrites every batch whatever its hash: a first load's work
            f"{name} --refresh, nothing changed / first load (time)",
            _ratio(wall(f"{prefix}_refresh"), wall(f"{prefix}_first")),
        )
        add(
            f"{name} --refresh, 10% changed / first load (time)",
            _ratio(wall(f"{prefix}_changed"), wall(f"{prefix}_first")),
        )
    add(
        "SQLite first load / bare executemany of calls + lines (calls/s)",
        _ratio(rate("sqlite_first"), rate("sqlite_executemany_all")),
        f">= {TARGET_EXECUTEMANY_RATIO}",
        lambda v: v >= TARGET_EXECUTEMANY_RATIO,
    )
    add(
        "SQLite first load / bare executemany of calls alone (calls/s)",
        _ratio(rate("sqlite_first"), rate("sqlite_executemany_calls")),
    )
    for prefix, name in (("pg", "PG"), ("sqlite", "SQLite")):
        first = m.get(f"{prefix}_first")
        if first is None or not first.calls or first.process_cpu_seconds is None:
            continue
        per = 100_000 / first.calls
        own = first.process_cpu_seconds + (first.helpers_cpu_seconds or 0.0)
        add(
            f"{name} first load: batchsync CPU s per 100,000 calls",
            own * per,
        )
        if prefix == "pg" and first.postgres_cpu_seconds is not None:
            add(
                "PG first load: PostgreSQL CPU s per 100,000 calls",
                first.postgres_cpu_seconds * per,
            )
    for prefix, name in (("pg", "PG"), ("sqlite", "SQLite")):
        for step, what in (("first", "first load"), ("changed", "--refresh, 10% changed")):
            add(
                f"{name} {what}: peak RSS (MiB)",
                rss(f"{prefix}_{step}"),
                f"< {TARGET_PEAK_RSS_MIB:g}",
                lambda v: v < TARGET_PEAK_RSS_MIB,
            )
        add(
            f"{name} first load: peak RSS, all batches / a quarter of them",
            _ratio(rss(f"{prefix}_first"), rss(f"{prefix}_first_quarter")),
            f"<= {TARGET_RSS_GROWTH} (flat)",
            lambda v: v <= TARGET_RSS_GROWTH,
        )
    for prefix, name in (("pg", "PG"), ("sqlite", "SQLite")):
        detailed = m.get(f"{prefix}_v2_first")
        if detailed is not None and detailed.requests is not None and detailed.calls:
            add(
                f"{name} v2 first load, call details: requests per call",
                detailed.requests / detailed.calls,
            )
        add(
            f"{name} v2 first load: call details / --no-call-details (calls/s)",
            _ratio(rate(f"{prefix}_v2_first"), rate(f"{prefix}_v2_first_no_details")),
        )
        add(
            f"{name} v2 first load, call details / v1 first load (calls/s)",
            _ratio(rate(f"{prefix}_v2_first"), rate(f"{prefix}_first")),
        )
    return [c for c in found if c.value is not None]


def _number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def render(meta: dict[str, Any], measurements: list[Measurement], found: list[Check]) -> str:
    """The report as printed: the workload, one line per figure, then the ratios."""
    w = meta["workload"]
    lines = [
        "",
        f"batchsync {meta['batchsync_version']} ({meta['code']})",
        f"machine: {meta['machine']}",
        f"PostgreSQL {meta['postgresql']}, SQLite {meta['sqlite']}, Python {meta['python']}"
        + (f", dlt {meta['dlt']}" if meta.get("dlt") else ""),
        f"workload: {w['batches']} batches x {w['calls']:,} calls = {w['total_calls']:,} calls, "
        f"transcript ratio {w['transcript_ratio']}, {w['payload_mib']:,.0f} MiB of JSON; "
        f"--concurrency {meta['concurrency']}",
        f"emulator: {meta['emulator_mode']} mode, a subprocess on 127.0.0.1 sharing the "
        f"machine's {meta['cpu_count']} cores with everything measured "
        f"(its CPU seconds are in the 'emu' column)",
    ]
    if w.get("v2_batches"):
        lines.append(
            f"v2 workload: {w['v2_batches']} batches x {w['v2_calls']:,} calls = "
            f"{w['v2_batches'] * w['v2_calls']:,} calls (the newest batch in progress, a fifth "
            "of its calls queued); synced with --api v2"
        )
    lines += [
        "",
        f"{'':<46}{'wall s':>9}{'calls':>11}{'calls/s':>10}{'req/s':>9}{'rows':>11}{'rows/s':>10}"
        f"{'RSS MiB':>9}  {'CPU s: proc/workers/pg/emu/others/all':>38}",
    ]
    for m in measurements:
        cpu = "/".join(
            _number(v, 1)
            for v in (
                m.process_cpu_seconds,
                m.helpers_cpu_seconds,
                m.postgres_cpu_seconds,
                m.emulator_cpu_seconds,
                m.others_cpu_seconds,
                m.machine_cpu_seconds,
            )
        )
        lines.append(
            f"{m.label:<46}{m.wall_seconds:>9.2f}{m.calls:>11,}{_number(m.calls_per_second):>10}"
            f"{_number(m.requests_per_second):>9}"
            f"{m.rows:>11,}{_number(m.rows_per_second):>10}{_number(m.peak_rss_mib, 1):>9}"
            f"  {cpu:>38}"
        )
    lines += [
        "",
        "CPU s: the measured process / the processes it started (batchsync's parser processes) /",
        "PostgreSQL / the emulator / unrelated processes (others' tests, say: competition for",
        "the cores) / every process on the machine. Workers and PostgreSQL are sampled every",
        f"{SAMPLE_SECONDS:g} s (a process's last moments before it ends may be missed).",
        "Limits run inside the benchmark process: their CPU is not broken down.",
        "req/s: the HTTP requests the sync sent (its own count, retries included) per second",
        "of wall time; a v1 batch is one request, a v2 batch four or more plus one per call",
        "with call details (bench/README.md).",
        "",
        f"{'ratio':<66}{'value':>9}  {'target':<15}",
    ]
    for c in found:
        verdict = "" if c.passed is None else ("PASS" if c.passed else "MISS")
        value = f"{c.value:.1%}" if "(time)" in c.label else _number(c.value, 2)
        lines.append(f"{c.label:<66}{value:>9}  {c.target:<15}{verdict}")
    return "\n".join(lines)


def default_concurrency() -> int:
    """batchsync's own default for ``sync --concurrency``, read from its command line."""
    from batchsync.cli import sync as sync_command

    for param in sync_command.params:
        if param.name == "concurrency" and isinstance(param.default, int):
            return param.default
    return 1


def code_under_test() -> str:
    """Which batchsync runs: a checkout's commit ("+changes" when its package is edited),
    or the directory a non-editable install was made from."""
    try:
        recorded = metadata.distribution("batchsync").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        recorded = None
    origin = json.loads(recorded) if recorded else {}
    url = str(origin.get("url", ""))
    if not origin.get("dir_info", {}).get("editable"):
        return f"installed from {url}" if url else f"installed at {batchsync.__file__}"
    checkout = url.removeprefix("file://")
    try:
        head = subprocess.run(
            ["git", "-C", checkout, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        edited = subprocess.run(
            ["git", "-C", checkout, "status", "--porcelain", "--", "batchsync", "migrations"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"editable checkout at {checkout}"
    return f"checkout {checkout} at {head}" + ("+changes" if edited else "")


# -- the command ----------------------------------------------------------------------------


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--batches", type=click.IntRange(min=2), default=100, show_default=True)
@click.option(
    "--calls", type=click.IntRange(min=10), default=10_000, show_default=True, help="Per batch."
)
@click.option("--transcript-ratio", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option(
    "--changed-fraction",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="Share of each batch's calls changed at revision 1.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1, max=64),
    help="Passed to batchsync (and used by the dlt loader for its fetches) "
    "[default: batchsync's own default]",
)
@click.option(
    "--quarter-batches",
    type=click.IntRange(min=0),
    help="Batches of the smaller first load that shows whether peak RSS stays flat "
    "[default: a quarter of --batches; 0 skips it]",
)
@click.option(
    "--v2-batches",
    type=click.IntRange(min=0),
    default=DEFAULT_V2_BATCHES,
    show_default=True,
    help="v2 batches of the v2 first loads (with and without call details); 0 skips them.",
)
@click.option(
    "--v2-calls",
    type=click.IntRange(min=1),
    default=DEFAULT_V2_CALLS,
    show_default=True,
    help="Calls per v2 batch (each one a detail request with call details).",
)
@click.option("--skip-sqlite", is_flag=True, help="No SQLite runs (nor their limit).")
@click.option("--skip-dlt", is_flag=True, help="No dlt runs.")
@click.option("--skip-limits", is_flag=True, help="No raw COPY / executemany limits.")
@click.option(
    "--emulator",
    "emulator_mode",
    type=click.Choice(["replay", "live"]),
    default="replay",
    show_default=True,
    help="replay: payloads generated before each timed step and served from memory; "
    "live: generated on every request (the emulator then competes for CPU).",
)
@click.option(
    "--postgres-url",
    default=DEFAULT_POSTGRES_URL,
    show_default=True,
    envvar="BENCH_POSTGRES_URL",
    show_envvar=True,
    help="A superuser connection to a loopback server; the benchmark creates and drops "
    f"the databases {DATABASE}, {RSS_DATABASE} and {V2_DATABASE} there.",
)
@click.option(
    "--dlt-python",
    default=DEFAULT_DLT_PYTHON,
    show_default=True,
    envvar="BENCH_DLT_PYTHON",
    show_envvar=True,
    help="Python of the virtualenv with dlt[postgres] and httpx.",
)
@click.option(
    "--results-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=RESULTS_DIR,
    show_default=True,
)
@click.option("--keep", is_flag=True, help="Keep the databases and SQLite files afterwards.")
def main(
    batches: int,
    calls: int,
    transcript_ratio: float,
    changed_fraction: float,
    concurrency: int | None,
    quarter_batches: int | None,
    v2_batches: int,
    v2_calls: int,
    skip_sqlite: bool,
    skip_dlt: bool,
    skip_limits: bool,
    emulator_mode: Mode,
    postgres_url: str,
    dlt_python: str,
    results_dir: Path,
    keep: bool,
) -> None:
    """Measure batchsync's throughput against its limits and against dlt; print a table.

    \b
    Examples:
      python bench/run.py --batches 10 --calls 1000        # under a minute
      python bench/run.py                                  # 100 x 10,000 calls
    """
    postgres = Postgres.from_url(postgres_url)
    if not skip_dlt and not Path(dlt_python).exists():
        raise click.BadParameter(
            f"{dlt_python} does not exist; set up the dlt virtualenv (bench/README.md) "
            "or pass --skip-dlt",
            param_hint="--dlt-python",
        )
    if quarter_batches is None:
        quarter_batches = batches // 4
    if concurrency is None:
        concurrency = default_concurrency()
    workload = Workload(batches, calls, transcript_ratio, 0, changed_fraction)
    # What `pip install` leaves: byte-compiled modules. Without them (an editable checkout
    # under PYTHONDONTWRITEBYTECODE) every run compiles batchsync from source first.
    compileall.compile_dir(Path(batchsync.__file__).parent, quiet=1)
    workdir = Path(tempfile.mkdtemp(prefix="batchsync-bench-"))
    sqlite_path = workdir / "batchsync.db"
    sqlite_url = f"sqlite:///{sqlite_path}"
    pg_url = postgres.sqlalchemy_url(DATABASE)
    started_at = datetime.now(UTC)
    measured: list[Measurement] = []
    emulator_prepare: dict[str, float] = {}

    def sync(
        key: str,
        label: str,
        url: str,
        emu: EmulatorProcess,
        *,
        refresh: bool,
        v2_call_details: bool | None = None,
    ) -> None:
        if url.startswith("postgresql"):
            postgres.checkpoint()
        measured.append(
            measure_sync(
                key,
                label,
                database_url=url,
                emulator=emu,
                concurrency=concurrency,
                workdir=workdir,
                refresh=refresh,
                v2_call_details=v2_call_details,
            )
        )

    click.echo(f"work directory {workdir}", err=True)
    try:
        postgres.recreate(DATABASE)
        click.echo(f"emulator: revision 0, {batches} x {calls} calls ...", err=True)
        with EmulatorProcess(workload, mode=emulator_mode) as emu:
            emulator_prepare["revision 0"] = emu.ready["prepare_seconds"]
            sync("pg_first", "PostgreSQL: first load", pg_url, emu, refresh=False)
            sync("pg_resync", "PostgreSQL: re-sync, nothing changed", pg_url, emu, refresh=False)
            sync("pg_refresh", "PostgreSQL: --refresh, nothing changed", pg_url, emu, refresh=True)
            if not skip_sqlite:
                sync("sqlite_first", "SQLite: first load", sqlite_url, emu, refresh=False)
                sync(
                    "sqlite_resync",
                    "SQLite: re-sync, nothing changed",
                    sqlite_url,
                    emu,
                    refresh=False,
                )
                sync(
                    "sqlite_refresh",
                    "SQLite: --refresh, nothing changed",
                    sqlite_url,
                    emu,
                    refresh=True,
                )
            if not skip_dlt:
                for key, label in (
                    ("dlt_first", "dlt merge: first load"),
                    ("dlt_rerun", "dlt merge: re-run, nothing changed"),
                ):
                    measured.append(
                        measure_dlt(
                            key,
                            label,
                            dlt_python=dlt_python,
                            postgres=postgres,
                            emulator=emu,
                            workdir=workdir,
                            concurrency=concurrency,
                        )
                    )

        revised = Workload(batches, calls, transcript_ratio, 1, changed_fraction)
        click.echo(f"emulator: revision 1, {changed_fraction:.0%} of calls changed ...", err=True)
        with EmulatorProcess(revised, mode=emulator_mode) as emu:
            emulator_prepare["revision 1"] = emu.ready["prepare_seconds"]
            changed = f"{changed_fraction:.0%} changed"
            sync("pg_changed", f"PostgreSQL: --refresh, {changed}", pg_url, emu, refresh=True)
            if not skip_sqlite:
                sync(
                    "sqlite_changed", f"SQLite: --refresh, {changed}", sqlite_url, emu, refresh=True
                )

        if quarter_batches:
            quarter = Workload(quarter_batches, calls, transcript_ratio, 0, changed_fraction)
            click.echo(f"emulator: revision 0, {quarter_batches} x {calls} calls ...", err=True)
            postgres.recreate(RSS_DATABASE)
            with EmulatorProcess(quarter, mode=emulator_mode) as emu:
                emulator_prepare[f"{quarter_batches} batches"] = emu.ready["prepare_seconds"]
                label = f"first load, {quarter_batches} batches"
                sync(
                    "pg_first_quarter",
                    f"PostgreSQL: {label}",
                    postgres.sqlalchemy_url(RSS_DATABASE),
                    emu,
                    refresh=False,
                )
                if not skip_sqlite:
                    sync(
                        "sqlite_first_quarter",
                        f"SQLite: {label}",
                        f"sqlite:///{workdir / 'batchsync-quarter.db'}",
                        emu,
                        refresh=False,
                    )
        if v2_batches:
            v2 = Workload(0, 0, transcript_ratio, 0, changed_fraction, v2_batches=v2_batches,
                          v2_calls=v2_calls)  # fmt: skip
            click.echo(f"emulator: v2, {v2_batches} x {v2_calls} calls ...", err=True)
            with EmulatorProcess(v2, mode=emulator_mode) as emu:
                emulator_prepare["v2"] = emu.ready["prepare_seconds"]
                for details, suffix, flag in (
                    (True, "", "call details"),
                    (False, "_no_details", "--no-call-details"),
                ):
                    postgres.recreate(V2_DATABASE)
                    sync(
                        f"pg_v2_first{suffix}",
                        f"PostgreSQL: v2 first load, {flag}",
                        postgres.sqlalchemy_url(V2_DATABASE),
                        emu,
                        refresh=False,
                        v2_call_details=details,
                    )
                    if not skip_sqlite:
                        sync(
                            f"sqlite_v2_first{suffix}",
                            f"SQLite: v2 first load, {flag}",
                            f"sqlite:///{workdir / f'batchsync-v2{suffix}.db'}",
                            emu,
                            refresh=False,
                            v2_call_details=details,
                        )
        if not skip_limits:
            # Last, and with the emulator at revision 0 again: the limits hold every parsed
            # batch in this process, and a process started after that would inherit its
            # peak RSS (wait4 reports the larger of a child's and its parent's at fork).
            click.echo(f"emulator: revision 0, {batches} x {calls} calls ...", err=True)
            with EmulatorProcess(workload, mode=emulator_mode) as emu:
                measured += measure_limits(
                    postgres, emu, workdir, None if skip_sqlite else sqlite_path
                )
    finally:
        if not keep:
            postgres.drop(DATABASE)
            postgres.drop(RSS_DATABASE)
            postgres.drop(V2_DATABASE)
            shutil.rmtree(workdir, ignore_errors=True)

    by_key = {m.key: m for m in measured}
    payload_bytes = int(by_key["pg_first"].details["http"]["bytes"])
    found = checks(by_key)
    meta: dict[str, Any] = {
        "started_at": started_at.isoformat(),
        "batchsync_version": batchsync.__version__,
        "code": code_under_test(),
        "machine": f"{platform.platform()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "postgresql": postgres.version(),
        "sqlite": sqlite3.sqlite_version,
        "dlt": by_key["dlt_first"].details.get("dlt_version") if "dlt_first" in by_key else None,
        "concurrency": concurrency,
        "emulator_mode": emulator_mode,
        "emulator_prepare_seconds": emulator_prepare,
        "workload": {
            "batches": batches,
            "calls": calls,
            "total_calls": batches * calls,
            "transcript_ratio": transcript_ratio,
            "changed_fraction": changed_fraction,
            "quarter_batches": quarter_batches,
            "v2_batches": v2_batches,
            "v2_calls": v2_calls,
            "payload_mib": round(payload_bytes / MIB, 1),
        },
        "kept": str(workdir) if keep else None,
    }
    click.echo(render(meta, measured, found))
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{started_at:%Y%m%dT%H%M%SZ}.json"
    path.write_bytes(
        orjson.dumps(
            {
                **meta,
                "measurements": [m.as_json() for m in measured],
                "checks": [c.as_json() for c in found],
            },
            option=orjson.OPT_INDENT_2,
        )
    )
    click.echo(f"\nresults: {path}")


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:
        click.echo(f"bench: error: {exc}", err=True)
        sys.exit(1)

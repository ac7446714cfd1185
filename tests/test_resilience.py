"""Real processes under stress: killed mid-run, run side by side, cut off from the database,
stopped by SIGTERM; and no secret in any output or table, whatever happens."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.engine import make_url

from batchsync.bland.http import BlandHttp
from batchsync.bland.v1 import V1Source
from batchsync.config import load_api, load_database
from batchsync.db import create_db_engine, upgrade
from batchsync.emulator import Emulator, EmulatorServer, Fault
from batchsync.models import Base
from batchsync.sync import SyncOptions, run_sync
from tests.conftest import EMULATOR_URL
from tests.test_sync import DATA_TABLES

KEY = "sk-live-0f9e8d7c6b5a4f3e"
pytestmark = pytest.mark.slow


def batchsync(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchsync", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def spawn(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "batchsync", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def big_emulator() -> Emulator:
    return Emulator(seed=11, batches=6, calls_per_batch=1500, api_key=KEY)


@pytest.fixture
def served(big_emulator: Emulator) -> Iterator[EmulatorServer]:
    with big_emulator.serve() as server:
        yield server


def env_for(server: EmulatorServer, database_url: str) -> dict[str, str]:
    return {
        "BLAND_BASE_URL": server.url,
        "BLAND_API_KEY": KEY,
        "BATCHSYNC_DATABASE_URL": database_url,
    }


def batch_rows(engine: Engine) -> dict[str, dict[str, list[tuple[Any, ...]]]]:
    """Per batch, per table, its rows without bookkeeping columns, sorted."""
    skip = {"synced_at", "sync_run_id", "content_sha256", "fetched_parts"}
    result: dict[str, dict[str, list[tuple[Any, ...]]]] = {}
    with engine.connect() as connection:
        for name in DATA_TABLES:
            table = Base.metadata.tables[name]
            columns = [c for c in table.columns if c.name not in skip]
            for row in connection.execute(select(*columns)):
                by_table = result.setdefault(row.batch_id, {})
                by_table.setdefault(name, []).append(tuple(row))
    for tables in result.values():
        for name in tables:
            tables[name].sort(key=repr)
    return result


def reference(emulator: Emulator, tmp_path: Path, name: str) -> dict[str, Any]:
    """The rows a clean, uninterrupted sync of the emulator's current data gives."""
    engine = create_db_engine(load_database(f"sqlite:///{tmp_path / name}"))
    upgrade(engine)
    api = load_api(EMULATOR_URL, emulator.api_key)
    with BlandHttp(api, transport=emulator.transport()) as http:
        source = V1Source(http)
        run_sync(engine, source, SyncOptions(discover=True, refresh=True))
    rows = batch_rows(engine)
    engine.dispose()
    return rows


def wait_for_request(
    emulator: Emulator, path: str, seen: int, process: subprocess.Popen[str]
) -> None:
    """Wait until ``process`` has sent a request to ``path`` beyond the ``seen`` ones."""
    while emulator.request_count(path) <= seen:
        if process.poll() is not None:
            raise AssertionError(f"the run ended before it requested {path}")
        time.sleep(0.02)


def test_killed_runs_leave_whole_batches_and_converge(
    database_url: str, big_emulator: Emulator, served: EmulatorServer, tmp_path: Path
) -> None:
    """SIGKILL at many moments leaves each batch as it was or fully updated; a rerun converges."""
    old = reference(big_emulator, tmp_path, "old.db")
    big_emulator.revision = 1
    new = reference(big_emulator, tmp_path, "new.db")
    big_emulator.revision = 0
    env = env_for(served, database_url)
    assert batchsync("sync", "--all", "--migrate", env=env).returncode == 0
    engine = create_db_engine(load_database(database_url))
    assert batch_rows(engine) == old

    big_emulator.revision = 1
    started = time.monotonic()
    assert batchsync("sync", "--all", "--refresh", "--concurrency", "1", env=env).returncode == 0
    duration = time.monotonic() - started
    assert batch_rows(engine) == new
    big_emulator.revision = 0
    assert batchsync("sync", "--all", "--refresh", env=env).returncode == 0

    # Alternate the API between the two versions and kill runs at spread-out moments: half
    # of them at a fraction of a clean run's duration (wherever the run happens to be, a
    # database write included), half while the run provably waits for a given batch.
    batch_ids = big_emulator.batch_ids()
    for attempt, fraction in enumerate([0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 0.5, 0.35]):
        big_emulator.revision = (attempt + 1) % 2
        held = batch_ids[attempt % len(batch_ids)]
        if attempt % 2:
            big_emulator.inject(held, Fault("slow", delay=600))
        before = big_emulator.request_count(f"/v1/batches/{held}")
        process = spawn("sync", "--all", "--refresh", "--concurrency", "1", env=env)
        if attempt % 2:
            wait_for_request(big_emulator, f"/v1/batches/{held}", before, process)
            assert process.poll() is None, "the run ended while its request was held"
        else:
            time.sleep(duration * fraction)
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        rows = batch_rows(engine)
        for batch_id, tables in rows.items():
            assert tables in (old[batch_id], new[batch_id]), f"batch {batch_id} is half-written"

    big_emulator.revision = 1
    assert batchsync("sync", "--all", "--refresh", env=env).returncode == 0
    assert batch_rows(engine) == new
    with engine.connect() as connection:
        running = connection.execute(
            text("select count(*) from sync_runs where status = 'running'")
        ).scalar_one()
    assert running == 0, "killed runs must not stay 'running' once a later run has looked"
    engine.dispose()


def test_concurrent_runs_on_postgres_match_a_single_run(
    postgres_url: str, big_emulator: Emulator, served: EmulatorServer, tmp_path: Path
) -> None:
    """Three overlapping sync processes finish cleanly and leave what one run would."""
    expected = reference(big_emulator, tmp_path, "single.db")
    env = env_for(served, postgres_url)
    assert batchsync("db", "upgrade", env=env).returncode == 0

    processes = [
        spawn("sync", "--all", "--refresh", "--concurrency", str(n), env=env) for n in (1, 2, 3)
    ]
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in processes]

    assert [code for code, _ in results] == [0, 0, 0], results
    assert not any("deadlock" in err.lower() for _, err in results)
    engine = create_db_engine(load_database(postgres_url))
    assert batch_rows(engine) == expected
    engine.dispose()


def test_concurrent_runs_on_sqlite_wait_for_each_other(
    sqlite_url: str, big_emulator: Emulator, served: EmulatorServer, tmp_path: Path
) -> None:
    """A second SQLite writer waits for the first instead of failing."""
    expected = reference(big_emulator, tmp_path, "single.db")
    env = env_for(served, sqlite_url)
    assert batchsync("db", "upgrade", env=env).returncode == 0

    processes = [spawn("sync", "--all", "--refresh", env=env) for _ in range(2)]
    codes = [p.wait(timeout=300) for p in processes]

    assert codes == [0, 0], [p.stderr.read() if p.stderr else "" for p in processes]
    engine = create_db_engine(load_database(sqlite_url))
    assert batch_rows(engine) == expected
    engine.dispose()


class Proxy:
    """A TCP relay to PostgreSQL that a test can cut, like a network that goes away."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.cut_off = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.cut_off.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut_off.is_set():
                client.close()
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            threading.Thread(target=self._relay, args=(client, upstream), daemon=True).start()

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(a, selectors.EVENT_READ, b)
        selector.register(b, selectors.EVENT_READ, a)
        try:
            while not self.cut_off.is_set():
                for key, _ in selector.select(timeout=0.2):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        self.cut_off.set()
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_database_going_away_mid_run_fails_clearly_without_hanging(
    postgres_url: str, big_emulator: Emulator, served: EmulatorServer
) -> None:
    """When the database connection drops mid-run, the run ends with exit 4, not a hang."""
    url = make_url(postgres_url)
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432))
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    env = env_for(served, proxied)
    assert batchsync("db", "upgrade", env=env).returncode == 0
    third = big_emulator.batch_ids()[2]
    big_emulator.inject(third, Fault("slow", delay=3.0))

    process = spawn("sync", "--all", "--concurrency", "1", env=env)
    wait_for_batches(postgres_url, 2)
    proxy.cut()
    code = process.wait(timeout=60)
    stderr = process.stderr.read() if process.stderr else ""

    assert code == 4, stderr
    assert "cannot use the database" in stderr
    engine = create_engine(postgres_url)
    with engine.connect() as connection:
        whole = connection.execute(
            text(
                "select count(*) from batches b where b.total_calls = "
                "(select count(*) from calls c where c.batch_id = b.batch_id)"
            )
        ).scalar_one()
        stored = connection.execute(text("select count(*) from batches")).scalar_one()
    assert whole == stored
    engine.dispose()


def wait_for_batches(database_url: str, count: int, timeout: float = 60) -> None:
    """Wait until a running sync has recorded ``count`` batch outcomes."""
    engine = create_db_engine(load_database(database_url))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as connection:
                done = connection.execute(
                    text("select count(*) from sync_run_batches")
                ).scalar_one()
            if done >= count:
                return
            time.sleep(0.05)
    finally:
        engine.dispose()
    raise AssertionError(f"no {count} batch outcomes within {timeout}s")


def stopped_run(database_url: str) -> tuple[str, str, int, int]:
    """The one run's status and error, the batches stored, and those stored with every call."""
    engine = create_db_engine(load_database(database_url))
    try:
        with engine.connect() as connection:
            status, error = connection.execute(text("select status, error from sync_runs")).one()
            synced = connection.execute(text("select count(*) from batches")).scalar_one()
            whole = connection.execute(
                text(
                    "select count(*) from batches b where b.total_calls = "
                    "(select count(*) from calls c where c.batch_id = b.batch_id)"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    return status, error, synced, whole


def test_sigterm_finishes_the_batch_in_hand_and_records_the_run(
    database_url: str, big_emulator: Emulator, served: EmulatorServer
) -> None:
    """SIGTERM: the batch in hand is committed whole, the run is marked interrupted, exit 130."""
    env = env_for(served, database_url)
    assert batchsync("db", "upgrade", env=env).returncode == 0
    for batch_id in big_emulator.batch_ids():
        big_emulator.inject(batch_id, Fault("slow", delay=0.7))
    process = spawn("sync", "--all", "--concurrency", "1", env=env)
    wait_for_batches(database_url, 1)
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=60)
    stderr = process.stderr.read() if process.stderr else ""

    assert code == 130, stderr
    status, error, synced, whole = stopped_run(database_url)
    assert status == "interrupted"
    assert "SIGTERM" in error
    assert 0 < synced < len(big_emulator.batch_ids())
    assert whole == synced


def test_sigterm_while_waiting_for_a_slow_fetch_stops_without_waiting_it_out(
    database_url: str, big_emulator: Emulator, served: EmulatorServer
) -> None:
    """SIGTERM while the writer waits for batches still being fetched (a v2 batch's detail
    requests can take minutes) ends the run at once: what was committed stays whole, the
    batches in flight are not written, exit 130. Without that, this run would wait out
    fetches of two minutes."""
    env = env_for(served, database_url)
    assert batchsync("db", "upgrade", env=env).returncode == 0
    for batch_id in big_emulator.batch_ids()[1:]:
        big_emulator.inject(batch_id, Fault("slow", delay=120))
    process = spawn(
        "sync", "--all", "--concurrency", "2", "--timeout", "3", "--retries", "1", env=env
    )
    wait_for_batches(database_url, 1)
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=60)
    stderr = process.stderr.read() if process.stderr else ""

    assert code == 130, stderr
    status, error, synced, _ = stopped_run(database_url)
    assert status == "interrupted"
    assert "waiting for the next batch" in error
    assert synced == 1


def test_sigterm_with_json_prints_one_object_carrying_the_run_id(
    database_url: str, big_emulator: Emulator, served: EmulatorServer
) -> None:
    """SIGTERM under --json: stdout is one JSON object, status interrupted, with the run id."""
    env = env_for(served, database_url)
    assert batchsync("db", "upgrade", env=env).returncode == 0
    for batch_id in big_emulator.batch_ids():
        big_emulator.inject(batch_id, Fault("slow", delay=0.7))
    process = spawn("sync", "--all", "--concurrency", "1", "--json", env=env)
    wait_for_batches(database_url, 1)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)

    assert process.returncode == 130, stderr
    summary = json.loads(stdout)
    assert summary["status"] == "interrupted"
    assert summary["run_id"] == 1
    assert summary["exit_code"] == 130


def test_no_secret_in_any_output_log_or_table(
    postgres_url: str, served: EmulatorServer, big_emulator: Emulator, tmp_path: Path
) -> None:
    """Across successes and failures, neither the API key nor the password appears anywhere."""
    password = "pw-Zx81-secret"
    url = make_url(postgres_url).set(password=password).render_as_string(hide_password=False)
    env = env_for(served, url)
    big_emulator.inject(big_emulator.batch_ids()[0], Fault("truncated"))
    outputs = [
        batchsync("--help", env=env),
        batchsync("sync", "--help", env=env),
        batchsync("-vv", "--log-format", "json", "sync", "--all", "--migrate", env=env),
        batchsync("-vv", "sync", "--all", "--refresh", "--json", env=env),
        batchsync("sync", "--all", env={**env, "BLAND_API_KEY": "sk-wrong-11112222"}),
        batchsync("-v", "runs", env=env),
        batchsync("runs", "show", "1", "--json", env=env),
        batchsync(
            "-vv",
            "db",
            "upgrade",
            env={**env, "BATCHSYNC_DATABASE_URL": f"postgresql://u:{password}@127.0.0.1:1/x"},
        ),
    ]
    text_seen = "\n".join(o.stdout + o.stderr for o in outputs)
    assert "sk-wrong-11112222" not in text_seen
    assert KEY not in text_seen
    assert password not in text_seen
    assert outputs[2].returncode == 1  # the truncated batch failed, the rest synced

    engine = create_db_engine(load_database(url))
    with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            for row in connection.execute(select(table)):
                dumped = repr(tuple(row))
                assert KEY not in dumped, table.name
                assert password not in dumped, table.name
    engine.dispose()

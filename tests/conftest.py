"""Shared fixtures: real databases (a SQLite file, and PostgreSQL when reachable), the emulator.

PostgreSQL tests use BATCHSYNC_TEST_POSTGRES_URL (default: the local server at
127.0.0.1:5432, database test). Each test gets a schema of its own, dropped afterwards,
so tests never see each other's rows. When the server cannot be reached the tests skip
with the reason, except under CI=true, where they fail: CI must prove both databases.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from batchsync.bland.http import BlandHttp, RetryPolicy
from batchsync.bland.v1 import V1Source
from batchsync.config import ApiSettings, forget_secrets, load_api, load_database
from batchsync.db import create_db_engine, upgrade
from batchsync.emulator import Emulator

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
EMULATOR_URL = "http://bland-emulator.local"


def postgres_admin_url() -> str:
    return os.environ.get("BATCHSYNC_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL


@cache
def postgres_unreachable() -> str | None:
    """Why PostgreSQL cannot be used for tests, or None when it can."""
    url = postgres_admin_url()
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(text("select 1"))
    except Exception as exc:  # any failure to connect means "not reachable"
        first = str(exc).strip().splitlines()[0]
        return f"PostgreSQL at {make_url(url).render_as_string()} is not reachable: {first}"
    finally:
        engine.dispose()
    return None


def require_postgres() -> None:
    reason = postgres_unreachable()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true requires PostgreSQL)")
    pytest.skip(f"{reason}; set BATCHSYNC_TEST_POSTGRES_URL to run PostgreSQL tests")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh, empty schema."""
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_admin_url())
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    url = make_url(postgres_admin_url()).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'batchsync.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The same test body on a SQLite file and on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def empty_engine(database_url: str) -> Iterator[Engine]:
    """An engine on an empty database (no schema)."""
    engine = create_db_engine(load_database(database_url))
    yield engine
    engine.dispose()


@pytest.fixture
def engine(empty_engine: Engine) -> Engine:
    """An engine on a database migrated to the newest schema."""
    upgrade(empty_engine)
    return empty_engine


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(seed=7, batches=4, calls_per_batch=12)


@pytest.fixture
def sleeps() -> list[float]:
    """Waits the client would have slept between retries (recorded, not slept)."""
    return []


@pytest.fixture
def http(emulator: Emulator, sleeps: list[float]) -> Iterator[BlandHttp]:
    """The HTTP client over the emulator, retries recorded in ``sleeps``."""
    api = load_api(EMULATOR_URL, emulator.api_key)
    with BlandHttp(
        api, transport=emulator.transport(), retry=RetryPolicy(attempts=4), sleep=sleeps.append
    ) as http:
        yield http


@pytest.fixture
def source(http: BlandHttp) -> V1Source:
    """The v1 source over the emulator."""
    return V1Source(http)


_V1_OPTIONS = frozenset({"page_size", "spool_large_bodies", "chunk_calls"})


def v1_source(api: ApiSettings, **options: Any) -> V1Source:
    """A v1 source over an HTTP client of its own (``source.http``, to be closed by the
    caller): ``page_size``, ``spool_large_bodies`` and ``chunk_calls`` go to the source,
    the other options to the client."""
    own = {name: options.pop(name) for name in _V1_OPTIONS & options.keys()}
    return V1Source(BlandHttp(api, **options), **own)


@pytest.fixture(autouse=True)
def _reset_global_state() -> Iterator[None]:
    """Secrets registered and log handlers installed by one test never leak into the next."""
    yield
    forget_secrets()
    root = logging.getLogger("batchsync")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.propagate = True
    root.setLevel(logging.NOTSET)

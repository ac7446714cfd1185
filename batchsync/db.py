"""Connecting to the database and bringing its schema to the version this code expects.

Alembic owns the schema. ``upgrade`` runs the migrations shipped inside the package;
``check_schema`` refuses to write to a database whose schema is missing or behind.
"""

from __future__ import annotations

import json
import re
import sqlite3
from decimal import Decimal
from importlib.resources import files
from pathlib import Path
from typing import Any

import orjson
import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool

from batchsync.config import DatabaseSettings, redact_url
from batchsync.errors import DatabaseUnavailable, SchemaOutdatedError

# Seconds a SQLite writer waits for another writer's lock before giving up.
SQLITE_BUSY_TIMEOUT = 60.0


def json_dumps(value: Any) -> str:
    """Serialise JSON columns with sorted keys, so equal values are equal text on SQLite.

    Integers of any size are written with every digit (orjson stops at 64 bits).
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        return _json_text(value)  # an integer beyond 64 bits, or nesting deeper than orjson's


class _Token(str):
    """Punctuation already rendered, on the stack of :func:`_json_text`."""


def _json_text(value: Any) -> str:
    """What json_dumps writes, for any integer and any depth (no recursion)."""
    parts: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if type(item) is _Token:
            parts.append(item)
        elif isinstance(item, dict):
            entries = sorted(((_key_text(k), v) for k, v in item.items()), key=lambda e: e[0])
            stack.append(_Token("}"))
            for index in range(len(entries) - 1, -1, -1):
                key, entry = entries[index]
                stack.append(entry)
                stack.append(_Token(("," if index else "") + orjson.dumps(key).decode() + ":"))
            stack.append(_Token("{"))
        elif isinstance(item, list | tuple):
            stack.append(_Token("]"))
            for index in range(len(item) - 1, -1, -1):
                stack.append(item[index])
                if index:
                    stack.append(_Token(","))
            stack.append(_Token("["))
        elif isinstance(item, int) and not isinstance(item, bool):
            parts.append(str(int(item)))
        else:
            parts.append(orjson.dumps(item).decode())
    return "".join(parts)


def _key_text(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        return str(int(key))
    return orjson.dumps(key).decode().strip('"')


# 19 digits or more may be beyond 64 bits, where orjson would round to a float.
_LONG_INTEGER = re.compile(r"[-:,\[\s][0-9]{19}|^-?[0-9]{19}")
_LONG_INTEGER_BYTES = re.compile(rb"[-:,\[\s][0-9]{19}|^-?[0-9]{19}")
# An exponent, or a negative zero: numbers PostgreSQL's jsonb gives back in another form.
_RESHAPED_NUMBER = re.compile(r"[0-9][eE]|-0\.0(?![0-9])")
_RESHAPED_NUMBER_BYTES = re.compile(rb"[0-9][eE]|-0\.0(?![0-9])")
# From this size on, a whole float is written with an exponent, which jsonb expands.
_WHOLE_FLOAT_LIMIT = 1e16


def json_loads(text: str | bytes) -> Any:
    """Read a JSON column back, to the same value on both databases.

    Integers keep every digit. PostgreSQL's jsonb keeps numbers as decimals: it gives back
    1e+16 as 10000000000000000 and -0.0 as 0.0, so those are read the same way from SQLite:
    a whole float of 1e16 or more as the int of its decimal value, -0.0 as 0.0.
    """
    if isinstance(text, str):
        long_integer = _LONG_INTEGER.search(text) is not None
        reshaped = _RESHAPED_NUMBER.search(text) is not None
    else:
        text = bytes(text)  # psycopg may hand over a memoryview
        long_integer = _LONG_INTEGER_BYTES.search(text) is not None
        reshaped = _RESHAPED_NUMBER_BYTES.search(text) is not None
    value = json.loads(text) if long_integer else orjson.loads(text)
    return _as_jsonb_reads(value) if reshaped else value


def _as_jsonb_reads(value: Any) -> Any:
    """``value`` with its floats as PostgreSQL's jsonb gives them back (no recursion)."""
    root = [value]
    stack: list[Any] = [root]
    while stack:
        container = stack.pop()
        keys = container.keys() if isinstance(container, dict) else range(len(container))
        for key in keys:
            item = container[key]
            if type(item) is float:
                if item == 0.0:
                    container[key] = 0.0
                elif item.is_integer() and abs(item) >= _WHOLE_FLOAT_LIMIT:
                    container[key] = int(Decimal(repr(item)))
            elif isinstance(item, dict | list):
                stack.append(item)
    return root[0]


def create_db_engine(settings: DatabaseSettings) -> Engine:
    """Create an engine for PostgreSQL (psycopg 3) or SQLite (WAL, foreign keys, busy timeout)."""
    url = settings.url
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            json_serializer=json_dumps,
            json_deserializer=json_loads,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT},
            poolclass=NullPool,
        )
        event.listen(engine, "connect", _configure_sqlite)
        # pysqlite's own transaction handling defers BEGIN; take it over so each batch's
        # transaction starts when we say and the write lock is taken up front.
        event.listen(engine, "begin", _begin_immediate)
        return engine
    return create_engine(
        url,
        json_serializer=json_dumps,
        json_deserializer=json_loads,
        pool_pre_ping=True,
        connect_args={"connect_timeout": 10, "application_name": "batchsync"},
    )


def _configure_sqlite(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT * 1000)}")
    cursor.close()


def _begin_immediate(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def migrations_dir() -> Path:
    """Where the Alembic scripts are: inside the installed package, or the repository's."""
    return Path(str(files("batchsync.migrations")))


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic config for the packaged migrations, bound to ``engine`` if given."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if engine is not None:
        config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at; None for an empty database."""
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except (OperationalError, DBAPIError) as exc:
        raise unavailable(engine, exc) from None


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to ``revision`` (default: the newest)."""
    try:
        command.upgrade(alembic_config(engine), revision)
    except (OperationalError, DBAPIError) as exc:
        raise unavailable(engine, exc) from None


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the database down to ``revision`` ("base" removes every table)."""
    try:
        command.downgrade(alembic_config(engine), revision)
    except (OperationalError, DBAPIError) as exc:
        raise unavailable(engine, exc) from None


def check_schema(engine: Engine) -> None:
    """Raise SchemaOutdatedError unless the database is at the head revision."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    where = redact_url(engine.url)
    if current is None:
        raise SchemaOutdatedError(
            f"the database at {where} has no batchsync schema; "
            "run `batchsync db upgrade` first (or pass --migrate)"
        )
    script = ScriptDirectory.from_config(alembic_config())
    known = {rev.revision for rev in script.walk_revisions()}
    if current not in known:
        raise SchemaOutdatedError(
            f"the database at {where} is at schema revision {current}, which this version of "
            "batchsync does not know (it was written by a newer version); upgrade batchsync"
        )
    raise SchemaOutdatedError(
        f"the database at {where} is at schema revision {current}, behind {head}; "
        "run `batchsync db upgrade` (or pass --migrate)"
    )


def unavailable(engine: Engine, exc: BaseException) -> DatabaseUnavailable:
    """Describe a connection failure without the password (drivers may echo the DSN)."""
    first = describe(exc)
    password = engine.url.password
    if password:
        first = first.replace(str(password), "***")
    return DatabaseUnavailable(f"cannot use the database at {redact_url(engine.url)}: {first}")


# Errors the drivers raise themselves, where batchsync writes through the driver's cursor
# (COPY, executemany) rather than through SQLAlchemy, which would have wrapped them.
DRIVER_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error, DBAPIError)


def is_unavailable(exc: BaseException) -> bool:
    """Whether a database error means the database cannot be used (connection, lock, disk),
    as opposed to a refusal of this batch's data (a constraint, a value out of range)."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig if exc.orig is not None else exc
    return isinstance(exc, sqlite3.OperationalError | psycopg.OperationalError | OperationalError)


def describe(exc: BaseException) -> str:
    """The first line of a database error, without SQL or parameters."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__

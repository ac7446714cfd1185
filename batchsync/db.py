"""Connecting to the database and bringing its schema to the version this code expects.

Alembic owns the schema. ``upgrade`` runs the migrations shipped inside the package;
``check_schema`` refuses to write to a database whose schema is missing or behind.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import orjson
import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool

from batchsync.config import DatabaseSettings, redact_url
from batchsync.errors import BadArgument, DatabaseUnavailable, SchemaOutdatedError

# Seconds a SQLite writer waits for another writer's lock before giving up.
SQLITE_BUSY_TIMEOUT = 60.0


def json_dumps(value: Any) -> str:
    """Serialise JSON columns with sorted keys, so equal values are equal text on SQLite."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()


def create_db_engine(settings: DatabaseSettings) -> Engine:
    """Create an engine for PostgreSQL (psycopg 3) or SQLite (WAL, foreign keys, busy timeout)."""
    url = settings.url
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            folder = Path(url.database).expanduser().parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseUnavailable(
                    f"cannot create the folder of the SQLite file {redact_url(url)}: "
                    f"{exc.strerror or type(exc).__name__}"
                ) from None
        engine = create_engine(
            url,
            json_serializer=json_dumps,
            json_deserializer=orjson.loads,
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
        json_deserializer=orjson.loads,
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
    except CommandError as exc:
        raise _bad_revision(revision, exc) from None


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the database down to ``revision`` ("base" removes every table)."""
    try:
        command.downgrade(alembic_config(engine), revision)
    except (OperationalError, DBAPIError) as exc:
        raise unavailable(engine, exc) from None
    except CommandError as exc:
        raise _bad_revision(revision, exc) from None


def _bad_revision(revision: str, exc: CommandError) -> BadArgument:
    known = ", ".join(rev.revision for rev in _script().walk_revisions())
    return BadArgument(
        f"cannot migrate to revision {revision!r}: {exc} "
        f"(revisions: {known}, or head / base; `batchsync db current` shows where it is)"
    )


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


@dataclass(frozen=True)
class DowngradePlan:
    """What ``downgrade`` to a revision would undo, found by rehearsing it and rolling back."""

    current: str | None
    target: str
    revisions: list[tuple[str, str]]  # (revision, its one-line description), newest first
    tables: list[str]  # tables and views that would be dropped
    columns: list[str]  # "table.column" dropped from tables that stay

    @property
    def destructive(self) -> bool:
        return bool(self.tables or self.columns)


def plan_downgrade(engine: Engine, revision: str) -> DowngradePlan:
    """Rehearse a downgrade in a transaction that is rolled back; report what it would drop.

    Both databases run the migrations' DDL transactionally, so nothing changes.
    """
    current = current_revision(engine)
    try:
        with engine.connect() as connection:
            transaction = connection.begin()
            try:
                before = _schema_objects(connection)
                config = alembic_config()
                config.attributes["connection"] = connection
                command.downgrade(config, revision)
                after = _schema_objects(connection)
            finally:
                transaction.rollback()
        undone = list(_script().iterate_revisions(current, revision)) if current else []
    except (OperationalError, DBAPIError) as exc:
        raise unavailable(engine, exc) from None
    except CommandError as exc:
        raise _bad_revision(revision, exc) from None
    return DowngradePlan(
        current=current,
        target=revision,
        revisions=[(rev.revision, (rev.doc or "").strip().splitlines()[0]) for rev in undone],
        tables=sorted(set(before) - set(after)),
        columns=sorted(
            f"{table}.{column}"
            for table, columns in before.items()
            if table in after
            for column in columns - after[table]
        ),
    )


def _schema_objects(connection: Connection) -> dict[str, set[str]]:
    """Every table and view of batchsync's schema, with its columns."""
    inspector = inspect(connection)
    names = [*inspector.get_table_names(), *inspector.get_view_names()]
    return {
        name: {column["name"] for column in inspector.get_columns(name)}
        for name in names
        if name != "alembic_version"
    }


def check_schema(engine: Engine, *, can_migrate: bool = False) -> None:
    """Raise SchemaOutdatedError unless the database is at the head revision.

    ``can_migrate``: the command has --migrate, so the message may suggest it.
    """
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    where = redact_url(engine.url)
    migrate = " (or pass --migrate)" if can_migrate else ""
    if current is None:
        raise SchemaOutdatedError(
            f"the database at {where} has no batchsync schema; "
            f"run `batchsync db upgrade` first{migrate}"
        )
    known = {rev.revision for rev in _script().walk_revisions()}
    if current not in known:
        raise SchemaOutdatedError(
            f"the database at {where} is at schema revision {current}, which this version of "
            "batchsync does not know (it was written by a newer version); upgrade batchsync"
        )
    raise SchemaOutdatedError(
        f"the database at {where} is at schema revision {current}, behind {head}; "
        f"run `batchsync db upgrade`{migrate}"
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

"""Connecting to the database and bringing its schema to the version this code expects.

Alembic owns the schema. ``upgrade`` runs the migrations shipped inside the package;
``check_schema`` refuses to write to a database whose schema is missing or behind.

batchsync records its revision in a version table of its own, ``batchsync_alembic_version``,
so it can share a database (or a PostgreSQL schema) with another application that uses
Alembic's default ``alembic_version``. Databases migrated before that table existed are moved
over by the next upgrade (:func:`adopt_legacy_version`).

On PostgreSQL, ``DatabaseSettings.schema`` sets each connection's ``search_path`` to that
schema alone, so every table, view, the version table and the SQL written by hand in
``store`` land there; temporary tables live in ``pg_temp`` whatever the path.
"""

from __future__ import annotations

import json
import re
import sqlite3
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from importlib.resources import files
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import orjson
import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool

from batchsync.config import DatabaseSettings, quote_identifier, redact_url
from batchsync.errors import (
    BadArgument,
    DatabaseReadOnly,
    DatabaseRefused,
    DatabaseUnavailable,
    SchemaConflictError,
    SchemaOutdatedError,
)
from batchsync.jsontext import json_dumps

# Seconds a SQLite writer waits for another writer's lock before giving up.
SQLITE_BUSY_TIMEOUT = 60.0

# Where batchsync records its schema revision; Alembic's default name is left to others.
VERSION_TABLE: Final = "batchsync_alembic_version"
LEGACY_VERSION_TABLE: Final = "alembic_version"

# Tables every revision that was recorded in alembic_version has: an alembic_version whose
# revision looks like ours only counts as ours when they are there.
_LEGACY_TABLES: Final = frozenset({"batches", "calls", "sync_runs", "sync_run_batches"})

# Execution option of a connection that only reads (see :func:`reading`).
_READING: Final = "batchsync_reading"

# The PostgreSQL schema each engine was created for (--schema), for migrations and messages.
_ENGINE_SCHEMAS: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()


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


def create_db_engine(
    settings: DatabaseSettings,
    *,
    read_only: bool = False,
    busy_timeout: float = SQLITE_BUSY_TIMEOUT,
) -> Engine:
    """Create an engine for PostgreSQL (psycopg 3) or SQLite (WAL, foreign keys, busy timeout).

    ``read_only`` is for commands that only read: on SQLite it opens the file read-only
    (never creating it: DatabaseUnavailable when it is missing) and takes no write lock, so
    it never waits for a writer; on PostgreSQL it changes nothing.
    """
    url = settings.url
    if url.get_backend_name() == "sqlite":
        if read_only and url.database and url.database != ":memory:":
            return _create_sqlite_reader(settings, busy_timeout)
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
            json_deserializer=json_loads,
            connect_args={"timeout": busy_timeout},
            poolclass=NullPool,
        )
        event.listen(engine, "connect", _sqlite_configurer(busy_timeout, wal=True))
        # pysqlite's own transaction handling defers BEGIN; take it over so each batch's
        # transaction starts when we say and the write lock is taken up front.
        event.listen(engine, "begin", _begin_immediate)
        return engine
    engine = create_engine(
        url,
        json_serializer=json_dumps,
        json_deserializer=json_loads,
        pool_pre_ping=True,
        # UTF8 whatever PGCLIENTENCODING or the database's encoding say: JSON columns and the
        # rows parser processes make are UTF-8, and the server converts to its own encoding
        # (refusing, as a database error, a character that encoding cannot hold).
        connect_args={
            "connect_timeout": 10,
            "application_name": "batchsync",
            "client_encoding": "UTF8",
        },
    )
    if settings.schema is not None:
        # insert=True: the path must be set before any other listener runs SQL.
        event.listen(engine, "connect", _search_path_setter(settings.schema), insert=True)
        _ENGINE_SCHEMAS[engine] = settings.schema
    return engine


def require_sqlite_file(settings: DatabaseSettings, *, can_migrate: bool = False) -> None:
    """On SQLite, refuse a file (or its folder) that does not exist, before anything would
    create it: only `db upgrade` and `sync --migrate` create a database. Else nothing.
    ``can_migrate``: the command has --migrate, so the advice may name it."""
    url = settings.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return
    path = Path(url.database).expanduser()
    creators = "`batchsync db upgrade`"
    if can_migrate:
        creators = "`batchsync sync --migrate` (or `batchsync db upgrade`)"
    if not path.parent.is_dir():
        raise DatabaseUnavailable(
            f"no database at {path}: its folder {path.parent} does not exist; create it, or "
            f"check --database-url; then {creators} creates the database"
        )
    if not path.is_file():
        raise DatabaseUnavailable(
            f"no database at {path}: run {creators} to create it, or check --database-url"
        )


def _create_sqlite_reader(settings: DatabaseSettings, busy_timeout: float) -> Engine:
    """A read-only SQLite engine: mode=ro, no BEGIN IMMEDIATE, never creates the file."""
    assert settings.url.database is not None
    path = Path(settings.url.database).expanduser()
    require_sqlite_file(settings)
    resolved = path.resolve()
    uri = f"file:{quote(str(resolved))}?mode=ro"

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(uri, uri=True, timeout=busy_timeout)
        try:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError as exc:
            # A WAL database needs its -shm file, which a reader cannot create in a directory
            # it may not write to. With no -wal file there is nothing but the main file to
            # read, so read it as it is (immutable: no locks, no -shm).
            connection.close()
            wal = resolved.with_name(resolved.name + "-wal")
            if not (_is_read_only_error(exc) and not wal.exists()):
                raise
            return sqlite3.connect(f"{uri}&immutable=1", uri=True, timeout=busy_timeout)
        return connection

    engine = create_engine(
        settings.url,  # for messages and the dialect; connect() makes the connections
        creator=connect,
        json_serializer=json_dumps,
        json_deserializer=json_loads,
        poolclass=NullPool,
    )
    event.listen(engine, "connect", _sqlite_configurer(busy_timeout, wal=False))
    # A deferred BEGIN: one consistent snapshot per transaction, and in WAL mode a reader
    # never waits for a writer.
    event.listen(engine, "begin", _begin_deferred)
    return engine


SQLITE_CACHE_KIB = 16 * 1024  # page cache per SQLite connection
SQLITE_CHECKPOINT_PAGES = 10_000  # WAL pages (4 KiB) between automatic checkpoints: ~40 MiB


def _sqlite_configurer(
    busy_timeout: float, *, wal: bool
) -> Callable[[sqlite3.Connection, object], None]:
    def configure(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        if wal:
            # Switching to WAL writes the file, so a reader leaves the mode as it finds it.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            # A checkpoint every SQLITE_CHECKPOINT_PAGES of WAL, not every 1,000 (SQLite's
            # default): each one writes back, and syncs, the index pages that every batch's
            # commit dirtied again; one checkpoint every few batches writes them once.
            cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT_PAGES}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # 16 MiB of page cache (the default is 2 MiB): the indexes of calls and
        # call_transcripts outgrow 2 MiB within a few batches, and every insert then reads
        # their pages back from the OS.
        cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cursor.close()

    return configure


def _begin_immediate(connection: Any) -> None:
    if connection.get_execution_options().get(_READING):
        connection.exec_driver_sql("BEGIN")
    else:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection for reads only: on SQLite its transactions take no write lock (a
    deferred BEGIN), so in WAL mode it never waits for a writer."""
    with engine.connect() as connection:
        connection.execution_options(**{_READING: True})
        yield connection


def _begin_deferred(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN")


def _search_path_setter(schema: str) -> Callable[[Any, Any], None]:
    statement = f"SET SESSION search_path TO {quote_identifier(schema)}"

    def set_search_path(dbapi_connection: Any, _record: Any) -> None:
        # Outside any transaction, so that a rollback cannot undo it.
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        try:
            dbapi_connection.execute(statement)
        finally:
            dbapi_connection.autocommit = autocommit

    return set_search_path


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
    head = _script().get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at; None for an empty database.

    A database migrated before batchsync had its own version table is read from
    ``alembic_version`` (see :func:`legacy_revision`) until the next upgrade moves it.
    """
    try:
        with engine.connect() as connection:
            return read_revision(connection)
    except (OperationalError, DBAPIError) as exc:
        raise unavailable(engine, exc) from None


def read_revision(connection: Connection) -> str | None:
    """The batchsync revision recorded on this connection's database (or schema)."""
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision() or legacy_revision(connection)


def legacy_revision(connection: Connection) -> str | None:
    """The batchsync revision held in Alembic's default ``alembic_version``, if any.

    Only counted as batchsync's when the revision is one of batchsync's and batchsync's
    tables are there: another application's ``alembic_version`` is none of our business.
    """
    inspector = inspect(connection)
    if not inspector.has_table(LEGACY_VERSION_TABLE):
        return None
    rows = connection.execute(text(f"SELECT version_num FROM {LEGACY_VERSION_TABLE}")).scalars()
    ours = [str(revision) for revision in rows if revision in _known_revisions()]
    if len(ours) != 1:
        return None
    if not set(inspector.get_table_names()) >= _LEGACY_TABLES:
        return None
    return ours[0]


def adopt_legacy_version(connection: Connection) -> None:
    """Move a batchsync revision from ``alembic_version`` into batchsync's own version table.

    ``alembic_version`` is dropped when that leaves it empty; rows of another application
    stay where they are. Runs in the caller's transaction.
    """
    if MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE}
    ).get_current_revision():
        return
    revision = legacy_revision(connection)
    if revision is None:
        return
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    context.stamp(_script(), revision)
    connection.execute(
        text(f"DELETE FROM {LEGACY_VERSION_TABLE} WHERE version_num = :revision"),
        {"revision": revision},
    )
    left = connection.execute(text(f"SELECT count(*) FROM {LEGACY_VERSION_TABLE}")).scalar_one()
    if left == 0:
        connection.execute(text(f"DROP TABLE {LEGACY_VERSION_TABLE}"))


def refuse_foreign_tables(connection: Connection) -> None:
    """Raise SchemaConflictError if a table or view batchsync would create is already there
    without a batchsync revision (someone else's), before anything is created."""
    if read_revision(connection) is not None:
        return
    inspector = inspect(connection)
    present = set(inspector.get_table_names()) | set(inspector.get_view_names())
    taken = sorted(present & set(_table_names()))
    if not taken:
        return
    if connection.dialect.name == "postgresql":
        schema = configured_schema(connection) or inspector.default_schema_name
        where = f"schema {schema}"
        way_out = (
            "pass --schema NAME (or set BATCHSYNC_SCHEMA) to keep batchsync's tables in a "
            "PostgreSQL schema of their own, or use another database"
        )
    else:
        where = "the SQLite file"
        way_out = "point --database-url at another SQLite file"
    names = ", ".join(taken)
    raise SchemaConflictError(
        f"{where} at {redact_url(connection.engine.url)} already has {names}, which batchsync "
        f"did not create (no batchsync schema revision there); batchsync leaves it alone: "
        f"{way_out}"
    )


def ensure_schema_exists(connection: Connection) -> None:
    """Create the PostgreSQL schema the engine was configured for, if it is missing."""
    schema = configured_schema(connection)
    if schema is None:
        return
    exists = connection.execute(
        text("SELECT 1 FROM pg_namespace WHERE nspname = :name"), {"name": schema}
    ).first()
    if exists is None:
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(schema)}"))


def configured_schema(connection: Connection) -> str | None:
    """The PostgreSQL schema (``--schema``) this connection's engine was created for."""
    return _ENGINE_SCHEMAS.get(connection.engine)


def describe_location(engine: Engine) -> str:
    """The database URL (password hidden), with the schema batchsync uses when one is set."""
    schema = _ENGINE_SCHEMAS.get(engine)
    where = redact_url(engine.url)
    return f"{where} (schema {schema})" if schema else where


def _table_names() -> list[str]:
    from batchsync.models import VIEWS, Base

    return [*Base.metadata.tables, *VIEWS.tables]


def _known_revisions() -> set[str]:
    return {rev.revision for rev in _script().walk_revisions()}


def check_writable(engine: Engine) -> None:
    """Raise DatabaseReadOnly now if the SQLite file cannot be written, rather than at the
    first write of a run; changes nothing (the probe is rolled back)."""
    if engine.dialect.name != "sqlite":
        return
    try:
        with engine.connect() as connection, connection.begin() as transaction:
            version = int(connection.exec_driver_sql("PRAGMA user_version").scalar_one())
            connection.exec_driver_sql(f"PRAGMA user_version = {version}")
            transaction.rollback()
    except (OperationalError, DBAPIError) as exc:
        raise unavailable(engine, exc) from None


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to ``revision`` (default: the newest).

    Creates the configured PostgreSQL schema when missing, moves a revision recorded in
    ``alembic_version`` by an older batchsync into ``batchsync_alembic_version``, and
    refuses (SchemaConflictError) to create a table whose name someone else already uses.
    """
    check_writable(engine)
    try:
        command.upgrade(alembic_config(engine), revision)
    except (OperationalError, DBAPIError) as exc:
        raise unavailable(engine, exc) from None
    except CommandError as exc:
        raise _bad_revision(revision, exc) from None


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the database down to ``revision`` ("base" removes every table)."""
    check_writable(engine)
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
        if name not in ("alembic_version", VERSION_TABLE)
    }


def check_schema(engine: Engine, *, can_migrate: bool = False) -> None:
    """Raise SchemaOutdatedError unless the database is at the head revision.

    ``can_migrate``: the command has --migrate, so the message may suggest it.
    """
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    where = describe_location(engine)
    migrate = " (or pass --migrate)" if can_migrate else ""
    if current is None:
        raise SchemaOutdatedError(
            f"the database at {where} has no batchsync schema; "
            f"run `batchsync db upgrade` first{migrate}"
        )
    if current not in _known_revisions():
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
    if is_read_only(exc):
        return DatabaseReadOnly(
            f"the database at {redact_url(engine.url)} is read-only ({first}): batchsync can "
            "read it (`runs`, `db current`) but needs write access to the file and its "
            "directory to sync or upgrade"
        )
    if _REFUSED_SETTINGS.search(first):
        return DatabaseRefused(
            f"the database at {redact_url(engine.url)} refused the connection settings "
            f"({first}): check the user, password, database name and port in "
            "BATCHSYNC_DATABASE_URL"
        )
    return DatabaseUnavailable(f"cannot use the database at {redact_url(engine.url)}: {first}")


# What PostgreSQL (libpq) says when the server is there but the URL's settings are wrong.
_REFUSED_SETTINGS = re.compile(
    r"password authentication failed|authentication failed for user|role \"[^\"]*\" does not"
    r" exist|database \"[^\"]*\" does not exist|no pg_hba\.conf entry|invalid port number"
    r"|no password supplied|password is required"
)


def is_read_only(exc: BaseException) -> bool:
    """Whether a database error is a refusal to write to a read-only SQLite file."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    return _is_read_only_error(exc)


def _is_read_only_error(exc: BaseException) -> bool:
    name = getattr(exc, "sqlite_errorname", None)
    return (
        isinstance(exc, sqlite3.Error)
        and isinstance(name, str)
        and name.startswith("SQLITE_READONLY")
    )


# Errors the drivers raise themselves, where batchsync writes through the driver's cursor
# (COPY, executemany) rather than through SQLAlchemy, which would have wrapped them.
DRIVER_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error, DBAPIError)


# SQLSTATE classes (first two characters) and codes after which the database cannot be used
# for any batch: connection (08), insufficient resources such as a full disk (53), operator
# intervention such as a shutdown (57), system I/O errors (58), internal errors (XX), invalid
# authorisation (28), a catalog that is gone (3D), a read-only transaction (25006, a hot
# standby), a missing privilege (42501) and a table or column that is gone (42P01, 42703).
# Everything else (a value too long for an index (54000), a constraint, a value out of range,
# a deadlock or serialization failure (40xxx)) is a refusal of one batch: the run goes on.
# 57014 (a statement cancelled by statement_timeout) concerns the batch that was too slow.
_UNUSABLE_SQLSTATE_CLASSES: Final = frozenset({"08", "28", "3D", "53", "57", "58", "XX"})
_UNUSABLE_SQLSTATES: Final = frozenset({"25006", "42501", "42P01", "42703"})
_BATCH_SQLSTATES: Final = frozenset({"57014"})
# SQLite result codes (by their primary name) after which the file cannot be used.
_UNUSABLE_SQLITE_CODES: Final = frozenset(
    {"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_FULL",
     "SQLITE_CANTOPEN", "SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_NOMEM", "SQLITE_PERM",
     "SQLITE_PROTOCOL", "SQLITE_AUTH"}
)  # fmt: skip
# SQLITE_ERROR is generic; these messages say the schema itself is gone.
_UNUSABLE_SQLITE_MESSAGES: Final = ("no such table", "no such column")


def is_unavailable(exc: BaseException) -> bool:
    """Whether a database error means the database cannot be used (connection, lock, disk,
    schema gone), as opposed to a refusal of this batch's data (a constraint, a value out
    of range, a value too long for an index).

    Decided by the error's SQLSTATE (PostgreSQL) or result code (SQLite), never by the
    driver's exception class: psycopg raises "index row size exceeds maximum" (54000) as
    an OperationalError, yet only the batch that holds the value is at fault.
    """
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig if exc.orig is not None else exc
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate
        if state is None:  # raised by the driver itself: no connection, a closed one
            return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
        if state in _BATCH_SQLSTATES:
            return False
        return state[:2] in _UNUSABLE_SQLSTATE_CLASSES or state in _UNUSABLE_SQLSTATES
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", None)
        if isinstance(name, str):
            primary = "_".join(name.split("_")[:2])
            if primary in _UNUSABLE_SQLITE_CODES:
                return True
        return isinstance(exc, sqlite3.OperationalError) and str(exc).startswith(
            _UNUSABLE_SQLITE_MESSAGES
        )
    return isinstance(exc, OperationalError)


def describe(exc: BaseException) -> str:
    """The first line of a database error, without SQL or parameters."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__

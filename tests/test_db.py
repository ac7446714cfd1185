"""Connecting and schema checks: clear errors for a missing, old or unreachable schema."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import DBAPIError, OperationalError

from batchsync import runs
from batchsync.config import load_database
from batchsync.db import (
    SQLITE_CHECKPOINT_PAGES,
    check_schema,
    check_writable,
    create_db_engine,
    current_revision,
    describe_location,
    downgrade,
    is_unavailable,
    json_loads,
    reading,
    upgrade,
)
from batchsync.errors import (
    DatabaseReadOnly,
    DatabaseUnavailable,
    SchemaConflictError,
    SchemaOutdatedError,
)
from batchsync.jsontext import _json_text, json_dumps
from batchsync.store import stored_batches


def test_empty_database_is_told_to_upgrade(empty_engine: Engine) -> None:
    """A database without the schema names `batchsync db upgrade`."""
    with pytest.raises(SchemaOutdatedError, match="batchsync db upgrade"):
        check_schema(empty_engine)


def test_schema_behind_is_told_to_upgrade(empty_engine: Engine) -> None:
    """A database at an older revision is behind, and says so."""
    upgrade(empty_engine, "0001")
    with pytest.raises(SchemaOutdatedError, match="behind"):
        check_schema(empty_engine)
    upgrade(empty_engine)
    check_schema(empty_engine)


def test_schema_from_a_newer_version_is_reported(engine: Engine) -> None:
    """A revision this version does not know means batchsync itself is too old."""
    with engine.begin() as connection:
        connection.execute(text("update batchsync_alembic_version set version_num = '9999'"))
    with pytest.raises(SchemaOutdatedError, match="newer version"):
        check_schema(engine)


def test_unreachable_database_is_unavailable_without_password() -> None:
    """Connecting to nothing raises DatabaseUnavailable; the password is hidden."""
    engine = create_db_engine(load_database("postgresql://u:pw-abc-123@127.0.0.1:1/x"))
    with pytest.raises(DatabaseUnavailable) as raised:
        current_revision(engine)
    assert "pw-abc-123" not in str(raised.value)


def test_sqlite_uses_wal_and_foreign_keys(sqlite_url: str) -> None:
    """SQLite connections run in WAL mode with foreign keys enforced."""
    engine = create_db_engine(load_database(sqlite_url))
    upgrade(engine)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
        checkpoint = connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one()
        assert checkpoint == SQLITE_CHECKPOINT_PAGES
    downgrade(engine, "base")
    assert current_revision(engine) is None


def test_sqlite_reader_does_not_wait_for_a_writer(sqlite_url: str) -> None:
    """A read-only engine reads at once while another connection holds the write lock,
    where a writer with the same short busy timeout gives up."""
    settings = load_database(sqlite_url)
    upgrade(create_db_engine(settings))
    holder = sqlite3.connect(str(settings.url.database), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        reader = create_db_engine(settings, read_only=True, busy_timeout=0.05)
        assert current_revision(reader) is not None
        check_schema(reader)
        assert runs.list_runs(reader) == []
        writer = create_db_engine(settings, busy_timeout=0.05)
        with pytest.raises(DatabaseUnavailable, match="locked"):
            check_writable(writer)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_sqlite_reader_never_creates_a_missing_file(tmp_path: Path) -> None:
    """A read-only engine on a missing file raises DatabaseUnavailable naming the path."""
    path = tmp_path / "sub" / "none.db"
    with pytest.raises(DatabaseUnavailable, match=f"no database at {path}"):
        create_db_engine(load_database(f"sqlite:///{path}"), read_only=True)
    assert not path.parent.exists()


def test_sqlite_reader_cannot_write(sqlite_url: str) -> None:
    """The read-only engine really is read-only: a write is refused as DatabaseReadOnly."""
    settings = load_database(sqlite_url)
    upgrade(create_db_engine(settings))
    with pytest.raises(DatabaseReadOnly, match="is read-only"):
        check_writable(create_db_engine(settings, read_only=True))


def test_foreign_view_blocks_upgrade_before_anything_is_created(empty_engine: Engine) -> None:
    """A view named like one of batchsync's, without a batchsync revision, is reported by name."""
    with empty_engine.begin() as connection:
        connection.execute(text("create view batch_outcomes as select 1 as x"))
    with pytest.raises(SchemaConflictError, match="batch_outcomes") as raised:
        upgrade(empty_engine)
    assert "--schema" in str(raised.value) or "another SQLite file" in str(raised.value)
    assert current_revision(empty_engine) is None
    assert "batches" not in inspect(empty_engine).get_table_names()
    with empty_engine.connect() as connection:
        assert connection.execute(text("select x from batch_outcomes")).scalar_one() == 1


def test_schema_location_hides_the_password() -> None:
    """Messages name the --schema schema and never the database password."""
    settings = load_database("postgresql://u:pw-xyz-789@127.0.0.1:1/x", "bland")
    engine = create_db_engine(settings)
    where = describe_location(engine)
    assert where.endswith("(schema bland)")
    assert "pw-xyz-789" not in where
    with pytest.raises(DatabaseUnavailable) as raised:
        check_schema(engine)
    assert "pw-xyz-789" not in str(raised.value)


def test_reading_connection_does_not_wait_for_a_writer(sqlite_url: str) -> None:
    """A `reading` connection of a writing engine reads while another connection holds the
    write lock, where an ordinary connection with the same short busy timeout gives up."""
    settings = load_database(sqlite_url)
    upgrade(create_db_engine(settings))
    engine = create_db_engine(settings, busy_timeout=0.05)
    holder = sqlite3.connect(str(settings.url.database), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with reading(engine) as connection:
            assert stored_batches(connection) == {}
        with pytest.raises(OperationalError, match="locked"), engine.connect() as connection:
            stored_batches(connection)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


# -- JSON columns: exact text out, the same values back ------------------------------------------

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=8)
)
_json_values = st.recursive(
    _json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=4),
                      children, max_size=4),
    max_leaves=15,
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(value=_json_values)
def test_exact_json_writer_writes_what_orjson_writes(value: Any) -> None:
    """The writer used for integers beyond 64 bits writes any other value exactly as orjson
    does, so a value's stored text does not depend on which of the two wrote it."""
    assert _json_text(value) == json_dumps(value)


@settings(max_examples=200, deadline=None)
@given(value=_json_values, big=st.integers(min_value=2**64, max_value=2**300))
def test_json_columns_read_back_what_was_written(value: Any, big: int) -> None:
    """Any JSON value, with an integer beyond 64 bits beside it, reads back equal from the
    text json_dumps wrote (whole floats from 1e16 as ints, -0.0 as 0.0, as jsonb gives them)."""
    written = json_dumps({"value": value, "big": -big})
    read = json_loads(written)
    assert read["big"] == -big
    assert same_json(read["value"], value)


def same_json(read: Any, written: Any) -> bool:
    """Whether a value read back holds what was written; a float may come back as the int of
    its decimal value (7.2e16 as 72000000000000000), which as a float is the float written."""
    if isinstance(written, float):
        return type(read) in (int, float) and float(read) == written
    if isinstance(written, dict):
        return read.keys() == written.keys() and all(
            same_json(read[k], written[k]) for k in written
        )
    if isinstance(written, list):
        return len(read) == len(written) and all(map(same_json, read, written))
    return type(read) is type(written) and bool(read == written)


def test_json_nested_deeper_than_orjson_writes_is_written() -> None:
    """A value nested 1000 levels deep (orjson writes 254) is written and read back."""
    value: list[Any] = [2**70]
    for _ in range(999):
        value = [value]
    written = json_dumps(value)
    assert written == "[" * 1000 + "1180591620717411303424" + "]" * 1000
    assert json_loads(written.replace("1180591620717411303424", "7").encode()) is not None


def _error_of(engine: Engine, *statements: str) -> BaseException:
    """The error the last of ``statements`` raises on ``engine``, in a rolled-back transaction."""
    with engine.connect() as connection, connection.begin():
        for statement in statements[:-1]:
            connection.exec_driver_sql(statement)
        with pytest.raises(DBAPIError) as raised:
            connection.exec_driver_sql(statements[-1])
    return raised.value


def test_a_value_too_long_for_an_index_is_the_batch_fault_not_the_database(
    engine: Engine,
) -> None:
    """A value refused for its size (PostgreSQL 54000, an OperationalError) never means unusable."""
    if engine.dialect.name == "postgresql":
        statements = (
            "CREATE TEMP TABLE wide (v text PRIMARY KEY)",
            # md5 text does not compress: the index row is far over btree's 2704 bytes.
            "INSERT INTO wide SELECT string_agg(md5(i::text), '') FROM generate_series(1, 200) i",
        )
    else:
        statements = (
            "CREATE TEMP TABLE wide (v text CHECK (length(v) < 10))",
            "INSERT INTO wide VALUES ('" + "x" * 3000 + "')",
        )

    error = _error_of(engine, *statements)

    assert not is_unavailable(error)
    if engine.dialect.name == "postgresql":
        assert isinstance(error, OperationalError)  # the class the old rule went by


def test_a_duplicate_key_is_the_batch_fault(engine: Engine) -> None:
    """A constraint violation is a refusal of one batch's data, on both databases."""
    error = _error_of(
        engine,
        "CREATE TEMP TABLE twice (v text PRIMARY KEY)",
        "INSERT INTO twice VALUES ('a')",
        "INSERT INTO twice VALUES ('a')",
    )

    assert not is_unavailable(error)


def test_a_table_that_is_gone_makes_the_database_unusable(engine: Engine) -> None:
    """A missing table (schema dropped under the run) stops the run rather than every batch."""
    error = _error_of(engine, "SELECT * FROM no_such_table_here")

    assert is_unavailable(error)


def test_a_locked_sqlite_file_makes_the_database_unusable(tmp_path: Path) -> None:
    """SQLite's 'database is locked' (SQLITE_BUSY) means the file cannot be used now."""
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (v text)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError) as raised:
            other.execute("BEGIN IMMEDIATE")
    finally:
        other.close()
        holder.close()

    assert is_unavailable(raised.value)

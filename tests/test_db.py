"""Connecting and schema checks: clear errors for a missing, old or unreachable schema."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from batchsync.config import load_database
from batchsync.db import (
    _json_text,
    check_schema,
    create_db_engine,
    current_revision,
    downgrade,
    json_dumps,
    json_loads,
    upgrade,
)
from batchsync.errors import DatabaseUnavailable, SchemaOutdatedError


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
        connection.execute(text("update alembic_version set version_num = '9999'"))
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
    downgrade(engine, "base")
    assert current_revision(engine) is None


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

"""Connecting and schema checks: clear errors for a missing, old or unreachable schema."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from batchsync.config import load_database
from batchsync.db import check_schema, create_db_engine, current_revision, downgrade, upgrade
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
    downgrade(engine, "base")
    assert current_revision(engine) is None

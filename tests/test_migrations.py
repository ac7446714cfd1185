"""Alembic owns the schema: upgrade, downgrade, upgrade on both databases, matching the models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

from batchsync.db import current_revision, downgrade, head_revision, upgrade
from batchsync.models import Base

ROOT = Path(__file__).resolve().parent.parent


def test_upgrade_downgrade_upgrade_round_trip(empty_engine: Engine) -> None:
    """Every revision upgrades, downgrades to nothing, and upgrades again."""
    upgrade(empty_engine)
    assert current_revision(empty_engine) == head_revision()
    assert set(Base.metadata.tables) <= set(inspect(empty_engine).get_table_names())

    downgrade(empty_engine, "base")
    assert current_revision(empty_engine) is None
    assert set(inspect(empty_engine).get_table_names()) <= {"alembic_version"}

    upgrade(empty_engine)
    assert current_revision(empty_engine) == head_revision()


def test_migrations_match_the_models(engine: Engine) -> None:
    """Autogenerate finds no difference between the migrated database and the models."""
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "target_metadata": Base.metadata}
        )
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_constraints_and_indexes_are_named(engine: Engine) -> None:
    """Every primary key, foreign key and index carries the naming convention's name."""
    inspector = inspect(engine)
    for table in Base.metadata.tables:
        assert inspector.get_pk_constraint(table)["name"] in (f"pk_{table}", None)
        for fk in inspector.get_foreign_keys(table):
            assert fk["name"].startswith(f"fk_{table}_")
        for index in inspector.get_indexes(table):
            assert index["name"].startswith(f"ix_{table}_")


def test_postgres_tables_and_columns_carry_comments(engine: Engine) -> None:
    """On PostgreSQL, every table and column has its description stored as a comment."""
    if engine.dialect.name != "postgresql":
        return
    inspector = inspect(engine)
    for name, table in Base.metadata.tables.items():
        assert inspector.get_table_comment(name)["text"] == table.comment
        for column in inspector.get_columns(name):
            assert column["comment"], f"{name}.{column['name']} has no comment"


def test_alembic_command_line_upgrades_from_the_repository_root(database_url: str) -> None:
    """`alembic upgrade head` from a checkout migrates BATCHSYNC_DATABASE_URL."""
    env = {**os.environ, "BATCHSYNC_DATABASE_URL": database_url}
    alembic = Path(sys.executable).with_name("alembic")
    done = subprocess.run(
        [str(alembic), "upgrade", "head"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    current = subprocess.run(
        [str(alembic), "current"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert head_revision() in current.stdout

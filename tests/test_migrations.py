"""Alembic owns the schema: upgrade, downgrade, upgrade on both databases, matching the models."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from batchsync.bland.v1 import V1Source
from batchsync.config import load_database
from batchsync.db import (
    VERSION_TABLE,
    check_schema,
    create_db_engine,
    current_revision,
    downgrade,
    head_revision,
    upgrade,
)
from batchsync.errors import BadArgument, SchemaOutdatedError
from batchsync.models import VIEWS, Base
from batchsync.sync import SyncOptions, run_sync

ROOT = Path(__file__).resolve().parent.parent


def test_upgrade_downgrade_upgrade_round_trip(empty_engine: Engine) -> None:
    """Every revision upgrades, downgrades to nothing, and upgrades again."""
    upgrade(empty_engine)
    assert current_revision(empty_engine) == head_revision()
    assert set(Base.metadata.tables) <= set(inspect(empty_engine).get_table_names())

    downgrade(empty_engine, "base")
    assert current_revision(empty_engine) is None
    assert set(inspect(empty_engine).get_table_names()) <= {"batchsync_alembic_version"}

    upgrade(empty_engine)
    assert current_revision(empty_engine) == head_revision()


def test_migrations_match_the_models(engine: Engine) -> None:
    """Autogenerate finds no difference between the migrated database and the models."""
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "target_metadata": Base.metadata,
                "version_table": VERSION_TABLE,
            },
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


def test_postgres_tables_and_columns_carry_comments(postgres_url: str) -> None:
    """On PostgreSQL, every table and column has its description stored as a comment."""
    engine = create_db_engine(load_database(postgres_url))
    upgrade(engine)
    inspector = inspect(engine)
    for name, table in Base.metadata.tables.items():
        assert inspector.get_table_comment(name)["text"] == table.comment
        for column in inspector.get_columns(name):
            assert column["comment"], f"{name}.{column['name']} has no comment"
    engine.dispose()


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


def test_views_have_exactly_the_documented_columns(engine: Engine) -> None:
    """Each analyst view exists with the columns (and, on PostgreSQL, comments) documented."""
    inspector = inspect(engine)
    assert set(VIEWS.tables) <= set(inspector.get_view_names())
    for name, view in VIEWS.tables.items():
        columns = inspector.get_columns(name)
        assert [c["name"] for c in columns] == [c.name for c in view.columns], name
        if engine.dialect.name == "postgresql":
            assert inspector.get_table_comment(name)["text"] == view.comment
            for column in columns:
                assert column["comment"] == view.columns[column["name"]].comment


def test_views_answer_on_synced_data(engine: Engine, source: V1Source) -> None:
    """The views agree with the tables on a synced database."""
    run_sync(engine, source, SyncOptions(discover=True))
    with engine.connect() as connection:
        calls = connection.execute(text("select count(*) from calls")).scalar_one()
        per_batch = connection.execute(text("select sum(calls) from batch_outcomes")).scalar_one()
        per_day = connection.execute(
            text("select sum(calls) from daily_call_outcomes")
        ).scalar_one()
        joined = connection.execute(text("select count(*) from calls_with_batch")).scalar_one()
        humans = connection.execute(
            text("select count(*) from calls where answered_by = 'human'")
        ).scalar_one()
        human_sum = connection.execute(
            text("select sum(answered_human) from batch_outcomes")
        ).scalar_one()
        rate = connection.execute(
            text("select min(completion_rate), max(completion_rate) from batch_outcomes")
        ).one()
    assert calls == per_batch == per_day == joined
    assert humans == human_sum
    assert 0 <= rate[0] <= rate[1] <= 1


def _rows(engine: Engine, table: str) -> set[str]:
    with engine.connect() as connection:
        return set(connection.execute(text(f"select version_num from {table}")).scalars())


def _make_foreign_alembic_version(engine: Engine, *revisions: str) -> None:
    """Another application's Alembic bookkeeping, as Alembic itself creates it."""
    with engine.begin() as connection:
        connection.execute(
            text("create table alembic_version (version_num varchar(32) not null primary key)")
        )
        for revision in revisions:
            connection.execute(
                text("insert into alembic_version values (:revision)"), {"revision": revision}
            )


def _make_old_style(engine: Engine, revision: str, *others: str) -> None:
    """A database migrated by a batchsync that kept its revision in alembic_version."""
    upgrade(engine, revision)
    with engine.begin() as connection:
        connection.execute(text(f"drop table {VERSION_TABLE}"))
    _make_foreign_alembic_version(engine, revision, *others)


def test_another_apps_alembic_version_is_left_alone(empty_engine: Engine) -> None:
    """batchsync migrates beside another application's alembic_version without touching it."""
    _make_foreign_alembic_version(empty_engine, "a1b2c3d4e5f6")
    assert current_revision(empty_engine) is None
    upgrade(empty_engine)
    assert current_revision(empty_engine) == head_revision()
    check_schema(empty_engine)
    assert _rows(empty_engine, "alembic_version") == {"a1b2c3d4e5f6"}
    assert _rows(empty_engine, VERSION_TABLE) == {head_revision()}


def test_foreign_revision_named_like_ours_is_not_taken(empty_engine: Engine) -> None:
    """An alembic_version at '0001' without batchsync's tables is another application's."""
    _make_foreign_alembic_version(empty_engine, "0001")
    assert current_revision(empty_engine) is None
    upgrade(empty_engine)
    assert _rows(empty_engine, "alembic_version") == {"0001"}
    assert current_revision(empty_engine) == head_revision()


def test_old_style_database_is_read_then_moved_by_upgrade(empty_engine: Engine) -> None:
    """A revision in alembic_version counts as batchsync's; upgrade moves it and drops the
    then empty alembic_version."""
    _make_old_style(empty_engine, "0001")
    assert current_revision(empty_engine) == "0001"
    with pytest.raises(SchemaOutdatedError, match="behind"):
        check_schema(empty_engine)
    upgrade(empty_engine)
    assert current_revision(empty_engine) == head_revision()
    assert _rows(empty_engine, VERSION_TABLE) == {head_revision()}
    assert "alembic_version" not in inspect(empty_engine).get_table_names()


def test_old_style_database_at_head_keeps_working_and_moves(empty_engine: Engine) -> None:
    """An old-style database already at head passes the schema check; upgrade only moves it."""
    _make_old_style(empty_engine, head_revision())
    check_schema(empty_engine)
    upgrade(empty_engine)
    assert _rows(empty_engine, VERSION_TABLE) == {head_revision()}
    assert "alembic_version" not in inspect(empty_engine).get_table_names()


def test_shared_alembic_version_gives_up_only_our_row(empty_engine: Engine) -> None:
    """When alembic_version holds another application's row too, only ours moves."""
    _make_old_style(empty_engine, "0001", "ffee00112233")
    upgrade(empty_engine)
    assert _rows(empty_engine, "alembic_version") == {"ffee00112233"}
    assert _rows(empty_engine, VERSION_TABLE) == {head_revision()}


def test_alembic_command_line_moves_an_old_style_revision(database_url: str) -> None:
    """`alembic upgrade head` from the checkout also moves a revision out of alembic_version."""
    engine = create_db_engine(load_database(database_url))
    try:
        _make_old_style(engine, "0001")
        env = {**os.environ, "BATCHSYNC_DATABASE_URL": database_url}
        alembic = Path(sys.executable).with_name("alembic")
        done = subprocess.run(
            [str(alembic), "upgrade", "head"], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert _rows(engine, VERSION_TABLE) == {head_revision()}
        assert "alembic_version" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_alembic_command_line_honours_the_schema_variable(postgres_url: str) -> None:
    """`alembic upgrade head` with BATCHSYNC_SCHEMA creates that schema and migrates it."""
    schema = f"bs_{uuid.uuid4().hex[:10]}"
    env = {**os.environ, "BATCHSYNC_DATABASE_URL": postgres_url, "BATCHSYNC_SCHEMA": schema}
    alembic = Path(sys.executable).with_name("alembic")
    engine = create_db_engine(load_database(postgres_url, schema))
    try:
        done = subprocess.run(
            [str(alembic), "upgrade", "head"], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert current_revision(engine) == head_revision()
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names(schema=schema))
        default = create_db_engine(load_database(postgres_url))
        assert inspect(default).get_table_names() == []
        default.dispose()
    finally:
        with engine.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def test_0003_round_trip_keeps_v1_rows_and_marks_them_v1(empty_engine: Engine) -> None:
    """Upgrading a 0002 database with rows to 0003 keeps them and marks the batches v1;
    downgrading to 0002 drops only the new columns and batch_logs, and the rows stay."""
    upgrade(empty_engine, "0002")
    stamp = "2026-01-01 00:00:00+00:00"
    with empty_engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO batches (batch_id, label, synced_at, sync_run_id) "
                "VALUES ('old-gen-batch', 'kept', :t, 1)"
            ),
            {"t": stamp},
        )
        connection.execute(
            text(
                "INSERT INTO calls (call_id, batch_id, call_length, synced_at, sync_run_id) "
                "VALUES ('c1', 'old-gen-batch', 1.5, :t, 1)"
            ),
            {"t": stamp},
        )
    upgrade(empty_engine)
    with empty_engine.begin() as connection:
        row = connection.execute(text("SELECT api_version, label FROM batches")).one()
        assert tuple(row) == ("v1", "kept")
        assert connection.execute(text("SELECT price FROM calls")).scalar_one() is None
        connection.execute(
            text(
                "INSERT INTO batch_logs (batch_id, log_id, event_type, synced_at, sync_run_id) "
                "VALUES ('old-gen-batch', 'l1', 'complete', :t, 1)"
            ),
            {"t": stamp},
        )
        connection.execute(text("UPDATE calls SET price = 0.5, summary = 's'"))

    downgrade(empty_engine, "0002")
    assert current_revision(empty_engine) == "0002"
    assert "batch_logs" not in inspect(empty_engine).get_table_names()
    assert "price" not in {c["name"] for c in inspect(empty_engine).get_columns("calls")}
    assert "api_version" not in {c["name"] for c in inspect(empty_engine).get_columns("batches")}
    with empty_engine.connect() as connection:
        assert connection.execute(text("SELECT call_length FROM calls")).scalar_one() == 1.5
        assert connection.execute(text("SELECT count(*) FROM batch_outcomes")).scalar_one() == 1

    upgrade(empty_engine)
    assert current_revision(empty_engine) == head_revision()


def _insert_call(engine: Engine, call_id: str, batch_id: str) -> None:
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO calls (call_id, batch_id, synced_at, sync_run_id) "
                "VALUES (:call_id, :batch_id, '2026-01-01 00:00:00+00:00', 1)"
            ),
            {"call_id": call_id, "batch_id": batch_id},
        )


def _every_row(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table and view, in a stable order."""
    inspector = inspect(engine)
    present = {*inspector.get_table_names(), *inspector.get_view_names()}
    names = [name for name in [*Base.metadata.tables, *VIEWS.tables] if name in present]
    with engine.connect() as connection:
        return {
            name: sorted(
                (tuple(row) for row in connection.execute(text(f"SELECT * FROM {name}"))),
                key=repr,
            )
            for name in names
        }


def _calls_shape(engine: Engine) -> tuple[object, ...]:
    """What the calls table keeps through a rebuild: columns, primary key, indexes."""
    inspector = inspect(engine)
    return (
        [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns("calls")],
        inspector.get_pk_constraint("calls"),
        sorted((ix["name"], tuple(ix["column_names"])) for ix in inspector.get_indexes("calls")),
    )


def test_call_of_an_unknown_batch_is_accepted_by_the_database(engine: Engine) -> None:
    """After upgrade, calls.batch_id has no foreign key: the database takes a call whose
    batch has no row (SQLite runs with foreign_keys on); batchsync's writes keep it."""
    assert inspect(engine).get_foreign_keys("calls") == []
    _insert_call(engine, "lonely", "no-such-batch")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT batch_id FROM calls")).scalar_one() == (
            "no-such-batch"
        )


def test_0004_upgrade_keeps_every_row_and_round_trips(
    empty_engine: Engine, source: V1Source
) -> None:
    """Upgrading a synced 0003 database to 0004 keeps every row, the calls' primary key,
    indexes and the views; downgrading restores the foreign key with the rows, and upgrading
    again drops it."""
    upgrade(empty_engine, "0003")
    run_sync(empty_engine, source, SyncOptions(discover=True))
    rows = _every_row(empty_engine)
    shape = _calls_shape(empty_engine)
    assert all(rows[name] for name in ("calls", "call_transcripts", "calls_with_batch"))
    assert [fk["name"] for fk in inspect(empty_engine).get_foreign_keys("calls")] == [
        "fk_calls_batch_id_batches"
    ]

    upgrade(empty_engine)
    assert current_revision(empty_engine) == "0004"
    assert inspect(empty_engine).get_foreign_keys("calls") == []
    assert _every_row(empty_engine) == rows
    assert _calls_shape(empty_engine) == shape

    downgrade(empty_engine, "0003")
    foreign_keys = inspect(empty_engine).get_foreign_keys("calls")
    assert [(fk["name"], fk["referred_table"], fk["options"]) for fk in foreign_keys] == [
        ("fk_calls_batch_id_batches", "batches", {"ondelete": "CASCADE"})
    ]
    assert _every_row(empty_engine) == rows
    assert _calls_shape(empty_engine) == shape

    upgrade(empty_engine)
    assert inspect(empty_engine).get_foreign_keys("calls") == []
    assert _every_row(empty_engine) == rows


def test_0004_downgrade_refuses_while_a_call_has_no_batch(engine: Engine) -> None:
    """Downgrading to 0003 with a call whose batch has no row fails, naming the count and
    the way out, and changes nothing."""
    _insert_call(engine, "lonely", "no-such-batch")
    with pytest.raises(BadArgument, match=r"calls without a stored batch remain \(1\).*DELETE"):
        downgrade(engine, "0003")
    assert current_revision(engine) == head_revision()
    assert inspect(engine).get_foreign_keys("calls") == []
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM calls")).scalar_one() == 1

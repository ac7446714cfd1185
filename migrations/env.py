"""Alembic environment for batchsync.

Uses, in order: an engine or connection handed in by the application or a test
(``config.attributes``), the ``sqlalchemy.url`` of alembic.ini or ``-x url=...``, then
BATCHSYNC_DATABASE_URL (default: a SQLite file in the working directory). The PostgreSQL
schema comes from ``-x schema=...`` or BATCHSYNC_SCHEMA when the engine is built here.

The revision is kept in ``batchsync_alembic_version``, so that another application's
``alembic_version`` in the same database is left alone; one left by an older batchsync
is moved over before migrating.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from batchsync.config import ENV_SCHEMA, env, load_database
from batchsync.db import (
    VERSION_TABLE,
    adopt_legacy_version,
    create_db_engine,
    ensure_schema_exists,
    refuse_foreign_tables,
)
from batchsync.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite can only alter tables by copying them
        compare_type=True,
        version_table=VERSION_TABLE,
        **kwargs,  # type: ignore[arg-type]
    )


def _x(name: str) -> str | None:
    return context.get_x_argument(as_dictionary=True).get(name)


def _url() -> str | None:
    return _x("url") or config.get_main_option("sqlalchemy.url")


def _schema() -> str | None:
    return _x("schema") or env(ENV_SCHEMA)


def run_offline() -> None:
    _configure(url=load_database(_url(), _schema()).url, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    # In the migrations' transaction: nothing is created unless all of it is.
    ensure_schema_exists(connection)
    adopt_legacy_version(connection)
    refuse_foreign_tables(connection)
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = config.attributes.get("engine") or create_db_engine(load_database(_url(), _schema()))
    with engine.connect() as connection:
        _run(connection)
        connection.commit()


if context.is_offline_mode():
    run_offline()
else:
    run_online()

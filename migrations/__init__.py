"""Alembic migrations of the batchsync schema (shipped as batchsync.migrations)."""

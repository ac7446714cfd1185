"""batchsync: sync Bland AI phone-call batches into PostgreSQL or SQLite."""

__version__ = "0.1.0"

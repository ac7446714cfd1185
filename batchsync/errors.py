"""Every error batchsync raises on purpose, as one tree.

    BatchsyncError                  base; its message is safe to print (never holds a secret)
    ├── BadArgument                 an argument naming nothing that exists (a revision) -> 2
    ├── ConfigError                 bad option or environment value            -> exit 3
    ├── ApiError                    the Bland API answered badly or not at all
    │   ├── AuthError               401/403: the API key is wrong; stops the run -> exit 3
    │   ├── BatchNotFound           404 for one batch; fails that batch only
    │   ├── TransientApiError       429, 5xx, timeouts, connection errors: retried, then raised
    │   │   └── ApiUnreachable      no connection or a timeout, after the retries (one batch)
    │   ├── ApiUnavailable          batches in a row unreachable (or 502-504), the list too -> 5
    │   └── HttpStatusError         any other unexpected status
    ├── PayloadError                a response that cannot be understood (not JSON, wrong shape);
    │                               names the batch and the field; fails that batch only
    ├── InvalidBatchId              an id that cannot be put in a URL (blank, NUL); fails that batch
    ├── Interrupted                 SIGTERM: the batch in hand was finished, the run stopped -> 130
    └── DatabaseError               the database cannot be used
        ├── SchemaOutdatedError     schema missing or behind: run `batchsync db upgrade` -> exit 4
        ├── SchemaConflictError     a table batchsync would create is someone else's   -> exit 4
        └── DatabaseUnavailable     cannot connect, the connection dropped, no such file -> exit 4
            ├── DatabaseReadOnly    a write to a read-only SQLite file               -> exit 4
            └── DatabaseRefused     the server refused the settings: authentication failed,
                                    no such role or database, a port out of range (also a
                                    ConfigError)                                     -> exit 3

A failure of one batch (BatchNotFound, PayloadError, a per-batch TransientApiError or
database error while writing it) is recorded against that batch; the run goes on and ends
with exit code 1. So does anything unexpected while handling one batch: it is recorded as
an internal error of that batch. AuthError, ConfigError, DatabaseError and ApiUnavailable
stop the run.
"""

from __future__ import annotations


class BatchsyncError(Exception):
    """Base of every error batchsync raises on purpose."""


class BadArgument(BatchsyncError):
    """A command-line argument that names nothing that exists, such as a schema revision."""


class ConfigError(BatchsyncError):
    """A configuration value (option or environment variable) is missing or invalid."""


class ApiError(BatchsyncError):
    """The Bland API could not be used as expected."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class AuthError(ApiError):
    """The API rejected the key (401/403). Never carries the key itself."""


class BatchNotFound(ApiError):
    """The API answered 404 for a batch."""


class TransientApiError(ApiError):
    """A failure worth retrying: rate limit, server error, timeout, dropped connection."""

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after


class ApiUnreachable(TransientApiError):
    """No connection could be made, or the API did not answer in time, after the retries."""


class ApiUnavailable(ApiError):
    """The API stopped answering for several batches in a row; the run stops."""


class HttpStatusError(ApiError):
    """An HTTP status the client has no rule for."""


class PayloadError(BatchsyncError):
    """A response body that cannot be understood; names the batch and the field."""

    def __init__(self, message: str, *, batch_id: str | None = None, field: str | None = None):
        where = []
        if batch_id is not None:
            where.append(f"batch {batch_id}")
        if field is not None:
            where.append(f"field {field}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.batch_id = batch_id
        self.field = field
        self.reason = message


class InvalidBatchId(BatchsyncError):
    """A batch id that cannot be sent to the API at all (blank, NUL, not valid Unicode)."""


class Interrupted(BatchsyncError):
    """The run was asked to stop (SIGTERM) and stopped after the batch in hand."""


class DatabaseError(BatchsyncError):
    """The database cannot be used."""


class SchemaOutdatedError(DatabaseError):
    """The database schema is missing or older than this version of batchsync."""


class SchemaConflictError(DatabaseError):
    """A table or view batchsync would create already exists and is not batchsync's."""


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached, the connection dropped, or the file does not exist."""


class DatabaseReadOnly(DatabaseUnavailable):
    """The database can be read but not written (a read-only SQLite file or directory)."""


class DatabaseRefused(DatabaseUnavailable, ConfigError):
    """The database server is up but refused the settings: a password, role or database
    name, or a port out of range. Retrying cannot help; fixing the URL does (exit 3)."""

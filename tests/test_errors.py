"""The exception tree: one base, messages that name where, the tree drawn in the docstring."""

from __future__ import annotations

import re

from batchsync import errors


def test_payload_error_names_batch_and_field() -> None:
    """A PayloadError says which batch and which field, then what was wrong."""
    exc = errors.PayloadError("expected a list", batch_id="b7", field="call_data")
    assert str(exc) == "batch b7, field call_data: expected a list"
    assert (exc.batch_id, exc.field, exc.reason) == ("b7", "call_data", "expected a list")


def test_every_error_descends_from_the_base() -> None:
    """Every exception class of the module is a BatchsyncError."""
    classes = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, Exception)]
    assert all(issubclass(cls, errors.BatchsyncError) for cls in classes)


def test_docstring_draws_every_class() -> None:
    """The tree in the module docstring names every exception class, under its real parent."""
    doc = errors.__doc__ or ""
    for name, cls in vars(errors).items():
        if isinstance(cls, type) and issubclass(cls, errors.BatchsyncError):
            assert re.search(rf"\b{name}\b", doc), name
    assert issubclass(errors.AuthError, errors.ApiError)
    assert issubclass(errors.SchemaOutdatedError, errors.DatabaseError)
    assert issubclass(errors.DatabaseUnavailable, errors.DatabaseError)


def test_transient_error_carries_retry_after() -> None:
    """A transient API error keeps the server's Retry-After for the retry policy."""
    exc = errors.TransientApiError("rate limited", status_code=429, retry_after=3.0)
    assert (exc.status_code, exc.retry_after) == (429, 3.0)

"""Turn one raw Bland batch payload into typed records. Pure functions: no IO, no clock.

The Bland API is loose about types (see the quirks in the API notes): counts arrive as
numbers or numeric strings, ``answered_by`` as a string or a one-element list, call ids
under ``call_id`` or the pre-2024 ``c_id``, timestamps in several ISO formats. Each value
is parsed leniently where its meaning is unambiguous and rejected with a
:class:`~batchsync.errors.PayloadError` naming the batch and the field where it is not.
Fields this module does not model are kept, per record, in an ``extra`` mapping.

A body is decoded by :func:`parse_batch_body` (whole) or :func:`parse_batch_stream` (as it
arrives); both give the same records and the same errors for the same bytes, and both
store-proof the text on the way: NUL and lone surrogate escapes become U+FFFD.

The records (:mod:`batchsync.records`) are plain named tuples in table-column order so the
store can hand them to the database driver without another copy.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

import ijson
import orjson

from batchsync.errors import PayloadError
from batchsync.records import (
    AnalysisRecord,
    BatchLogRecord,
    BatchRecord,
    BatchSummary,
    CallRecord,
    ErrorRecord,
    JsonObject,
    ParsedBatch,
    QueueStatusCountRecord,
    StoredCalls,
    TranscriptLineRecord,
)

# Receives a batch's calls a chunk at a time while its body is parsed: the calls, their
# transcript lines (None when transcripts were not requested) and the ids of the calls of
# the chunk that an earlier chunk already held (the later copy wins, lines included).
CallsSink = Callable[[list[CallRecord], list["TranscriptLineRecord"] | None, frozenset[str]], None]
# Calls per chunk handed to a CallsSink: enough to keep the writes efficient, few enough
# that a chunk's records take a few tens of MB at most.
CHUNK_CALLS = 5000


class CallDataRepeated(Exception):
    """The body holds ``call_data`` twice, the second after calls of the first were handed
    to the sink: the last list counts, so the caller must start over without chunks."""


_BATCH_PARAM_KEYS = frozenset(
    {"id", "batch_id", "created_at", "label", "base_prompt", "endpoint_code", "campaign_id",
     "call_params"}
)  # fmt: skip
_TOP_KEYS = frozenset({"status", "batch_params", "analysis", "call_data"})
_ANALYSIS_KEYS = frozenset(
    {"total_calls", "completed_calls", "in_progress_calls", "queue_statuses", "call_lengths",
     "call_ids", "error_messages", "endpoints"}
)  # fmt: skip
_CALL_KEYS = frozenset(
    {"call_id", "c_id", "batch_id", "created_at", "to", "from", "completed", "call_length",
     "answered_by", "status", "queue_status", "error_message", "corrected_duration", "end_at",
     "endpoint_url", "max_duration", "request_data", "transcripts"}
)  # fmt: skip
# Both spellings occur in real payloads; the documented one is "complete".
QUEUE_STATUS_ALIASES = {"completed": "complete"}


class InvalidValue(Exception):
    """A value that cannot be understood, at ``key`` relative to the record being parsed.

    Raised by the coercions below and turned into a PayloadError with the full path by
    the loop that knows where the record sits: the happy path builds no path strings.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message

    def within(self, prefix: str) -> InvalidValue:
        return InvalidValue(f"{prefix}.{self.key}" if self.key else prefix, self.message)


def payload_error(exc: InvalidValue, batch_id: str | None, prefix: str = "") -> PayloadError:
    """The PayloadError for ``exc``, its field path prefixed with where its record sits
    (``call_data[12]``, say)."""
    field = f"{prefix}.{exc.key}" if prefix and exc.key else (prefix or exc.key)
    return PayloadError(exc.message, batch_id=batch_id, field=field)


def parse_batch(raw: Any, *, batch_id: str, transcripts_requested: bool = True) -> ParsedBatch:
    """Parse one ``GET /v1/batches/{id}`` body into records, or raise PayloadError.

    ``transcripts_requested`` says whether the request asked for transcripts: only then does a
    call without a ``transcripts`` list mean "this call has no transcript lines".
    """
    if not isinstance(raw, Mapping):
        raise PayloadError(
            f"expected a JSON object, got {type_name(raw)}", batch_id=batch_id, field="(body)"
        )
    if not isinstance(raw.get("batch_params"), Mapping):
        _assemble(raw, None, batch_id)  # raises the error about batch_params first
    raw_calls = raw.get("call_data")
    calls = None
    if raw_calls is not None:
        if not isinstance(raw_calls, list):
            raise payload_error(
                InvalidValue("call_data", f"expected a list, got {type_name(raw_calls)}"), batch_id
            )
        calls = _Calls(batch_id, transcripts_requested)
        for index, item in enumerate(raw_calls):
            calls.add(index, item)
    return _assemble(raw, calls, batch_id)


# -- decoding a body: one meaning for every body, whole or streamed ----------------------------
#
# A body is decoded whole (orjson, fast) or as it streams in (ijson, bounded memory). Both
# give the same records and the same errors because the streaming parser is the reference:
# the whole-body path uses orjson only for bodies on which orjson is exact, and hands every
# other body, and every body orjson refuses, to the streaming parser.
#
# What both paths do to every body before decoding it:
# - a leading UTF-8 byte order mark is dropped;
# - the escapes PostgreSQL cannot store, \u0000 and a UTF-16 surrogate that is not half of a
#   pair, become \uFFFD (the replacement character), in keys and values alike, so a batch is
#   never refused for one character and both databases hold the same text.
# Numbers keep their value: integers of any size stay exact, others become floats; a number
# beyond the float range (1e400) is refused. Nesting deeper than MAX_DEPTH is refused.

MAX_DEPTH = 1024  # what orjson decodes; deeper bodies fail on both paths alike
_BOM = b"\xef\xbb\xbf"
_UNSTORABLE_ESCAPE = re.compile(
    rb"\\u(?:0000"
    rb"|[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|[dD][c-fC-F][0-9a-fA-F]{2})"  # a low one: _replacement looks for its high half
)
_HIGH_SURROGATE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}")
# A cheap test for whether a body may hold such an escape (false positives are harmless).
_MAYBE_UNSTORABLE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
# A number of 19 digits or more may be beyond 64 bits, where orjson rounds to a float: such
# bodies (or those with as long a run of digits in a string) go to the streaming parser.
# Found by mapping every digit to 0 and looking for 19 zeros: far faster than a regex.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGIT_RUN = b"0" * 19
# Bytes after an escape's start that decide whether it is replaced (an escape and its pair).
_LOOKAHEAD = 12
_LOOKBEHIND = 8


def parse_batch_body(
    body: bytes, *, batch_id: str, transcripts_requested: bool = True
) -> ParsedBatch:
    """Parse a whole ``GET /v1/batches/{id}`` body; gives exactly what
    :func:`parse_batch_stream` gives for the same bytes, records or PayloadError."""
    fast = body[3:] if body.startswith(_BOM) else body
    if _MAYBE_UNSTORABLE.search(fast):
        fast = _UNSTORABLE_ESCAPE.sub(_replacement, fast)
    if _LONG_DIGIT_RUN not in fast.translate(_DIGITS_AS_ZERO):
        try:
            raw = orjson.loads(fast)
        except orjson.JSONDecodeError:
            pass  # the streaming parser says why, in the same words for both paths
        else:
            return parse_batch(raw, batch_id=batch_id, transcripts_requested=transcripts_requested)
    return parse_batch_stream(
        (body,), batch_id=batch_id, transcripts_requested=transcripts_requested
    )


def decode_json_body(body: bytes, *, batch_id: str | None, what: str = "(body)") -> Any:
    """Decode any JSON body by the rules every batch body follows (see above): U+FFFD for
    unstorable escapes, exact integers, no number beyond floats; PayloadError otherwise.

    For the bodies of other endpoints (the v2 API, the calls API), decoded whole.
    """
    fast = body[3:] if body.startswith(_BOM) else body
    if _MAYBE_UNSTORABLE.search(fast):
        fast = _UNSTORABLE_ESCAPE.sub(_replacement, fast)
    if _LONG_DIGIT_RUN not in fast.translate(_DIGITS_AS_ZERO):
        try:
            return orjson.loads(fast)
        except orjson.JSONDecodeError:
            pass  # the streaming decoder says why
    digit_runs = _DigitRuns()
    reader = _ChunkReader(_replace_unstorable(digit_runs.cut(_without_bom((body,)))))
    events = ijson.basic_parse(reader, use_float=False)
    try:
        event, value = next(events)
        raw = _build(events, event, value, 0)
        for _ in events:  # the parser refuses anything after the value
            pass
        if digit_runs.found:
            raise _BodyInvalid(_NUMBER_OUT_OF_RANGE)
        return raw
    except (ijson.JSONError, StopIteration) as exc:
        reason = _json_reason(exc) if isinstance(exc, ijson.JSONError) else "empty body"
        raise PayloadError(
            f"the response is not valid JSON ({reason})", batch_id=batch_id, field=what
        ) from None
    except UnicodeDecodeError:
        raise PayloadError(
            "the response is not valid JSON (text that is not UTF-8)",
            batch_id=batch_id,
            field=what,
        ) from None
    except _BodyInvalid as exc:
        raise PayloadError(str(exc), batch_id=batch_id, field=what) from None
    except (InvalidOperation, ValueError):
        raise PayloadError(_NUMBER_OUT_OF_RANGE, batch_id=batch_id, field=what) from None


def _replacement(match: re.Match[bytes]) -> bytes:
    """\\uFFFD for the escape matched, unless it is no escape (its backslash is escaped) or it
    is the low half of a pair (right after a high half that is an escape)."""
    data, start, escape = match.string, match.start(), match.group()
    if _escaped(data, start):
        return escape
    low = escape[3:4] in b"cdefCDEF"  # \\uDC00-\\uDFFF
    if low and _HIGH_SURROGATE.fullmatch(data, start - 6, start) and not _escaped(data, start - 6):
        return escape
    return b"\\uFFFD"


def _escaped(data: bytes, index: int) -> bool:
    """Whether the backslash at ``index`` is escaped: an odd run of backslashes before it."""
    before = index - 1
    while before >= 0 and data[before] == 0x5C:
        before -= 1
    return (index - 1 - before) % 2 == 1


def _without_bom(chunks: Iterable[bytes]) -> Iterator[bytes]:
    head = b""
    iterator = iter(chunks)
    for chunk in iterator:
        head += chunk
        if len(head) >= len(_BOM):
            break
    yield head[3:] if head.startswith(_BOM) else head
    yield from iterator


def _replace_unstorable(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The chunks with the escapes PostgreSQL cannot store replaced, as in the whole body.

    Only a few bytes are held back between chunks: enough to see the pair of a surrogate
    and the backslashes before an escape, so the result does not depend on the chunking.
    """
    head = b""  # bytes already passed on, kept for what comes before the next escape
    tail = b""  # bytes not passed on yet
    for chunk in chunks:
        tail += chunk
        if len(tail) <= _LOOKAHEAD:
            continue
        data = head + tail
        stop = len(data) - _LOOKAHEAD
        data = _replace_between(data, len(head), stop)
        yield data[len(head) : stop]
        keep = max(0, stop - _LOOKBEHIND)
        while keep > 0 and data[keep - 1] == 0x5C:
            keep -= 1
        head, tail = data[keep:stop], data[stop:]
    data = head + tail
    yield _replace_between(data, len(head), len(data))[len(head) :]


def _replace_between(data: bytes, start: int, stop: int) -> bytes:
    """``data`` with the escapes that begin in [start, stop) replaced."""
    if not _MAYBE_UNSTORABLE.search(data, start):
        return data
    parts: list[bytes] = []
    done = 0
    for match in _UNSTORABLE_ESCAPE.finditer(data, start):
        if match.start() >= stop:
            break
        replacement = _replacement(match)
        if replacement != match.group():
            parts += (data[done : match.start()], replacement)
            done = match.end()
    if not parts:
        return data
    parts.append(data[done:])
    return b"".join(parts)


# Python refuses to read an integer of more than 4300 digits, and ijson then fails in a way
# that cannot be caught cleanly: such runs of digits are cut short before the parser sees
# them, and the body is refused once it proved to be JSON. A run in a string counts too, so
# that both paths can tell such a body by a plain search.
_DIGIT_LIMIT = 4300
_DIGIT_RUN_TOO_LONG = re.compile(rb"[0-9]{%d,}" % (_DIGIT_LIMIT + 1))
_TOO_MANY_DIGITS = b"0" * (_DIGIT_LIMIT + 1)
_DIGITS = b"0123456789"


class _DigitRuns:
    """Chunks passed on with every run of more than _DIGIT_LIMIT digits cut to its first two
    (which keeps the JSON as valid or invalid as it was); ``found`` says whether one was."""

    def __init__(self) -> None:
        self.found = False

    def cut(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        pending = b""  # the digits that end what came so far, held back (at most the limit)
        dropping = False  # within a run already cut: its other digits are dropped
        for chunk in chunks:
            if dropping:
                chunk = chunk.lstrip(_DIGITS)
                if not chunk:
                    continue
                dropping = False
            data = pending + chunk
            trailing = len(data) - len(data.rstrip(_DIGITS))
            if _TOO_MANY_DIGITS in data.translate(_DIGITS_AS_ZERO):
                self.found = True
                data = _DIGIT_RUN_TOO_LONG.sub(lambda match: match.group()[:2], data)
            if trailing > _DIGIT_LIMIT:
                pending, dropping = b"", True
                yield data
                continue
            pending = data[len(data) - trailing :]
            yield data[: len(data) - trailing]
        yield pending


def parse_batch_stream(
    chunks: Iterable[bytes],
    *,
    batch_id: str,
    transcripts_requested: bool = True,
    on_calls: CallsSink | None = None,
    chunk_size: int = CHUNK_CALLS,
) -> ParsedBatch:
    """Parse a ``GET /v1/batches/{id}`` body as it arrives, one call at a time.

    The reference meaning of a body (see :func:`parse_batch_body`), and bounded memory: the
    whole decoded body never exists at once, only the records and one call at a time.
    A call that cannot be parsed is reported only once the rest of the body proved to be
    JSON, and after any fault of ``batch_params``, as :func:`parse_batch` reports them.

    With ``on_calls``, the calls are handed to it ``chunk_size`` at a time as they are
    parsed, the last chunk once the whole body proved valid, and the batch returned holds
    none (its ``calls`` is empty, or None if the body had no ``call_data``). A body found
    faulty after some chunks still raises its PayloadError: the caller undoes what it did
    with them. What ``on_calls`` raises propagates as it is; CallDataRepeated asks the
    caller to parse again without ``on_calls``.
    """
    digit_runs = _DigitRuns()
    reader = _ChunkReader(_replace_unstorable(digit_runs.cut(_without_bom(chunks))))
    events = ijson.basic_parse(reader, use_float=False)

    def proved_json() -> None:
        if digit_runs.found:
            raise _BodyInvalid(_NUMBER_OUT_OF_RANGE)

    sink = None if on_calls is None else _Sink(on_calls, chunk_size)
    try:
        return _parse_events(events, batch_id, transcripts_requested, proved_json, sink)
    except _SinkFailed as exc:
        raise exc.error from None
    except ijson.JSONError as exc:
        raise PayloadError(
            f"the response is not valid JSON ({_json_reason(exc)})",
            batch_id=batch_id,
            field="(body)",
        ) from None
    except UnicodeDecodeError:
        raise PayloadError(
            "the response is not valid JSON (text that is not UTF-8)",
            batch_id=batch_id,
            field="(body)",
        ) from None
    except _BodyInvalid as exc:
        raise PayloadError(str(exc), batch_id=batch_id, field="(body)") from None
    except (InvalidOperation, ValueError):  # ijson reading a number: an exponent, 4300+ digits
        raise PayloadError(_NUMBER_OUT_OF_RANGE, batch_id=batch_id, field="(body)") from None


class _Sink(NamedTuple):
    send: CallsSink
    chunk_size: int


class _SinkFailed(Exception):
    """What the sink raised, carried past the parser's own error handling."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error


class _BodyInvalid(Exception):
    """A body that is JSON but cannot be taken in (a number beyond floats, too deep)."""


def _json_reason(exc: Exception) -> str:
    """The parser's reason, without the excerpt of the body it appends on later lines."""
    reason = exc.args[0] if exc.args else ""
    if isinstance(reason, bytes):
        reason = reason.decode("utf-8", "replace")
    lines = str(reason).strip().splitlines()
    return lines[0].rstrip(".") if lines else type(exc).__name__


_EVENT_TYPES = {"start_array": "a list", "string": "a string", "number": "a number",
                "boolean": "a boolean", "null": "null"}  # fmt: skip


def _parse_events(
    events: Iterator[tuple[str, Any]],
    batch_id: str,
    transcripts_requested: bool,
    proved_json: Callable[[], None],
    sink: _Sink | None = None,
) -> ParsedBatch:
    event, value = next(events)
    if event != "start_map":
        _build(events, event, value, 0, keep=False)
        for _ in events:  # the parser refuses anything after the value
            pass
        proved_json()
        raise PayloadError(
            f"expected a JSON object, got {_EVENT_TYPES.get(event, event)}",
            batch_id=batch_id,
            field="(body)",
        )
    top: dict[str, Any] = {}
    calls: _Calls | None = None
    failure: PayloadError | None = None  # the first call that could not be parsed
    for event, key in events:
        if event == "end_map":
            break
        event, value = next(events)
        if key == "call_data":  # a repeated key: the last one counts, as in a decoded object
            if calls is not None and calls.sent:
                raise CallDataRepeated(batch_id)
            top.pop(key, None)
            calls, failure = None, None
            if event == "start_array":
                calls = _Calls(batch_id, transcripts_requested, sink)
                for index, (event, value) in enumerate(events):
                    if event == "end_array":
                        break
                    item = _build(events, event, value, 2, keep=failure is None)
                    if failure is None:
                        try:
                            calls.add(index, item)
                        except PayloadError as exc:
                            failure = exc
                continue
        top[key] = _build(events, event, value, 1)
    for _ in events:  # the parser refuses anything after the value
        pass
    proved_json()
    if not isinstance(top.get("batch_params"), Mapping):
        _assemble(top, None, batch_id)  # raises the error about batch_params first
    if top.get("call_data") is not None:
        raw_calls = top["call_data"]
        raise payload_error(
            InvalidValue("call_data", f"expected a list, got {type_name(raw_calls)}"), batch_id
        )
    if failure is not None:
        raise failure
    return _assemble(top, calls, batch_id)


class _ChunkReader:
    """A file-like ``read`` over an iterable of byte chunks, for ijson."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._chunk = memoryview(b"")

    def read(self, size: int = -1) -> bytes:
        while not self._chunk:
            chunk = next(self._chunks, None)
            if chunk is None:
                return b""
            self._chunk = memoryview(chunk)
        if size < 0:
            size = len(self._chunk)
        data, self._chunk = self._chunk[:size], self._chunk[size:]
        return bytes(data)


def _json_number(value: Any) -> Any:
    """A parsed number as orjson gives it: ints as they are, others as floats."""
    if type(value) is not Decimal:
        return value
    number = float(value)
    if number in (_INFINITY, -_INFINITY):
        raise _BodyInvalid(_NUMBER_OUT_OF_RANGE)
    return number


_INFINITY = float("inf")
_NUMBER_OUT_OF_RANGE = "a number in the response is out of range (beyond 1.8e308 or 4300 digits)"


def _build(
    events: Iterator[tuple[str, Any]], event: str, value: Any, depth: int, *, keep: bool = True
) -> Any:
    """Build the one JSON value whose first event is (``event``, ``value``) from ``events``.

    ``depth`` is the number of containers around the value. With ``keep`` false the value
    is only read through (and checked), not built.
    """
    if event == "start_map":
        root: Any = {}
    elif event == "start_array":
        root = []
    else:
        return _json_number(value) if event == "number" else value
    if depth >= MAX_DEPTH:
        raise _BodyInvalid(f"the response is nested deeper than {MAX_DEPTH} levels")
    containers: list[Any] = [root]
    keys: list[Any] = [None]
    for event, value in events:
        if event == "map_key":
            keys[-1] = value
            continue
        if event == "end_map" or event == "end_array":
            containers.pop()
            keys.pop()
            if not containers:
                return root if keep else None
            continue
        if event == "start_map":
            new: Any = {}
        elif event == "start_array":
            new = []
        elif event == "number":
            new = _json_number(value)
        else:
            new = value
        if keep:
            parent = containers[-1]
            if type(parent) is list:
                parent.append(new)
            else:
                parent[keys[-1]] = new
        if event == "start_map" or event == "start_array":
            if depth + len(containers) >= MAX_DEPTH:
                raise _BodyInvalid(f"the response is nested deeper than {MAX_DEPTH} levels")
            containers.append(new)
            keys.append(None)
    raise ijson.IncompleteJSONError("the body ended inside a value")


def _assemble(raw: Mapping[str, Any], calls: _Calls | None, batch_id: str) -> ParsedBatch:
    """The batch's records from its top-level fields and its (already parsed) calls."""
    try:
        params = _object(raw.get("batch_params"), "batch_params")
        found_id = params.get("id") or params.get("batch_id")
        if found_id is not None and str(found_id) != batch_id:
            raise InvalidValue(
                "batch_params.id", "the response is for another batch than the one requested"
            )
        batch = _parse_batch_record(raw, params, batch_id)
        analysis = queue_counts = errors = None
        raw_analysis = _optional_object(raw.get("analysis"), "analysis")
        if raw_analysis is not None:
            analysis, queue_counts, errors = _parse_analysis(raw_analysis, batch_id)
            extra_analysis = {k: v for k, v in raw_analysis.items() if k not in _ANALYSIS_KEYS}
            if extra_analysis:
                batch = batch._replace(extra={**(batch.extra or {}), "analysis": extra_analysis})
    except InvalidValue as exc:
        raise payload_error(exc, batch_id) from None
    if calls is None:
        return ParsedBatch(batch, analysis, queue_counts, errors, None, None)
    return ParsedBatch(batch, analysis, queue_counts, errors, *calls.result())


def parse_batch_list(raw: Any) -> list[BatchSummary]:
    """Parse one page of ``GET /v1/batches``, or raise PayloadError (at the first bad entry)."""
    summaries, problems = parse_batch_list_entries(raw)
    if problems:
        raise problems[0]
    return summaries


def parse_batch_list_body(body: bytes) -> tuple[list[BatchSummary], list[PayloadError]]:
    """Parse one page of the batch list from its bytes; see :func:`parse_batch_list_entries`.

    Decoded like a batch body: a byte order mark dropped, NUL and lone surrogate escapes
    made U+FFFD, integers exact. Fields the list is not read for (``call_params``...) are
    never checked, so a number beyond floats there is no error. PayloadError only for a
    body that is not JSON or not a list of batches.
    """
    text = body[3:] if body.startswith(_BOM) else body
    if _MAYBE_UNSTORABLE.search(text):
        text = _UNSTORABLE_ESCAPE.sub(_replacement, text)
    if _LONG_DIGIT_RUN not in text.translate(_DIGITS_AS_ZERO):
        try:
            return parse_batch_list_entries(orjson.loads(text))
        except orjson.JSONDecodeError:
            pass  # json says why, and takes what orjson refuses in unused fields (1e400)
    try:
        raw = json.loads(text)
    except UnicodeDecodeError:
        raise PayloadError(
            "the response is not valid JSON (text that is not UTF-8)", field="(body)"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise PayloadError(
            f"the response is not valid JSON ({_json_reason(exc)})", field="(body)"
        ) from None
    return parse_batch_list_entries(raw)


def parse_batch_list_entries(raw: Any) -> tuple[list[BatchSummary], list[PayloadError]]:
    """One page of the batch list: its entries, and the errors of its bad entries in order.

    One bad entry never spoils the page. An entry whose ``created_at``, ``campaign_id`` or
    ``label`` cannot be read keeps its id and carries the reason in ``error`` (its error,
    with ``batch_id`` set, is in the second list too); an entry with no usable id (not an
    object, id missing, empty or not text) is left out, its error (``batch_id`` None)
    naming ``batches[i]`` and the field in the second list. PayloadError only when the
    page itself is not an object with a ``batches`` list.
    """
    if not isinstance(raw, Mapping):
        raise PayloadError(f"expected a JSON object, got {type_name(raw)}", field="(body)")
    items = raw.get("batches")
    if not isinstance(items, list):
        raise PayloadError(f"expected a list, got {type_name(items)}", field="batches")
    summaries: list[BatchSummary] = []
    problems: list[PayloadError] = []
    for index, item in enumerate(items):
        where = f"batches[{index}]"
        try:
            entry = _object(item, "")
            raw_id = entry.get("batch_id") or entry.get("id")
            if raw_id is None or raw_id == "":
                raise InvalidValue("batch_id", "missing or empty")
            batch_id = coerce_text(raw_id, "batch_id") or ""
        except InvalidValue as exc:
            problems.append(payload_error(exc, None, where))
            continue
        try:
            summaries.append(
                BatchSummary(
                    batch_id=batch_id,
                    created_at=coerce_timestamp(entry.get("created_at"), "created_at"),
                    campaign_id=coerce_text(entry.get("campaign_id"), "campaign_id"),
                    label=coerce_text(entry.get("label"), "label"),
                )
            )
        except InvalidValue as exc:
            error = payload_error(exc, batch_id, where)
            problems.append(error)
            summaries.append(BatchSummary(batch_id, None, None, None, error=str(error)))
    return summaries, problems


def _parse_batch_record(
    raw: Mapping[str, Any], params: Mapping[str, Any], batch_id: str
) -> BatchRecord:
    # Unknown fields, grouped by where they came from so no two can collide.
    extra: JsonObject = {}
    params_extra = {k: v for k, v in params.items() if k not in _BATCH_PARAM_KEYS}
    if params_extra:
        extra["batch_params"] = params_extra
    top_extra = {k: v for k, v in raw.items() if k not in _TOP_KEYS}
    if top_extra:
        extra["response"] = top_extra
    return BatchRecord(
        batch_id=batch_id,
        status=coerce_text(raw.get("status"), "status"),
        label=coerce_text(params.get("label"), "batch_params.label"),
        base_prompt=coerce_text(params.get("base_prompt"), "batch_params.base_prompt"),
        endpoint_code=coerce_text(params.get("endpoint_code"), "batch_params.endpoint_code"),
        campaign_id=coerce_text(params.get("campaign_id"), "batch_params.campaign_id"),
        created_at=coerce_timestamp(params.get("created_at"), "batch_params.created_at"),
        call_params=params.get("call_params"),
        extra=extra or None,
    )


def _parse_analysis(
    raw: Mapping[str, Any], batch_id: str
) -> tuple[AnalysisRecord, list[QueueStatusCountRecord] | None, list[ErrorRecord] | None]:
    lengths = _optional_object(raw.get("call_lengths"), "analysis.call_lengths") or {}
    endpoints = raw.get("endpoints")
    if isinstance(endpoints, Mapping):
        endpoints = {str(k): _count_or_value(v) for k, v in endpoints.items()}
    analysis = AnalysisRecord(
        total_calls=coerce_integer(raw.get("total_calls"), "analysis.total_calls"),
        completed_calls=coerce_integer(raw.get("completed_calls"), "analysis.completed_calls"),
        in_progress_calls=coerce_integer(
            raw.get("in_progress_calls"), "analysis.in_progress_calls"
        ),
        call_length_average=coerce_number(lengths.get("average"), "analysis.call_lengths.average"),
        call_length_average_nonzero=coerce_number(
            lengths.get("average_nonzero"), "analysis.call_lengths.average_nonzero"
        ),
        call_length_summary=lengths.get("summary"),
        endpoints=endpoints,
    )

    # A list the analysis does not carry at all is None: "leave the stored rows alone".
    statuses = _optional_object(raw.get("queue_statuses"), "analysis.queue_statuses")
    queue_counts = None
    if statuses is not None:
        counts: dict[str, int] = {}
        for key, value in statuses.items():
            if key_too_long(str(key)):  # the key itself is too long to quote in the field name
                raise InvalidValue("analysis.queue_statuses", f"a key is {_too_long(str(key))}")
            count = coerce_integer(value, f"analysis.queue_statuses.{key}")
            if count is None:
                continue
            name = QUEUE_STATUS_ALIASES.get(str(key), str(key))
            counts[name] = counts.get(name, 0) + count
        queue_counts = [QueueStatusCountRecord(batch_id, k, v) for k, v in counts.items()]

    raw_errors = raw.get("error_messages")
    if raw_errors is None:
        return analysis, queue_counts, None
    if not isinstance(raw_errors, list):
        raise InvalidValue(
            "analysis.error_messages", f"expected a list, got {type_name(raw_errors)}"
        )
    errors: list[ErrorRecord] = []
    for position, item in enumerate(raw_errors):
        where = f"analysis.error_messages[{position}]"
        if isinstance(item, str):
            errors.append(ErrorRecord(batch_id, position, None, item))
        elif isinstance(item, Mapping):
            message = item.get("error_message", item.get("message"))
            errors.append(
                ErrorRecord(
                    batch_id,
                    position,
                    coerce_text(item.get("call_id") or item.get("c_id"), f"{where}.call_id"),
                    coerce_text(message, f"{where}.error_message") or "",
                )
            )
        else:
            raise InvalidValue(where, f"expected an object or a string, got {type_name(item)}")
    return analysis, queue_counts, errors


class _Calls:
    """Calls and their transcript lines, parsed one raw call at a time."""

    def __init__(
        self, batch_id: str, transcripts_requested: bool, sink: _Sink | None = None
    ) -> None:
        self.batch_id = batch_id
        self.transcripts_requested = transcripts_requested
        self.calls: dict[str, CallRecord] = {}
        # A repeated call id is the same call sent twice: the later copy wins, lines included.
        self.lines: dict[str, dict[int, TranscriptLineRecord]] = {}
        self.sink = sink
        self.sent: set[str] = set()  # ids of the calls already handed to the sink

    def send(self) -> None:
        """Hand the calls held to the sink and forget them."""
        assert self.sink is not None
        calls, lines = self._records()
        again = frozenset(self.calls.keys() & self.sent) if self.sent else frozenset()
        self.sent.update(self.calls)
        self.calls, self.lines = {}, {}
        try:
            self.sink.send(calls, lines, again)
        except BaseException as exc:
            raise _SinkFailed(exc) from exc

    def add(self, index: int, item: Any) -> None:
        batch_id = self.batch_id
        try:
            if type(item) is not dict and not isinstance(item, Mapping):
                raise InvalidValue("", f"expected an object, got {type_name(item)}")
            call = parse_call(item, batch_id)
            if self.sink is not None and len(self.calls) >= self.sink.chunk_size:
                self.send()
            self.calls[call.call_id] = call
            if not self.transcripts_requested:
                return
            raw_lines = item.get("transcripts")
            if raw_lines is not None and not isinstance(raw_lines, list):
                raise InvalidValue("transcripts", f"expected a list, got {type_name(raw_lines)}")
            call_lines = self.lines[call.call_id] = {}
            for line_index, raw_line in enumerate(raw_lines or ()):
                try:
                    line = parse_transcript_line(raw_line, call.call_id, batch_id)
                except InvalidValue as exc:
                    raise exc.within(f"transcripts[{line_index}]") from None
                call_lines[line.line_id] = line
        except InvalidValue as exc:
            raise payload_error(exc, batch_id, f"call_data[{index}]") from None

    def result(self) -> tuple[list[CallRecord], list[TranscriptLineRecord] | None]:
        """The calls and lines held; with a sink, they are sent and none is returned."""
        if self.sink is not None:
            self.send()
        return self._records()

    def _records(self) -> tuple[list[CallRecord], list[TranscriptLineRecord] | None]:
        calls = list(self.calls.values())
        if not self.transcripts_requested:
            return calls, None
        return calls, [line for by_id in self.lines.values() for line in by_id.values()]


def parse_call(item: Mapping[str, Any], batch_id: str) -> CallRecord:
    """One entry of a v1 batch's ``call_data`` (or a v2 calls-list entry) as a CallRecord:
    ``call_id`` (or ``c_id`` before Feb 2024), Bland's fields in their columns, unknown fields
    in ``extra``; the detail columns None. Raises InvalidValue naming the field."""
    # The hot loop of a sync: each value takes an inline fast path when it already has its
    # type (a str, a UTC timestamp string) and the coercion below otherwise, so quirks are
    # handled exactly as ever. Low-cardinality text is interned: a chunk's records share it.
    get = item.get
    raw_id = get("call_id")
    if raw_id is None or raw_id == "":
        raw_id = get("c_id")
    if raw_id is None or raw_id == "":
        raise InvalidValue("call_id", "missing (neither call_id nor c_id)")
    call_id = (
        raw_id if type(raw_id) is str and len(raw_id) <= _KEY_FAST else _key(raw_id, "call_id")
    )
    call_id = call_id or ""
    extra = None if _CALL_KEYS.issuperset(item) else {k: item[k] for k in item.keys() - _CALL_KEYS}
    # Coerced in the order of the record's fields (queue_status first), so that a call with
    # several faults names the same field as ever.
    queue_status = get("queue_status")
    if queue_status is not None and not (
        type(queue_status) is str and len(queue_status) <= _KEY_FAST
    ):
        queue_status = _key(queue_status, "queue_status")
    if queue_status is not None:
        if type(queue_status) is not str:
            queue_status = coerce_text(queue_status, "queue_status") or ""
        queue_status = _intern(QUEUE_STATUS_ALIASES.get(queue_status, queue_status))
    created_at = get("created_at")
    if type(created_at) is not str or (created_at := _utc_or_none(created_at)) is None:
        created_at = coerce_timestamp(get("created_at"), "created_at")
    to = get("to")
    if to is not None and type(to) is not str:
        to = coerce_text(to, "to")
    from_ = get("from")
    if from_ is not None:
        from_ = _intern(from_) if type(from_) is str else coerce_text(from_, "from")
    completed = get("completed")
    if completed is not None and type(completed) is not bool:
        completed = coerce_boolean(completed, "completed")
    call_length = coerce_number(get("call_length"), "call_length")
    answered_by = get("answered_by")
    if answered_by is not None:
        answered_by = (
            _intern(answered_by)
            if type(answered_by) is str and len(answered_by) <= _KEY_FAST
            else _answered_by(answered_by, "answered_by")
        )
    status = get("status")
    if status is not None:
        status = _intern(status) if type(status) is str else coerce_text(status, "status")
    error_message = get("error_message")
    if error_message is not None and type(error_message) is not str:
        error_message = coerce_text(error_message, "error_message")
    corrected_duration = coerce_integer(get("corrected_duration"), "corrected_duration")
    end_at = get("end_at")
    if type(end_at) is not str or (end_at := _utc_or_none(end_at)) is None:
        end_at = coerce_timestamp(get("end_at"), "end_at")
    endpoint_url = get("endpoint_url")
    if endpoint_url is not None:
        endpoint_url = (
            _intern(endpoint_url)
            if type(endpoint_url) is str
            else coerce_text(endpoint_url, "endpoint_url")
        )
    return _new(
        CallRecord,
        (
            call_id,
            batch_id,
            created_at,
            to,
            from_,
            completed,
            call_length,
            answered_by,
            status,
            queue_status,
            error_message,
            corrected_duration,
            end_at,
            endpoint_url,
            coerce_number(get("max_duration"), "max_duration"),
            get("request_data"),
            extra,
            *_NO_DETAIL,
        ),
    )


def parse_transcript_line(raw: Any, call_id: str, batch_id: str) -> TranscriptLineRecord:
    """One entry of a call's ``transcripts`` list (``id``, ``user``, ``text``,
    ``created_at``) as a TranscriptLineRecord. Raises InvalidValue naming the field."""
    if type(raw) is not dict and not isinstance(raw, Mapping):
        raise InvalidValue("", f"expected an object, got {type_name(raw)}")
    line_id = raw.get("id")
    if type(line_id) is not int or not -_INT64 <= line_id < _INT64:
        line_id = coerce_integer(line_id, "id", limit=_INT64)
        if line_id is None:
            raise InvalidValue("id", "missing")
    speaker, text = raw.get("user"), raw.get("text")
    if speaker is not None:
        speaker = _intern(speaker) if type(speaker) is str else coerce_text(speaker, "user")
    if text is not None and type(text) is not str:
        text = coerce_text(text, "text")
    created_at = raw.get("created_at")
    if type(created_at) is not str or (created_at := _utc_or_none(created_at)) is None:
        created_at = coerce_timestamp(raw.get("created_at"), "created_at")
    return _new(TranscriptLineRecord, (call_id, line_id, batch_id, created_at, speaker, text))


_intern = sys.intern
# A record built from a tuple of all its fields, without the keyword handling of its
# constructor: the hot loop builds one per call and per transcript line.
_new = tuple.__new__
_fromisoformat = datetime.fromisoformat
# The call detail's fields (their defaults: None) that a batch's call does not carry.
_NO_DETAIL = tuple(CallRecord._field_defaults.values())


def _utc_or_none(text: str) -> datetime | None:
    """The hot path of :func:`coerce_timestamp`: an ISO 8601 string with a UTC offset, or None
    for anything else (which :func:`coerce_timestamp` then handles, quirks and errors alike)."""
    try:
        parsed = _fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is UTC else None


# -- scalar coercions: each takes the value and its key, for the error ------------------------


def type_name(value: object) -> str:
    """How a message names a JSON value's type: "an object", "a list", "null", ..."""
    if value is None:
        return "null"
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number"}  # fmt: skip
    return names.get(type(value), f"a {type(value).__name__}")


def _object(value: Any, key: str) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    raise InvalidValue(key, f"expected an object, got {type_name(value)}")


def _optional_object(value: Any, key: str) -> Mapping[str, Any] | None:
    return None if value is None else _object(value, key)


def coerce_text(value: Any, key: str) -> str | None:
    """A text field: strings as sent, numbers and booleans as their JSON text; None for
    null. Raises InvalidValue for an object or a list."""
    if value is None or type(value) is str:
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise InvalidValue(key, f"expected a string, got {type_name(value)}")


# Ids and other values the databases index (call ids, batch ids, answered_by, queue status
# names) are refused beyond this many bytes of UTF-8. PostgreSQL cannot index a value much
# over 2,700 bytes and SQLite can: with one limit below both, a batch is stored, or refused
# with a PayloadError naming the field, alike on both.
MAX_KEY_BYTES = 1000


# Text up to this many characters cannot pass MAX_KEY_BYTES (4 bytes a character at most):
# the hot path skips the check for it.
_KEY_FAST = MAX_KEY_BYTES // 4


def key_too_long(value: str) -> bool:
    """Whether an id or indexed value is beyond MAX_KEY_BYTES of UTF-8."""
    return len(value) > MAX_KEY_BYTES // 4 and (
        len(value.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES
    )


# How much of an over-long id is kept where it is recorded: 200 characters are at most 800
# bytes, so with the marker and the hash the recorded id stays under MAX_KEY_BYTES.
_RECORDED_PREFIX = 200


def printable(text: str) -> str:
    """``text`` as one line a terminal shows as it is: every character that is not
    printable (newline, ESC, BEL, NUL, a lone surrogate...) written as its Python escape.

    The one rule for showing an id (or a reason that quotes one) in a log line, a summary
    or ``runs show``, so that no id can break a line, forge one or drive the terminal.
    """
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode()
        for c in text
    )


def recordable_id(batch_id: str) -> str:
    """The id as both databases can record it (in sync_run_batches) and a terminal can show.

    NUL and lone surrogates become U+FFFD. An id beyond MAX_KEY_BYTES is cut to its first
    200 characters followed by "…#" and 16 hex digits of its BLAKE2b hash, so two long ids
    that share a beginning are still recorded apart.
    """
    if "\x00" in batch_id or not batch_id.isprintable():
        batch_id = "".join(
            "\ufffd" if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in batch_id
        )
    if not key_too_long(batch_id):
        return batch_id
    digest = hashlib.blake2b(batch_id.encode("utf-8"), digest_size=8).hexdigest()
    return f"{batch_id[:_RECORDED_PREFIX]}\u2026#{digest}"


def _key(value: Any, key: str) -> str | None:
    """A text value the databases index: at most MAX_KEY_BYTES of UTF-8."""
    text = coerce_text(value, key)
    if text is not None and key_too_long(text):
        raise InvalidValue(key, _too_long(text))
    return text


def _too_long(text: str) -> str:
    return (
        f"{len(text.encode('utf-8', 'surrogatepass')):,} bytes long, over the limit of "
        f"{MAX_KEY_BYTES:,} bytes for an id or an indexed value"
    )


_INT32 = 2**31
_INT64 = 2**63


def coerce_integer(value: Any, key: str, *, limit: int = _INT32) -> int | None:
    """A whole number from a number or a numeric string, within the column's range."""
    if value is None or value == "":
        return None
    if type(value) is int:
        number: int = value
    elif isinstance(value, bool):
        raise InvalidValue(key, "expected a number, got a boolean")
    elif isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        number = int(value)
    elif isinstance(value, str):
        number = _whole_from_text(value, key)
    else:
        raise InvalidValue(key, f"expected a whole number, got {type_name(value)}")
    if not -limit <= number < limit:
        raise InvalidValue(key, "the number is out of range")
    return number


def _whole_from_text(value: str, key: str) -> int:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if number.is_integer():
        return int(number)
    raise InvalidValue(key, "expected a whole number, got text that is not one")


def coerce_number(value: Any, key: str) -> float | None:
    """A float from a number or a numeric string; -0.0 is 0.0 (SQLite cannot store -0.0)."""
    if value is None or value == "":
        return None
    if type(value) is float:
        return value + 0.0  # -0.0 + 0.0 is 0.0
    if isinstance(value, bool):
        raise InvalidValue(key, "expected a number, got a boolean")
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:
            raise InvalidValue(key, "the number is out of range") from None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise InvalidValue(key, "expected a number, got text that is not one") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise InvalidValue(key, "expected a finite number, got NaN or infinity")
        return number + 0.0
    raise InvalidValue(key, f"expected a number, got {type_name(value)}")


def _count_or_value(value: Any) -> Any:
    """Endpoint counts come as 3 or "3": store numbers as numbers, anything else as it came."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return value


_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def coerce_boolean(value: Any, key: str) -> bool | None:
    """A JSON boolean as Bland sends one: true/false, 0/1, or their text ("true", "yes",
    "0", ...); None for null. Raises InvalidValue for anything else."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _BOOLEANS:
        return _BOOLEANS[value.strip().lower()]
    raise InvalidValue(key, f"expected a boolean, got {type_name(value)} that is not one")


def _answered_by(value: Any, key: str) -> str | None:
    """Documented as an array of one string, sent as a plain string: accept both."""
    if isinstance(value, list):
        if not value:
            return None
        if len(value) > 1:
            raise InvalidValue(key, f"expected at most one value, got {len(value)}")
        value = value[0]
    return _key(value, key)


def _unusual_timestamp(value: str, key: str) -> datetime:
    """Forms fromisoformat refuses but whose meaning is clear: a trailing UTC/GMT, an HTTP
    date, epoch seconds or milliseconds in a string."""
    text = value.strip()
    for suffix in ("UTC", "GMT", "utc", "gmt"):
        if text.endswith(suffix):
            text = text.removesuffix(suffix).strip() + "+00:00"
            break
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    if text.replace(".", "", 1).isdigit():
        parsed = coerce_timestamp(float(text), key)
        assert parsed is not None
        return parsed
    try:
        return email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        raise InvalidValue(
            key, "expected an ISO 8601 timestamp, got text that is not one"
        ) from None


def coerce_timestamp(value: Any, key: str) -> datetime | None:
    """Parse the ISO 8601 variants the API sends; naive times are UTC. Always returns UTC."""
    if value is None or value == "":
        return None
    if type(value) is str or isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = _unusual_timestamp(value, key)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        # Epoch seconds, or milliseconds when the number is too large to be seconds.
        try:
            seconds = value / 1000 if abs(value) > 1e11 else value
            parsed = datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidValue(key, "the timestamp is out of range") from None
    else:
        raise InvalidValue(key, f"expected a timestamp, got {type_name(value)}")
    tz = parsed.tzinfo
    if tz is UTC:
        return parsed
    if tz is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise InvalidValue(key, "the timestamp is out of range") from None


# The records live in batchsync.records; they stay importable from here.
__all__ = [
    "AnalysisRecord",
    "BatchLogRecord",
    "BatchRecord",
    "BatchSummary",
    "CallRecord",
    "ErrorRecord",
    "JsonObject",
    "ParsedBatch",
    "QueueStatusCountRecord",
    "StoredCalls",
    "TranscriptLineRecord",
    "decode_json_body",
    "parse_batch",
    "parse_batch_body",
    "parse_batch_list",
    "parse_batch_stream",
]

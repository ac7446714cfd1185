"""The emulator's v1 account: its batches and calls, generated or stored.

Batch ``i`` (ascending by ``created_at``) and its calls are a pure function of ``seed`` and
``i``, rebuilt on every request so that 100 batches of 10,000 calls cost no memory. Every quirk of
the real payloads shows up in a default ``Emulator()`` at fixed positions:

- the oldest third of the batches (batch 0 at least) name the call id ``c_id`` and carry no
  top-level ``status``; the newest batch is ``in-progress`` with its last fifth of calls
  ``queued`` or ``started``; the others are ``completed``;
- ``answered_by`` rotates over ``"human"``, ``"voicemail"``, ``"unknown"``, ``"no-answer"``,
  ``["human"]``, ``null`` and a missing key;
- timestamps rotate over microseconds with ``+00:00``, five fractional digits, milliseconds with
  ``Z``, and microseconds at ``-05:00``;
- every tenth call fails (``call_error`` / ``complete_error``, an ``error_message``);
  ``queue_status`` of finished calls is ``complete`` or ``completed``;
- ``corrected_duration`` is a string of seconds, sometimes an int, sometimes missing;
- analysis counts are ints in even batches and numeric strings in odd ones; ``endpoints`` values
  are strings in batches 1, 4, 7, ...; ``error_messages`` are plain strings in batches 2, 5, 8, ...
  and ``{"call_id", "error_message"}`` objects elsewhere;
- unknown fields: ``price`` / ``summary`` / ``variables`` on some calls, ``voice`` in the
  ``batch_params`` of even batches, a top-level ``meta`` in batches 3, 7, 11, ...

``analysis`` is always computed from ``call_data``, so the two agree. ``call_lengths`` holds
minutes throughout, its ``summary`` buckets included.

Revisions. Setting ``emu.revision = r`` (r > 0) changes the data as a pure function of
(seed, batch, r), not cumulatively: in every batch with calls, about ``changed_fraction`` of the
calls change (``call_length``, ``answered_by``, ``queue_status``, a failed call may succeed) and
lose the last line of their transcript, one call vanishes, one new call appears, and the newest
batch has finished. Going from revision 1 to 2 therefore also brings back the call that revision 1
removed and drops the one it added.

Batches stored with :meth:`Emulator.put_batch` are served exactly as given, at every revision.

The routes that serve this data (:mod:`batchsync.emulator.routes`) own nothing of it but the
revision they ask for.
"""

from __future__ import annotations

import bisect
import random
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

import orjson

# Generated batches are spread over this window, oldest first.
_FIRST_BATCH_AT: Final = datetime(2024, 1, 1, tzinfo=UTC)
_LAST_BATCH_AT: Final = datetime(2025, 6, 30, tzinfo=UTC)
_EASTERN: Final = timezone(timedelta(hours=-5))
_TRANSCRIPT_ID_BASE: Final = 1_000_000
_MAX_TRANSCRIPT_LINES: Final = 8
# Multiples of the golden ratio spread the calls that carry a transcript evenly over a batch.
_GOLDEN: Final = 0.6180339887498949

_UNFINISHED: Final = frozenset({"new", "queued", "allocated", "started"})
_BUCKET_BOUNDS: Final = (5, 10, 15, 20, 30, 45, 60, 90, 120)
_BUCKET_LABELS: Final = (
    "0-5", "5-10", "10-15", "15-20", "20-30", "30-45", "45-60", "60-90", "90-120", "120+",
)  # fmt: skip
_MISSING: Final = object()
_ANSWERED_BY_ROTATION: Final = 7

_LABELS: Final = (
    "Customer Satisfaction Follow-up",
    "Subscription Renewal Reminders",
    "Appointment Confirmations",
    "Payment Reminders",
    "Lead Qualification",
    "Delivery Window Check",
)
_PROMPTS: Final = (
    "You are calling {{name}} to ask about their recent purchase.",
    "You are calling {{business}} to remind them about their subscription.",
    "You are confirming {{name}}'s appointment on {{date}}.",
    "You are calling {{name}} about an unpaid invoice. Be polite and brief.",
)
_ERRORS: Final = (
    "Cannot transfer to {to} - Call is no longer active",
    "Invalid phone number: {to}",
    "Call failed: the carrier rejected the call to {to}",
)
_ASSISTANT_LINES: Final = (
    " Hi, this is a message for Alex.",
    " Hello, I'm calling about your recent order.",
    " Could you confirm the best time to reach you?",
    " Thanks for your time, have a great day.",
    " I can help with that right away.",
)
_USER_LINES: Final = (
    " Hello?",
    " Yes, speaking.",
    " Tomorrow morning works for me.",
    " I'm not interested, thank you.",
    " Can you call back later?",
)


@dataclass(frozen=True)
class _BatchMeta:
    """What a generated batch is before its calls: enough for the list endpoint."""

    index: int
    batch_id: str
    created: datetime
    params: dict[str, Any]  # batch_params exactly as served
    max_duration: int  # minutes, as in call_params
    from_number: str


class V1Account:
    """The v1 batches of an account, as a pure function of (seed, batch, revision), plus
    batches stored or removed by hand. Safe to use from several threads."""

    def __init__(
        self,
        *,
        seed: int,
        batches: int,
        calls_per_batch: int,
        transcript_ratio: float,
        changed_fraction: float,
    ) -> None:
        self.seed = seed
        self.batches = batches
        self.calls_per_batch = calls_per_batch
        self._transcript_ratio = transcript_ratio
        self._changed_fraction = changed_fraction
        # Batch 0 at least is old-style, but never the newest, which must show "in-progress".
        self._old_batches = max(1, round(batches / 3))
        if batches > 1:
            self._old_batches = min(self._old_batches, batches - 1)
        self._campaigns = (_campaign_id(seed, 0), _campaign_id(seed, 1))
        self._lock = threading.Lock()
        self._overrides: dict[str, dict[str, Any]] = {}
        self._removed: set[str] = set()
        self._generated: list[tuple[datetime, str]] = []
        for index in range(batches):
            meta = self._meta(index)
            self._generated.append((meta.created, meta.batch_id))
        self._index_of = {batch_id: i for i, (_, batch_id) in enumerate(self._generated)}

    def batch_ids(self) -> list[str]:
        """Return every batch id, ascending by created_at."""
        return [batch_id for _, batch_id, _ in self.visible()]

    def raw_batch(self, batch_id: str, revision: int) -> dict[str, Any]:
        """Return a fresh copy of a batch's full detail payload at ``revision``; KeyError if
        there is none."""
        with self._lock:
            override = self._overrides.get(batch_id)
            removed = batch_id in self._removed
        if override is not None:
            copy: dict[str, Any] = orjson.loads(orjson.dumps(override))
            return copy
        index = self._index_of.get(batch_id)
        if removed or index is None:
            raise KeyError(batch_id)
        return self._generate(index, revision)

    def put_batch(self, raw: dict[str, Any], *, batch_id: str | None = None) -> None:
        """Add or replace a batch's full detail payload, keyed by raw["batch_params"]["id"].

        ``batch_id`` serves it under that id instead, whatever id (if any) the payload holds:
        a detail response without its own id, or with another batch's.
        """
        params = raw.get("batch_params")
        if batch_id is None:
            batch_id = params.get("id") if isinstance(params, dict) else None
        if not isinstance(params, dict) or not isinstance(batch_id, str) or not batch_id:
            raise ValueError(
                'put_batch needs raw["batch_params"] and a string id (its "id" or batch_id)'
            )
        stored: dict[str, Any] = orjson.loads(orjson.dumps(raw))  # our own copy, JSON-clean
        with self._lock:
            self._overrides[batch_id] = stored
            self._removed.discard(batch_id)

    def remove_batch(self, batch_id: str) -> None:
        """Make a batch vanish from the list and answer 404 for its detail; idempotent."""
        with self._lock:
            self._overrides.pop(batch_id, None)
            self._removed.add(batch_id)

    def served_batch(self, batch_id: str, revision: int) -> dict[str, Any] | None:
        """The batch's full detail payload at ``revision``, not copied (a stored one is the
        stored object itself: not to be changed); None when there is no such batch."""
        with self._lock:
            override = self._overrides.get(batch_id)
            removed = batch_id in self._removed
        index = self._index_of.get(batch_id)
        if override is not None:
            return override
        if removed or index is None:
            return None
        return self._generate(index, revision)

    def visible(self) -> list[tuple[datetime, str, str | None]]:
        """(created_at, batch_id, campaign_id) of every listed batch, ascending."""
        with self._lock:
            overrides = dict(self._overrides)
            hidden = self._removed | overrides.keys()
        rows = [
            (created, batch_id, self._campaign_for(index))
            for index, (created, batch_id) in enumerate(self._generated)
            if batch_id not in hidden
        ]
        for batch_id, raw in overrides.items():
            params = raw["batch_params"]
            created = _parse_timestamp(params.get("created_at"))
            rows.append((created, batch_id, params.get("campaign_id")))
        rows.sort(key=lambda row: (row[0], row[1]))
        return rows

    def list_entry(self, batch_id: str) -> dict[str, Any]:
        """The batch's entry in ``GET /v1/batches``: its id and a few of its batch_params."""
        with self._lock:
            override = self._overrides.get(batch_id)
        if override is not None:
            params = override["batch_params"]
        else:
            params = self._meta(self._index_of[batch_id]).params
        keys = ("campaign_id", "created_at", "label", "base_prompt", "endpoint_code", "call_params")
        return {"batch_id": batch_id} | {key: params.get(key) for key in keys}

    def _rng(self, index: int, stream: str) -> random.Random:
        # A string seed is hashed with SHA-512: stable across runs and PYTHONHASHSEED.
        return random.Random(f"{self.seed}:{index}:{stream}")

    def _campaign_for(self, index: int) -> str | None:
        return None if index % 3 == 0 else self._campaigns[index % 2]

    def _meta(self, index: int) -> _BatchMeta:
        rng = self._rng(index, "batch")
        batch_id = _uuid(rng)
        # Each batch falls in its own slice of the window, so index order is created_at order.
        position = (index + 0.1 + 0.8 * rng.random()) / self.batches
        created = _FIRST_BATCH_AT + (_LAST_BATCH_AT - _FIRST_BATCH_AT) * position
        max_duration = rng.choice((5, 10, 15, 30))
        call_params: dict[str, Any] = {
            "reduce_latency": rng.random() < 0.5,
            "voice_id": rng.randrange(4),
            "language": "eng",
            "max_duration": max_duration,
            "wait_for_greeting": rng.random() < 0.3,
        }
        if index % 2 == 1:
            call_params["request_data"] = {"your name": rng.choice(("Janessa", "Omar", "Lee"))}
        params: dict[str, Any] = {
            "id": batch_id,
            "campaign_id": self._campaign_for(index),
            "created_at": _format_timestamp(created, index),
            "label": rng.choice(_LABELS),
            "base_prompt": rng.choice(_PROMPTS),
            "endpoint_code": rng.choice(("api", "api", "web")),
            "call_params": call_params,
        }
        if index % 2 == 0:
            params["voice"] = rng.choice(("maya", "josh", "nat"))
        return _BatchMeta(index, batch_id, created, params, max_duration, _phone(rng))

    def _generate(self, index: int, revision: int) -> dict[str, Any]:
        """Build batch ``index``'s full detail payload at ``revision``."""
        meta = self._meta(index)
        old = index < self._old_batches
        newest = index == self.batches - 1
        rng = self._rng(index, "calls")
        n = self.calls_per_batch
        pending_from = n - max(1, n // 5) if newest and revision == 0 else n
        calls = [self._call(meta, rng, slot, pending=slot >= pending_from) for slot in range(n)]
        if revision > 0 and calls and self._changed_fraction > 0:
            self._revise(meta, calls, revision)

        raw: dict[str, Any] = {}
        if not old:
            unfinished = any(call["queue_status"] in _UNFINISHED for call in calls)
            raw["status"] = "in-progress" if unfinished else "completed"
        raw["batch_params"] = meta.params
        raw["call_data"] = calls
        raw["analysis"] = _analysis(
            calls,
            "c_id" if old else "call_id",
            counts_as_strings=index % 2 == 1,
            endpoints_as_strings=index % 3 == 1,
            errors_as_strings=index % 3 == 2,
        )
        if index % 4 == 3:
            raw["meta"] = {"region": "us-east-1", "api_version": "1.4.2"}
        return raw

    def _call(
        self, meta: _BatchMeta, rng: random.Random, slot: int, *, pending: bool = False
    ) -> dict[str, Any]:
        """Build call ``slot`` of a batch; its quirks depend on the slot, its values on ``rng``."""
        call_id = _uuid(rng)
        to = _phone(rng)
        created = meta.created + timedelta(seconds=120 + slot * 2.5 + 2 * rng.random())
        length = round(meta.max_duration * rng.random() ** 2, 2)
        errored = slot % 10 == 3
        queue_status = "completed" if slot % 3 == 2 else "complete"
        error: str | None = None
        if errored:
            queue_status = "call_error" if slot % 20 == 3 else "complete_error"
            error = rng.choice(_ERRORS).format(to=to)
            length = 0.0
        transcripts: list[dict[str, Any]] = []
        if not errored and (slot * _GOLDEN) % 1.0 < self._transcript_ratio:
            transcripts = self._transcript(meta, rng, slot, call_id, created)

        call: dict[str, Any] = {
            "status": "failed" if errored else "completed",
            "corrected_duration": str(round(length * 60)),
            "end_at": None if errored else _end_at(created, length, slot),
            ("c_id" if meta.index < self._old_batches else "call_id"): call_id,
            "to": to,
            "from": meta.from_number,
            "completed": not errored,
            "created_at": _format_timestamp(created, slot),
            "queue_status": queue_status,
            "endpoint_url": "https://api.bland.ai" if slot % 9 == 4 else "api.bland.ai",
            "max_duration": meta.max_duration,
            "error_message": error,
            "answered_by": None,
            "request_data": {"phone_number": to, "wait": False, "language": "ENG"},
            "transcripts": transcripts,
            "call_length": length,
        }
        answered_by = _answered_by(slot + meta.index)
        if answered_by is _MISSING:
            del call["answered_by"]
        else:
            call["answered_by"] = answered_by
        if slot % 11 == 10:
            del call["corrected_duration"]
        elif slot % 7 == 6:
            call["corrected_duration"] = round(length * 60)
        if slot % 5 == 1:
            call["price"] = round(0.09 * length, 4)
        elif slot % 5 == 2:
            call["summary"] = "The customer asked to be called back next week."
        elif slot % 5 == 4:
            call["variables"] = {"to": to, "language": "ENG", "timezone": "America/New_York"}
        if pending:
            started = slot % 2 == 1
            call.update(
                status="in-progress" if started else "queued",
                queue_status="started" if started else "queued",
                completed=False,
                end_at=None,
                error_message=None,
                transcripts=[],
                call_length=0.0,
            )
            if "answered_by" in call:
                call["answered_by"] = None
            if "corrected_duration" in call:
                is_text = isinstance(call["corrected_duration"], str)
                call["corrected_duration"] = "0" if is_text else 0
        return call

    def _transcript(
        self, meta: _BatchMeta, rng: random.Random, slot: int, call_id: str, created: datetime
    ) -> list[dict[str, Any]]:
        count = 2 + int(rng.random() * (_MAX_TRANSCRIPT_LINES - 1))
        first_id = _TRANSCRIPT_ID_BASE + _pair(meta.index, slot) * _MAX_TRANSCRIPT_LINES
        lines = []
        for line in range(count):
            if line == 0 and slot % 5 == 0:
                user, text = "robot", " Please hold while we connect your call."
            elif line == count - 1 and slot % 4 == 2:
                user, text = "agent-action", "Ended the call"
            elif line % 2 == 0:
                user, text = "assistant", rng.choice(_ASSISTANT_LINES)
            else:
                user, text = "user", rng.choice(_USER_LINES)
            at = created + timedelta(seconds=5 + 6 * line + rng.random())
            lines.append(
                {
                    "id": first_id + line,
                    "created_at": _format_timestamp(at, slot + line),
                    "text": text,
                    "user": user,
                    "c_id": call_id,
                }
            )
        return lines

    def _revise(self, meta: _BatchMeta, calls: list[dict[str, Any]], revision: int) -> None:
        """Apply revision ``revision``'s changes to a batch's base calls, in place."""
        rng = self._rng(meta.index, f"rev:{revision}")
        n = len(calls)
        vanished = rng.randrange(n)
        count = min(n - 1, max(1, round(self._changed_fraction * n)))
        for pick in rng.sample(range(n - 1), count):
            _change_call(calls[pick if pick < vanished else pick + 1], rng, meta.max_duration)
        del calls[vanished]
        # The new call takes a slot no base call uses, so its transcript ids stay unique.
        slot = self.calls_per_batch + revision - 1
        calls.append(self._call(meta, self._rng(meta.index, f"new:{revision}"), slot))


def _change_call(call: dict[str, Any], rng: random.Random, max_duration: int) -> None:
    """Give one call different values, as a later look at the same call would."""
    was_human = call.get("answered_by") in ("human", ["human"])
    call["answered_by"] = "voicemail" if was_human else "human"
    if call["transcripts"]:
        call["transcripts"].pop()
    if call["error_message"] is not None and rng.random() < 0.5:
        call.update(status="completed", completed=True, error_message=None, queue_status="complete")
    if call["error_message"] is None:
        call["call_length"] = round(min(max_duration, call["call_length"] + 0.01 + rng.random()), 2)
        if call["queue_status"] in ("complete", "completed"):
            call["queue_status"] = "completed" if call["queue_status"] == "complete" else "complete"
        created = datetime.fromisoformat(call["created_at"]).astimezone(UTC)
        call["end_at"] = _end_at(created, call["call_length"], rng.randrange(4))
    else:
        call["error_message"] += " (retried)"
    if "corrected_duration" in call:
        seconds = round(call["call_length"] * 60)
        is_text = isinstance(call["corrected_duration"], str)
        call["corrected_duration"] = str(seconds) if is_text else seconds


def _analysis(
    calls: list[dict[str, Any]],
    id_key: str,
    *,
    counts_as_strings: bool,
    endpoints_as_strings: bool,
    errors_as_strings: bool,
) -> dict[str, Any]:
    """Summarise calls the way the API's analysis block does, in one of its dialects."""
    count: type[int] | type[str] = str if counts_as_strings else int
    queue_statuses = Counter(call["queue_status"] for call in calls)
    in_progress = sum(queue_statuses[status] for status in _UNFINISHED)
    lengths = [call["call_length"] for call in calls]
    nonzero = [length for length in lengths if length >= 1 / 60]
    summary = dict.fromkeys(_BUCKET_LABELS, 0)
    for length in lengths:
        summary[_BUCKET_LABELS[bisect.bisect_right(_BUCKET_BOUNDS, length)]] += 1
    endpoints = Counter(call["endpoint_url"] for call in calls)
    errors: list[Any] = [
        call["error_message"]
        if errors_as_strings
        else {"call_id": call[id_key], "error_message": call["error_message"]}
        for call in calls
        if call["error_message"] is not None
    ]
    return {
        "total_calls": count(len(calls)),
        "completed_calls": count(len(calls) - in_progress),
        "in_progress_calls": count(in_progress),
        "queue_statuses": dict(queue_statuses),
        "call_lengths": {
            "average": round(sum(lengths) / len(lengths), 2) if lengths else 0,
            "average_nonzero": round(sum(nonzero) / len(nonzero), 2) if nonzero else 0,
            "summary": summary,
            "all": lengths,
        },
        "call_ids": [call[id_key] for call in calls],
        "error_messages": errors,
        "endpoints": {url: str(n) if endpoints_as_strings else n for url, n in endpoints.items()},
    }


def _answered_by(position: int) -> object:
    choice = position % _ANSWERED_BY_ROTATION
    if choice < 4:
        return ("human", "voicemail", "unknown", "no-answer")[choice]
    return (["human"], None, _MISSING)[choice - 4]


def _format_timestamp(moment: datetime, style: int) -> str:
    """Render a UTC datetime in one of the four shapes the API has been seen to send."""
    style %= 4
    if style == 3:
        return moment.astimezone(_EASTERN).isoformat(timespec="microseconds")
    text = moment.isoformat(timespec="microseconds")
    if style == 0:
        return text  # 2023-12-16T00:17:22.383682+00:00
    if style == 1:
        return text[:25] + text[26:]  # 2023-12-16T00:17:22.38368+00:00
    return text[:23] + "Z"  # 2023-12-16T00:17:22.383Z


def _end_at(created: datetime, length_minutes: float, style: int) -> str:
    return _format_timestamp(created + timedelta(minutes=length_minutes, seconds=8), style + 1)


def _parse_timestamp(value: object) -> datetime:
    """Order key for a stored batch's created_at; what cannot be read sorts first."""
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"


def _campaign_id(seed: int, which: int) -> str:
    rng = random.Random(f"{seed}:campaign:{which}")
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(24))


def _phone(rng: random.Random) -> str:
    return f"+1555{rng.randrange(10_000_000):07d}"


def _pair(a: int, b: int) -> int:
    """Cantor's pairing: a distinct natural number for every pair of naturals."""
    return (a + b) * (a + b + 1) // 2 + b

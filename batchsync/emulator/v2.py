"""The emulator's v2 side: v2 batches, their logs, and the calls API, with their quirks.

Routes (answered by :meth:`V2Account.route`, reached through ``Emulator.handle``):

- ``GET /v2/batches/list?take=&skip=``: ``{data: [...], errors: null}``, oldest first;
- ``GET /v2/batches/{id}``: the batch under ``data``, no status, no calls;
- ``GET /v2/batches/{id}/logs?take=&skip=&direction=``: newest first unless ``direction=asc``;
- ``GET /v1/calls?batch_id=&from=&to=&limit=&ascending=``: ``{total_count, count, calls}``;
- ``GET /v1/calls/{call_id}``: one call's detail, no envelope.

Fault targets: ``*v2list*`` (the v2 list), ``v2:ID`` or ``*v2*`` (``/v2/batches/{id}``: a
v1 batch's own faults, queued under its bare id, are left for the v1 API),
``ID/logs`` or ``*logs*``, ``ID/calls`` or ``*calls*`` (the calls list of batch ID), a
call id or ``*call*`` (a call's detail).

The quirks of the notes, at fixed positions of a generated account: ``base_prompt`` is a
JSON-encoded string, except in v2 batches 2, 5, 8, ... where it is text that is not JSON;
``pathway_tags`` are strings in even calls and ``{name, color}`` objects in odd ones, and
the calls list gives them as bare names (another shape than the detail's for odd calls);
``corrected_duration`` is a string of seconds; the detail says ``queue_status``
``completed`` where the list says ``complete``; v2 batch 1 sends no ``total_count``; the
newest v2 batch is still ``in_progress`` with its last calls queued; the others hold a
``complete`` event. Tests change an account through its plain data (``batches``).
"""

from __future__ import annotations

import random
import urllib.parse
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
import orjson

LIST_TARGET: Final = "*v2list*"
CALLS_PAGE_MAX: Final = 1000
_FIRST_AT: Final = datetime(2025, 6, 1, tzinfo=UTC)
_TASKS: Final = (
    "Call {{name}} to confirm their appointment.",
    "Remind {{name}} that their order ships tomorrow.",
    "Ask {{name}} how their first week went.",
)


def _json(status: int, payload: object) -> httpx.Response:
    return httpx.Response(
        status, content=orjson.dumps(payload), headers={"content-type": "application/json"}
    )


def _stamp(moment: datetime, style: int) -> str:
    if style % 2:
        return moment.isoformat(timespec="microseconds")
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class V2Batch:
    """One v2 batch as the API holds it: metadata, logs (oldest first) and full call details."""

    batch: dict[str, Any]
    logs: list[dict[str, Any]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    send_total_count: bool = True
    # Calls the calls list leaves out while counting them in total_count (a short list).
    hidden_calls: int = 0
    # The most log entries the logs endpoint answers a page, whatever ``take`` asks (None:
    # ``take``); Bland's own limit is undocumented.
    logs_page_max: int | None = None

    @property
    def batch_id(self) -> str:
        return str(self.batch["id"])

    def complete(self, at: datetime | None = None) -> None:
        """Finish the batch: every queued call completes and a ``complete`` event is logged."""
        for call in self.calls:
            if call.get("queue_status") in ("queued", "started", "new", "allocated"):
                call.update(queue_status="completed", status="completed", completed=True)
        failed = sum(1 for call in self.calls if call.get("error_message"))
        moment = at or _FIRST_AT + timedelta(days=400)
        self.logs.append(
            {
                "id": str(uuid.UUID(int=random.Random(self.batch_id).getrandbits(128))),
                "batch_id": self.batch_id,
                "org_id": self.batch.get("user_id"),
                "event_type": "complete",
                "timestamp": _stamp(moment, 0),
                "payload": {
                    "calls_total": len(self.calls),
                    "calls_failed": failed,
                    "calls_successful": len(self.calls) - failed,
                },
            }
        )


class V2Account:
    """The v2 batches of one emulated account, deterministic in ``seed``."""

    def __init__(self, *, seed: int = 0, batches: int = 0, calls_per_batch: int = 5) -> None:
        self.batches: dict[str, V2Batch] = {}
        for index in range(batches):
            v2 = _generate(seed, index, calls_per_batch, newest=index == batches - 1)
            self.batches[v2.batch_id] = v2
        # Where each call was last seen: (batch id, position). A hint, checked on every use,
        # since tests change ``batches`` by hand; without it each detail request would scan
        # every call of the account (quadratic over a benchmark's thousands of details).
        self._call_index: dict[str, tuple[str, int]] = {}

    def call(self, call_id: str) -> dict[str, Any] | None:
        """The detail of a call of any v2 batch, as ``batches`` holds it now; None if none."""
        found = self._indexed_call(call_id)
        if found is None:
            index: dict[str, tuple[str, int]] = {}
            for batch_id, v2 in self.batches.items():
                for position, call in enumerate(v2.calls):
                    index.setdefault(str(call["call_id"]), (batch_id, position))  # first wins
            self._call_index = index
            found = self._indexed_call(call_id)
        return found

    def _indexed_call(self, call_id: str) -> dict[str, Any] | None:
        batch_id, position = self._call_index.get(call_id, ("", -1))
        v2 = self.batches.get(batch_id)
        if v2 is None or not 0 <= position < len(v2.calls):
            return None
        call = v2.calls[position]
        return call if call["call_id"] == call_id else None

    def targets(self, path: str, params: httpx.QueryParams) -> tuple[str, ...] | None:
        """The fault targets of a request to ``path``, or None when it is no v2 route."""
        if path == "/v2/batches/list":
            return (LIST_TARGET,)
        if path.startswith("/v2/batches/"):
            rest = path[len("/v2/batches/") :]
            batch_id = urllib.parse.unquote(rest.removesuffix("/logs"))
            if rest.endswith("/logs"):
                return (f"{batch_id}/logs", "*logs*")
            return (f"v2:{batch_id}", "*v2*")
        if path == "/v1/calls":
            return (f"{params.get('batch_id')}/calls", "*calls*")
        if path.startswith("/v1/calls/"):
            return (urllib.parse.unquote(path[len("/v1/calls/") :]), "*call*")
        return None

    def route(self, path: str, params: httpx.QueryParams) -> httpx.Response:
        """Answer a request to one of the v2 routes (see :meth:`targets`)."""
        if path == "/v2/batches/list":
            take = _int(params.get("take"), 10)
            skip = _int(params.get("skip"), 0)
            ordered = sorted(self.batches.values(), key=lambda b: str(b.batch["created_at"]))
            page = [_list_entry(b) for b in ordered[skip : skip + take]]
            return _json(200, {"data": page, "errors": None})
        if path.startswith("/v2/batches/"):
            rest = path[len("/v2/batches/") :]
            batch_id = urllib.parse.unquote(rest.removesuffix("/logs"))
            v2 = self.batches.get(batch_id)
            if v2 is None:
                error = {"error": "NOT_FOUND", "message": "Batch not found"}
                return _json(404, {"data": None, "errors": [error]})
            if not rest.endswith("/logs"):
                return _json(200, {"data": dict(v2.batch), "errors": None})
            logs = list(v2.logs)
            if params.get("direction", "desc") != "asc":
                logs.reverse()
            take = _int(params.get("take"), 10)
            if v2.logs_page_max is not None:
                take = min(take, v2.logs_page_max)
            skip = _int(params.get("skip"), 0)
            return _json(200, {"data": logs[skip : skip + take], "errors": None})
        if path == "/v1/calls":
            return self._calls_list(params)
        call = self.call(urllib.parse.unquote(path[len("/v1/calls/") :]))
        if call is None:
            return _json(404, {"status": "error", "message": "Call not found"})
        return _json(200, call)

    def _calls_list(self, params: httpx.QueryParams) -> httpx.Response:
        v2 = self.batches.get(params.get("batch_id") or "")
        calls = [] if v2 is None else v2.calls[: len(v2.calls) - v2.hidden_calls]
        if params.get("ascending", "false") != "true":
            calls = list(reversed(calls))
        limit = min(_int(params.get("limit"), CALLS_PAGE_MAX), CALLS_PAGE_MAX)
        start = _int(params.get("from"), 0)
        stop = _int(params.get("to"), start + limit)
        page = [_list_call(call) for call in calls[start:stop][:limit]]
        body: dict[str, Any] = {"count": len(page), "calls": page}
        if v2 is None or v2.send_total_count:
            body = {"total_count": 0 if v2 is None else len(v2.calls), **body}
        return _json(200, body)


def _int(text: str | None, default: int) -> int:
    return int(text) if text is not None and text.isdigit() else default


def _list_entry(v2: V2Batch) -> dict[str, Any]:
    return dict(v2.batch)


_LIST_KEYS: Final = ("call_id", "created_at", "call_length", "to", "from", "completed",
                     "queue_status", "error_message", "answered_by", "batch_id", "status",
                     "pathway_tags")  # fmt: skip


def _list_call(call: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {key: call.get(key) for key in _LIST_KEYS if key in call}
    if entry.get("queue_status") == "completed":
        entry["queue_status"] = "complete"  # the list and the detail spell it differently
    tags = entry.get("pathway_tags")
    if isinstance(tags, list):  # the list names the tags the detail may send as objects
        entry["pathway_tags"] = [t.get("name") if isinstance(t, dict) else t for t in tags]
    return entry


def _generate(seed: int, index: int, calls_per_batch: int, *, newest: bool) -> V2Batch:
    rng = random.Random(f"{seed}:v2:{index}")

    def uid() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    batch_id, org_id = uid(), str(uuid.UUID(int=random.Random(seed).getrandbits(128), version=4))
    created = _FIRST_AT + timedelta(days=7 * index, seconds=rng.randrange(86_400))
    task = _TASKS[index % len(_TASKS)]
    properties = {"record": True, "task": task, "voice": "maya", "max_duration": 5}
    base_prompt = f"{task} {{not json" if index % 3 == 2 else orjson.dumps(properties).decode()
    from_number = f"+1555555{rng.randrange(10_000):04d}"
    batch = {
        "id": batch_id,
        "user_id": org_id,
        "base_prompt": base_prompt,
        "created_at": _stamp(created, 0),
        "call_objects": [],
        "description": f"Emulated v2 batch {index}" if index else "Untitled Batch",
    }
    calls = []
    line_id = 7_000_000 + 1_000 * index
    for position in range(calls_per_batch):
        call_id = uid()
        at = created + timedelta(seconds=2 + position)
        to_number = f"+1555010{rng.randrange(10_000):04d}"
        queued = newest and position >= calls_per_batch - max(1, calls_per_batch // 5)
        failed = not queued and position % 4 == 3
        seconds = 0 if failed or queued else rng.randrange(5, 300)
        lines = []
        if not failed and not queued:
            for turn in range(2):
                line_id += 1
                lines.append(
                    {
                        "id": line_id,
                        "created_at": _stamp(at + timedelta(seconds=5 + turn), turn),
                        "text": "Hello?" if turn == 0 else " Hi, this is a test call.",
                        "user": "user" if turn == 0 else "assistant",
                        "c_id": call_id,
                    }
                )
        tags: list[Any] = (
            ["Greeting"] if position % 2 == 0 else [{"name": "Greeting", "color": "#3b82f6"}]
        )
        calls.append(
            {
                "call_id": call_id,
                "c_id": call_id,
                "batch_id": batch_id,
                "call_length": round(seconds / 60, 4),
                "to": to_number,
                "from": from_number,
                "completed": not queued,
                "inbound": False,
                "created_at": _stamp(at, position),
                "started_at": None if queued else _stamp(at + timedelta(seconds=3), 1),
                "end_at": _stamp(at + timedelta(minutes=5), 0),
                "corrected_duration": str(seconds),
                "queue_status": "queued" if queued else ("call_error" if failed else "completed"),
                "status": "queued" if queued else ("failed" if failed else "completed"),
                "endpoint_url": "api.prod.bland.ai",
                "max_duration": 5,
                "error_message": f"Call to {to_number} was not answered" if failed else None,
                "answered_by": None if queued else ("no-answer" if failed else "human"),
                "call_ended_by": None if queued or failed else "ASSISTANT",
                "record": True,
                "recording_url": None
                if queued or failed
                else f"https://example.invalid/r/{call_id}.mp3",
                "summary": None if queued else f"Call {position} of batch {index}.",
                "price": None if queued else round(0.09 * seconds / 60, 4),
                "variables": {"to": to_number, "from": from_number, "position": position},
                "metadata": {"customer": f"c-{position}"} if position % 3 == 0 else {},
                "request_data": {"phone_number": to_number, "record": True},
                "analysis": {"interested": position % 2 == 0} if position % 5 == 0 else None,
                "pathway_id": None,
                "pathway_version": None,
                "pathway_tags": tags,
                "disposition_tag": None
                if queued
                else ("NO_ANSWER" if failed else "COMPLETED_ACTION"),
                "transferred_to": None,
                "transferred_at": None,
                "is_canary": False,
                "concatenated_transcript": " \n ".join(
                    f"{line['user']}: {line['text']}" for line in lines
                ),
                "transcripts": lines,
            }
        )
    logs = [
        {
            "id": uid(),
            "batch_id": batch_id,
            "org_id": org_id,
            "event_type": "lifecycle",
            "timestamp": _stamp(created + timedelta(seconds=1), 1),
            "payload": {
                "message": f"Requested: {calls_per_batch}. Validated: {calls_per_batch}.",
                "state_change": "validating",
            },
        },
        {
            "id": uid(),
            "batch_id": batch_id,
            "org_id": org_id,
            "event_type": "lifecycle",
            "timestamp": _stamp(created + timedelta(seconds=2), 0),
            "payload": {
                "message": f"Dispatched: {calls_per_batch}. CPS: 1.12.",
                "state_change": "in_progress",
            },
        },
    ]
    v2 = V2Batch(batch, logs, calls, send_total_count=index != 1)
    if not newest:
        v2.complete(created + timedelta(hours=1))
    return v2


def v1_call_detail(call: dict[str, Any], batch_id: str) -> dict[str, Any]:
    """A v1 call as ``GET /v1/calls/{id}`` sends it: its fields, the id under ``call_id``,
    and the detail fields, deterministic in the call."""
    call_id = str(call.get("call_id") or call.get("c_id"))
    rng = random.Random(f"v1-detail:{call_id}")
    length = call.get("call_length")
    minutes = float(length) if isinstance(length, int | float) else 0.0
    detail = {key: value for key, value in call.items() if key not in ("c_id", "transcripts")}
    detail.update(
        call_id=call_id,
        c_id=call_id,
        batch_id=batch_id,
        price=round(0.09 * minutes, 4),
        summary=f"Summary of call {call_id[:8]}.",
        recording_url=None,
        inbound=False,
        call_ended_by=rng.choice(["ASSISTANT", "USER"]),
        disposition_tag=rng.choice(["COMPLETED_ACTION", "NO_ANSWER"]),
        pathway_tags=[],
        variables={"to": call.get("to")},
        metadata={},
        analysis=None,
        transcripts=call.get("transcripts") or [],
    )
    return detail

"""The emulator's HTTP side: :class:`Emulator` answers each request as the Bland API would.

Auth first, then the queued or lasting faults, then the route: ``GET /v1/batches`` and
``GET /v1/batches/{batch_id}`` answered here from :mod:`batchsync.emulator.data`, the v2 and
calls routes handed to :mod:`batchsync.emulator.v2`. The fault kinds, the list modes and the
ways to reach the emulator (in-process transport, loopback server) are described in the
package docstring (:mod:`batchsync.emulator`).
"""

from __future__ import annotations

import random
import threading
import time
import urllib.parse
from collections import deque
from typing import Any, Final

import httpx
import orjson

from batchsync.emulator.data import V1Account
from batchsync.emulator.faults import (
    Fault,
    ListOrder,
    _ArmedFault,
    _BadRequest,
    _Refused,
)
from batchsync.emulator.server import EmulatorServer
from batchsync.emulator.v2 import LIST_TARGET as V2_LIST_TARGET
from batchsync.emulator.v2 import V2Account, v1_call_detail

# Faults that change the body of a normal answer rather than replace the answer.
_BODY_FAULTS: Final = frozenset({"truncated", "wrong_encoding", "lone_surrogate", "bad_escape",
                                 "huge_number"})  # fmt: skip
# Placeholders swapped for raw JSON text that orjson would never write.
_ESCAPE_MARK: Final = "@@emulator-escape@@"
_NUMBER_MARK: Final = "@@emulator-number@@"

_JSON: Final = "application/json"
_AUTH_FAILURE: Final = {
    "data": None,
    "errors": [{"error": "AUTH_FAILURE", "message": "Unauthorized"}],
}
_WRONG_SHAPE_LIST: Final = {"status": "success", "batches": {"x": 1}}
_WRONG_SHAPE_DETAIL: Final = {
    "status": "success",
    "batch_params": "oops",
    "call_data": {"not": "a list"},
}
_BAD_GATEWAY_HTML: Final = b"<html>502 Bad Gateway</html>"


class Emulator:
    """The Bland API of one account (v1 batches from :class:`V1Account`, v2 batches and
    calls from :class:`V2Account`) at a revision, with faults on request."""

    LIST_TARGET = "*list*"

    def __init__(
        self,
        *,
        seed: int = 0,
        batches: int = 5,
        calls_per_batch: int = 20,
        api_key: str = "emulator-key",
        transcript_ratio: float = 0.5,
        revision: int = 0,
        changed_fraction: float = 0.1,
        page_cap: int | None = None,
        list_order: ListOrder = "asked",
        v2_batches: int = 0,
        v2_calls_per_batch: int = 5,
    ) -> None:
        if batches < 0 or calls_per_batch < 0 or revision < 0:
            raise ValueError("batches, calls_per_batch and revision must not be negative")
        if not 0.0 <= transcript_ratio <= 1.0 or not 0.0 <= changed_fraction <= 1.0:
            raise ValueError("transcript_ratio and changed_fraction must lie in [0, 1]")
        self.api_key = api_key
        self.revision = revision
        # At most this many batches per list page, whatever ``limit`` asks (None: no cap).
        self.page_cap = page_cap
        # "asked" follows ``ascending``; "descending" and "shuffled" ignore it.
        self.list_order: ListOrder = list_order
        # After this many batch details served, every request is refused (None: never).
        self.down_after: int | None = None
        self._details_served = 0
        self.requests: list[httpx.Request] = []
        self._seed = seed
        self._lock = threading.Lock()
        self._faults: dict[str, deque[_ArmedFault]] = {}
        # The account's v1 batches and their calls (see batchsync.emulator.data).
        self.v1 = V1Account(
            seed=seed,
            batches=batches,
            calls_per_batch=calls_per_batch,
            transcript_ratio=transcript_ratio,
            changed_fraction=changed_fraction,
        )
        # Fields the calls API's detail of a v1 call sends besides (or instead of) the ones
        # made from the batch's call, by call id: data only that endpoint quotes.
        self.call_detail_fields: dict[str, dict[str, Any]] = {}
        # The account's v2 batches and their calls (see batchsync.emulator.v2).
        self.v2 = V2Account(seed=seed, batches=v2_batches, calls_per_batch=v2_calls_per_batch)

    def __repr__(self) -> str:
        return (
            f"Emulator(seed={self._seed}, batches={self.v1.batches}, "
            f"calls_per_batch={self.v1.calls_per_batch}, revision={self.revision})"
        )

    # -- the data ---------------------------------------------------------------------------

    def batch_ids(self) -> list[str]:
        """Return every v1 batch id, ascending by created_at."""
        return self.v1.batch_ids()

    def raw_batch(self, batch_id: str) -> dict[str, Any]:
        """Return a fresh copy of a batch's full detail payload; KeyError if there is none."""
        return self.v1.raw_batch(batch_id, self.revision)

    def put_batch(self, raw: dict[str, Any], *, batch_id: str | None = None) -> None:
        """Add or replace a batch's full detail payload, keyed by raw["batch_params"]["id"].

        ``batch_id`` serves it under that id instead, whatever id (if any) the payload holds:
        a detail response without its own id, or with another batch's.
        """
        self.v1.put_batch(raw, batch_id=batch_id)

    def remove_batch(self, batch_id: str) -> None:
        """Make a batch vanish from the list and answer 404 for its detail; idempotent."""
        self.v1.remove_batch(batch_id)

    # -- faults and bookkeeping -------------------------------------------------------------

    def inject(self, target: str, fault: Fault) -> None:
        """Queue a fault for a batch id, "*" (every batch) or "*list*"; each applies in turn.

        ``api_down``, ``page_cap`` and ``unsorted`` are states rather than queued answers:
        they last from now on, whatever the target and count.
        """
        if fault.kind == "api_down":
            with self._lock:
                self.down_after = self._details_served + fault.after
            return
        if fault.kind == "page_cap":
            self.page_cap = fault.size
            return
        if fault.kind == "unsorted":
            self.list_order = fault.order
            return
        with self._lock:
            self._faults.setdefault(target, deque()).append(_ArmedFault(fault, fault.times))

    def request_count(self, path: str | None = None) -> int:
        """Count the requests seen, all of them or those to exactly this URL path."""
        with self._lock:
            if path is None:
                return len(self.requests)
            return sum(1 for request in self.requests if request.url.path == path)

    def _take_fault(self, targets: tuple[str, ...]) -> Fault | None:
        with self._lock:
            for target in targets:
                queue = self._faults.get(target)
                if not queue:
                    continue
                armed = queue[0]
                if armed.remaining > 0:
                    armed.remaining -= 1
                    if armed.remaining == 0:
                        queue.popleft()
                return armed.fault
        return None

    # -- HTTP ---------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one request as the Bland API would: auth, then faults, then the route.

        Raises _Refused when the API is down (``api_down``): there is no answer to give.
        """
        with self._lock:
            self.requests.append(request)
            if self.down_after is not None and self._details_served >= self.down_after:
                raise _Refused
        if request.headers.get("authorization") != self.api_key:
            return _json_response(401, _AUTH_FAILURE)
        if request.method != "GET":
            return _json_response(405, _error("Method not allowed"), {"allow": "GET"})
        # The raw path, so that an id holding an encoded '/' (or '?', '#', '%') stays whole.
        path = request.url.raw_path.split(b"?", 1)[0].decode("ascii").rstrip("/")
        prefix = "/v1/batches"
        v2_targets = self.v2.targets(path, request.url.params)
        if v2_targets is not None:
            return self._handle_v2(path, request.url.params, v2_targets)
        if path == prefix:
            batch_id = None
            targets: tuple[str, ...] = (self.LIST_TARGET,)
        elif path.startswith(prefix + "/") and "/" not in path[len(prefix) + 1 :]:
            try:
                batch_id = urllib.parse.unquote_to_bytes(path[len(prefix) + 1 :]).decode()
            except UnicodeDecodeError:
                return _json_response(404, _error("Batch not found"))
            targets = (batch_id, "*")
        else:
            return _json_response(404, _error("Not found"))

        fault = self._take_fault(targets)
        if fault is not None and fault.kind not in _BODY_FAULTS:
            if fault.kind == "slow":
                time.sleep(fault.delay)
            else:
                return _fault_response(fault, is_list=batch_id is None)
        try:
            if batch_id is None:
                response = self._list_response(request.url.params)
            else:
                response = self._detail_response(batch_id, request.url.params)
        except _BadRequest as exc:
            return _json_response(400, _error(str(exc)))
        if batch_id is not None and response.status_code == 200:
            with self._lock:
                self._details_served += 1
        if fault is not None and fault.kind in _BODY_FAULTS and response.status_code == 200:
            return _spoiled(response, fault)
        return response

    def _handle_v2(
        self, path: str, params: httpx.QueryParams, targets: tuple[str, ...]
    ) -> httpx.Response:
        fault = self._take_fault(targets)
        is_list = targets[0] == V2_LIST_TARGET
        if fault is not None and fault.kind not in _BODY_FAULTS:
            if fault.kind == "slow":
                time.sleep(fault.delay)
            else:
                return _fault_response(fault, is_list=is_list)
        response = self.v2.route(path, params)
        if response.status_code == 404 and path.startswith("/v1/calls/"):
            response = self._v1_call_detail(urllib.parse.unquote(path[len("/v1/calls/") :]))
        if "*v2*" in targets and response.status_code == 200:
            with self._lock:
                self._details_served += 1
        if fault is not None and fault.kind in _BODY_FAULTS and response.status_code == 200:
            return _spoiled(response, fault)
        return response

    def _v1_call_detail(self, call_id: str) -> httpx.Response:
        """The calls API's detail of a v1 batch's call: the call as the batch gives it,
        with the detail fields (price, summary, ...) that only this endpoint sends."""
        for batch_id in self.batch_ids():
            raw = self.raw_batch(batch_id)
            for call in raw.get("call_data") or ():
                if isinstance(call, dict) and (call.get("call_id") or call.get("c_id")) == call_id:
                    detail = v1_call_detail(call, batch_id)
                    detail.update(self.call_detail_fields.get(call_id, {}))
                    return _json_response(200, detail)
        return _json_response(404, _error("Call not found"))

    def transport(self) -> httpx.MockTransport:
        """Mount the emulator in-process, for httpx.Client or httpx.AsyncClient."""

        def handle(request: httpx.Request) -> httpx.Response:
            try:
                return self.handle(request)
            except _Refused:
                raise httpx.ConnectError(
                    "[Errno 111] Connection refused", request=request
                ) from None

        return httpx.MockTransport(handle)

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> EmulatorServer:
        """Serve over HTTP on a loopback address in a daemon thread; port 0 picks a free port."""
        return EmulatorServer(self, host, port)

    def _list_response(self, params: httpx.QueryParams) -> httpx.Response:
        start = _int_param(params, "from") or 0
        stop = _int_param(params, "to")
        limit = _int_param(params, "limit")
        ascending = _bool_param(params, "ascending", default=False)
        campaign = params.get("campaign_id")

        ordered = self.v1.visible()
        if self.list_order == "shuffled":
            random.Random(f"{self._seed}:list-order").shuffle(ordered)
        elif self.list_order == "descending" or not ascending:
            ordered.reverse()
        if campaign is not None:
            ordered = [row for row in ordered if row[2] == campaign]
        page = ordered[start:stop][: 1000 if limit is None else limit]
        if self.page_cap is not None:
            page = page[: self.page_cap]
        batches = [self.v1.list_entry(batch_id) for _, batch_id, _ in page]
        return _json_response(200, {"status": "success", "batches": batches})

    def _detail_response(self, batch_id: str, params: httpx.QueryParams) -> httpx.Response:
        include_calls = _bool_param(params, "include_calls", default=True)
        include_transcripts = _bool_param(params, "include_transcripts", default=True)
        include_analysis = _bool_param(params, "include_analysis", default=True)
        raw = self.v1.served_batch(batch_id, self.revision)
        if raw is None:
            return _json_response(404, _error("Batch not found"))

        body = {key: value for key, value in raw.items() if key not in ("call_data", "analysis")}
        if include_calls and "call_data" in raw:
            calls = raw["call_data"]
            if not include_transcripts and isinstance(calls, list):
                calls = [
                    _without(call, "transcripts") if isinstance(call, dict) else call
                    for call in calls
                ]
            body["call_data"] = calls
        if include_analysis and "analysis" in raw:
            body["analysis"] = raw["analysis"]
        return _json_response(200, body)


def _without(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k != key}


def _error(message: str) -> dict[str, Any]:
    return {"status": "error", "message": message}


def _json_response(
    status: int, payload: object, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(
        status, content=orjson.dumps(payload), headers={"content-type": _JSON, **(headers or {})}
    )


def _fault_response(fault: Fault, *, is_list: bool) -> httpx.Response:
    if fault.kind == "rate_limit":
        headers = {} if fault.retry_after is None else {"retry-after": fault.retry_after}
        return _json_response(429, _error("Rate limit exceeded"), headers)
    if fault.kind == "server_error":
        return _json_response(fault.status, _error("Internal server error"))
    if fault.kind == "invalid_json":
        return httpx.Response(200, content=_BAD_GATEWAY_HTML, headers={"content-type": "text/html"})
    if fault.kind == "wrong_shape":
        return _json_response(200, _WRONG_SHAPE_LIST if is_list else _WRONG_SHAPE_DETAIL)
    if fault.kind == "not_found":
        return _json_response(404, _error("Not found" if is_list else "Batch not found"))
    raise AssertionError(f"{fault.kind} faults change the normal answer, they do not replace it")


def _spoiled(response: httpx.Response, fault: Fault) -> httpx.Response:
    """A normal 200 answer with its body broken the way ``fault`` says."""
    content = response.content
    if fault.kind == "truncated":
        half = content[: len(content) // 2]
        return httpx.Response(200, content=half, headers={"content-type": _JSON})
    if fault.kind == "wrong_encoding":
        # A stream, not content=: httpx would try (and fail) to gunzip content= at once.
        headers = {"content-type": _JSON, "content-encoding": "gzip"}
        return httpx.Response(200, stream=httpx.ByteStream(content), headers=headers)
    raw = orjson.loads(content)
    if not isinstance(raw, dict):
        return response
    if fault.kind == "huge_number":
        calls = raw.get("call_data")
        if isinstance(calls, list) and calls and isinstance(calls[0], dict):
            calls[0]["call_length"] = _NUMBER_MARK
        else:
            params = raw.setdefault("batch_params", {})
            params.setdefault("call_params", {})["max_duration"] = _NUMBER_MARK
        body = orjson.dumps(raw).replace(f'"{_NUMBER_MARK}"'.encode(), b"1e400")
    else:
        escape = b"\\ud800" if fault.kind == "lone_surrogate" else b"\\uZZZZ"
        params = raw.setdefault("batch_params", {})
        params["label"] = f"{params.get('label') or ''} {_ESCAPE_MARK}"
        body = orjson.dumps(raw).replace(_ESCAPE_MARK.encode(), escape)
    return httpx.Response(200, content=body, headers={"content-type": _JSON})


def _int_param(params: httpx.QueryParams, name: str) -> int | None:
    text = params.get(name)
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()):
        raise _BadRequest(f"{name} must be a non-negative integer, got {text!r}")
    return int(text)


def _bool_param(params: httpx.QueryParams, name: str, *, default: bool) -> bool:
    text = params.get(name)
    if text is None:
        return default
    if text.lower() in ("true", "1"):
        return True
    if text.lower() in ("false", "0"):
        return False
    raise _BadRequest(f"{name} must be true or false, got {text!r}")

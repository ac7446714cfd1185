"""The emulator's v2 side: routes, envelopes, paging and the quirks of Bland's v2 notes."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import orjson
import pytest

from batchsync.bland.http import BlandHttp
from batchsync.bland.source import Parts
from batchsync.bland.v2 import V2Source
from batchsync.config import load_api
from batchsync.emulator import Emulator, parse_fault

SERVE_EMULATOR = Path(__file__).resolve().parents[1] / "bench" / "serve_emulator.py"


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(seed=2, batches=1, calls_per_batch=2, v2_batches=3, v2_calls_per_batch=5)


@pytest.fixture
def http(emulator: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(
        transport=emulator.transport(),
        base_url="http://bland.test",
        headers={"authorization": emulator.api_key},
    ) as client:
        yield client


def ids(emulator: Emulator) -> list[str]:
    return list(emulator.v2.batches)


def test_v2_list_pages_with_take_and_skip_in_the_envelope(http: httpx.Client) -> None:
    """The v2 list answers {data, errors} and pages by take/skip until an empty page."""
    first = http.get("/v2/batches/list", params={"take": 2, "skip": 0}).json()
    rest = http.get("/v2/batches/list", params={"take": 2, "skip": 2}).json()
    empty = http.get("/v2/batches/list", params={"take": 2, "skip": 4}).json()
    assert first["errors"] is None
    assert [len(first["data"]), len(rest["data"]), len(empty["data"])] == [2, 1, 0]


def test_v2_batch_has_no_status_and_a_json_encoded_base_prompt(
    http: httpx.Client, emulator: Emulator
) -> None:
    """GET /v2/batches/{id}: metadata only, base_prompt a JSON string (not JSON in batch 2)."""
    first = http.get(f"/v2/batches/{ids(emulator)[0]}").json()["data"]
    assert "status" not in first
    assert isinstance(orjson.loads(first["base_prompt"]), dict)
    third = http.get(f"/v2/batches/{ids(emulator)[2]}").json()["data"]
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(third["base_prompt"])


def test_logs_come_newest_first_unless_asked_ascending(
    http: httpx.Client, emulator: Emulator
) -> None:
    """Logs default to newest first; direction=asc gives them oldest first."""
    path = f"/v2/batches/{ids(emulator)[0]}/logs"
    default = [e["timestamp"] for e in http.get(path).json()["data"]]
    ascending = [e["timestamp"] for e in http.get(path, params={"direction": "asc"}).json()["data"]]
    assert default == list(reversed(ascending))
    assert http.get(path).json()["data"][0]["event_type"] == "complete"


def test_calls_list_pages_and_omits_total_count_in_batch_1(
    http: httpx.Client, emulator: Emulator
) -> None:
    """The calls list pages by from/to/limit; batch 1 sends no total_count."""
    first = http.get("/v1/calls", params={"batch_id": ids(emulator)[0], "ascending": "true",
                                          "from": 0, "to": 3, "limit": 3}).json()  # fmt: skip
    assert (first["total_count"], first["count"]) == (5, 3)
    assert "transcripts" not in first["calls"][0]
    second = http.get("/v1/calls", params={"batch_id": ids(emulator)[1]}).json()
    assert "total_count" not in second


def test_call_detail_says_completed_where_the_list_says_complete(
    http: httpx.Client, emulator: Emulator
) -> None:
    """The detail spells the queue status 'completed', the list 'complete', as in the docs."""
    listed = http.get("/v1/calls", params={"batch_id": ids(emulator)[0]}).json()["calls"]
    done = next(c for c in listed if c["queue_status"] == "complete")
    detail = http.get(f"/v1/calls/{done['call_id']}").json()
    assert detail["queue_status"] == "completed"
    assert isinstance(detail["corrected_duration"], str)
    assert detail["transcripts"]


def test_unknown_v2_batch_and_call_are_404(http: httpx.Client) -> None:
    """An unknown v2 batch answers 404 in the v2 envelope, an unknown call 404 too."""
    response = http.get("/v2/batches/00000000-0000-4000-8000-000000000000")
    assert response.status_code == 404
    assert response.json()["errors"][0]["message"] == "Batch not found"
    assert http.get("/v1/calls/nope").status_code == 404


def test_v1_calls_have_a_detail_too(http: httpx.Client, emulator: Emulator) -> None:
    """GET /v1/calls/{id} answers for a v1 batch's call, with the detail fields."""
    raw = emulator.raw_batch(emulator.batch_ids()[0])
    call_id = raw["call_data"][0].get("call_id") or raw["call_data"][0]["c_id"]
    detail = http.get(f"/v1/calls/{call_id}").json()
    assert detail["call_id"] == call_id
    assert "price" in detail
    assert "summary" in detail


@pytest.mark.parametrize(
    ("target", "path"),
    [("*v2list*", "/v2/batches/list"), ("*v2*", "/v2/batches/{id}"),
     ("*logs*", "/v2/batches/{id}/logs"), ("*calls*", "/v1/calls")],
)  # fmt: skip
def test_faults_reach_each_v2_route(
    http: httpx.Client, emulator: Emulator, target: str, path: str
) -> None:
    """The fault language names each new route; a fault is consumed by its route only."""
    emulator.inject(*parse_fault(f"{target}:server_error"))
    url = path.format(id=ids(emulator)[0])
    params = {"batch_id": ids(emulator)[0]}
    assert http.get(url, params=params).status_code == 503
    assert http.get(url, params=params).status_code == 200


def test_call_detail_follows_calls_changed_after_a_lookup(
    http: httpx.Client, emulator: Emulator
) -> None:
    """A call looked up once is still found after the batch's calls change, and a call
    taken out of its batch answers 404."""
    calls = emulator.v2.batches[ids(emulator)[0]].calls
    first, second = calls[0]["call_id"], calls[1]["call_id"]
    assert http.get(f"/v1/calls/{second}").status_code == 200
    calls.insert(0, {**calls[0], "call_id": "added", "summary": "new"})
    assert http.get(f"/v1/calls/{second}").json()["call_id"] == second
    assert http.get("/v1/calls/added").json()["summary"] == "new"
    calls[:] = [c for c in calls if c["call_id"] != first]
    assert http.get(f"/v1/calls/{first}").status_code == 404


def _serve_emulator_module() -> ModuleType:
    """bench/serve_emulator.py, which is a script rather than a package module."""
    spec = importlib.util.spec_from_file_location("serve_emulator", SERVE_EMULATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("serve_emulator", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("call_details", [True, False])
def test_benchmark_replay_answers_a_v2_first_load_as_the_emulator_would(
    call_details: bool,
) -> None:
    """The benchmark's replay emulator has an answer ready for every request of a v2 first
    load (with or without call details), byte for byte the live emulator's answer."""
    bench = _serve_emulator_module()
    workload = bench.Workload(0, 0, v2_batches=3, v2_calls=7)
    replay = bench.ReplayEmulator(workload)
    assert replay.prepare(workers=1) > 0
    live = workload.emulator()
    seen: list[str] = []

    def compare(request: httpx.Request) -> httpx.Response:
        assert replay.replays(request), request.url
        replayed, expected = replay.handle(request), live.handle(request)
        assert (replayed.status_code, replayed.content) == (expected.status_code, expected.content)
        seen.append(request.url.path)
        return expected

    api = load_api("http://bland.test", bench.API_KEY)
    with BlandHttp(api, transport=httpx.MockTransport(compare)) as http:
        source = V2Source(http, call_details=call_details)
        for summary in list(source.iter_batches()):
            source.fetch_batch(summary.batch_id, Parts())
    details = sum(1 for path in seen if path.startswith("/v1/calls/"))
    assert details == (3 * 7 if call_details else 0)

"""A local Bland AI batches API: deterministic, messy data and failures on request.

The emulator answers the two v1 endpoints batchsync reads, with the real API's envelopes and
warts, so the client, the sync and the benchmarks can run with no network at all:

- ``GET /v1/batches`` (``campaign_id``, ``from``, ``to``, ``limit``, ``ascending``)
- ``GET /v1/batches/{batch_id}`` (``include_calls``, ``include_transcripts``, ``include_analysis``)

Two ways to talk to it, both going through :meth:`Emulator.handle`, so they behave the same::

    emu = Emulator(seed=1, batches=3, calls_per_batch=50)
    headers = {"authorization": emu.api_key}

    # in-process, as an httpx transport (sync or async client)
    with httpx.Client(transport=emu.transport(), base_url="http://bland.test",
                      headers=headers) as client:
        batches = client.get("/v1/batches", params={"ascending": "true"}).json()["batches"]

    # a real HTTP server on a loopback port, for subprocesses and the CLI
    with emu.serve() as server:
        httpx.get(f"{server.url}/v1/batches", headers=headers)

Failures are queued per batch id, for every batch (``"*"``) or for the list endpoint
(``"*list*"``), and consumed one per matching request::

    emu.inject(*parse_fault("*:rate_limit x2:retry_after=1"))
    emu.inject("*list*", Fault("server_error", status=502))

Besides HTTP errors (``rate_limit``, ``server_error``, ``not_found``) and broken bodies
(``truncated``, ``invalid_json``, ``wrong_shape``), the faults that real servers produce:

- ``wrong_encoding``: the header says ``Content-Encoding: gzip``, the body is plain JSON;
- ``lone_surrogate`` / ``bad_escape``: the batch's label holds the escape ``\\ud800`` (a
  lone surrogate) or ``\\uZZZZ`` (not an escape at all);
- ``huge_number``: the first call's ``call_length`` is ``1e400``, beyond any float (a batch
  without calls gets it in ``call_params.max_duration``);
- ``api_down`` (``"*:api_down:after=1"``): once ``after`` batch details have been served,
  every request is refused, the list included (in-process: ``httpx.ConnectError``; over
  HTTP: the connection is closed without an answer).

Two list modes, set by :meth:`Emulator.inject` on ``"*list*"`` or by the attributes:
``page_cap`` (``"*list*:page_cap:size=2"``) serves at most that many batches per page
whatever ``limit`` asks, and ``list_order`` (``"*list*:unsorted:order=shuffled"`` or
``order=descending``) lists the batches in that order whatever ``ascending`` asks.

Ids are data: a batch id may hold any character (``/``, ``?``, ``#``, ``%``, spaces,
control characters, any script); the detail path is percent-decoded to find it.

v2. ``Emulator(v2_batches=n)`` also holds n v2 batches, served by the v2 batches API and the
calls API (``/v2/batches/...``, ``/v1/calls``, ``/v1/calls/{id}``, which answers for v1 calls
too): see :mod:`batchsync.emulator.v2` for the routes, their fault targets and the quirks.

The package, one job a module: :mod:`~batchsync.emulator.data` (the v1 account's batches and
calls, a pure function of seed, batch and revision), :mod:`~batchsync.emulator.routes` (the
:class:`Emulator`: auth, faults and the v1 routes), :mod:`~batchsync.emulator.v2` (the v2
account and its routes), :mod:`~batchsync.emulator.faults` (the fault language) and
:mod:`~batchsync.emulator.server` (the loopback HTTP server).
"""

from batchsync.emulator.faults import (
    FAULT_KINDS,
    LIST_ORDERS,
    STATE_FAULT_KINDS,
    Fault,
    FaultKind,
    ListOrder,
    parse_fault,
)
from batchsync.emulator.routes import Emulator
from batchsync.emulator.server import EmulatorServer
from batchsync.emulator.v2 import V2Account, V2Batch

__all__ = [
    "FAULT_KINDS",
    "LIST_ORDERS",
    "STATE_FAULT_KINDS",
    "Emulator",
    "EmulatorServer",
    "Fault",
    "FaultKind",
    "ListOrder",
    "V2Account",
    "V2Batch",
    "parse_fault",
]

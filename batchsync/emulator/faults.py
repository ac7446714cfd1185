"""The emulator's fault language: the kinds of failure, and 'TARGET:KIND[xN][:key=value]' specs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, cast, get_args

FaultKind = Literal[
    "rate_limit",
    "server_error",
    "slow",
    "truncated",
    "invalid_json",
    "wrong_shape",
    "not_found",
    "wrong_encoding",
    "lone_surrogate",
    "bad_escape",
    "huge_number",
    "api_down",
    "page_cap",
    "unsorted",
]
ListOrder = Literal["asked", "descending", "shuffled"]
FAULT_KINDS: Final[tuple[FaultKind, ...]] = get_args(FaultKind)
LIST_ORDERS: Final[tuple[ListOrder, ...]] = get_args(ListOrder)
# Kinds that set a lasting state of the emulator rather than spoil some answers.
STATE_FAULT_KINDS: Final[frozenset[FaultKind]] = frozenset({"api_down", "page_cap", "unsorted"})


@dataclass(frozen=True)
class Fault:
    """One injected failure for requests to one batch (or to the list endpoint)."""

    kind: FaultKind
    times: int = 1
    status: int = 503
    retry_after: str | None = None
    delay: float = 0.0
    after: int = 0  # api_down: batch details served before the API dies
    size: int = 1  # page_cap: batches per page at most
    order: ListOrder = "descending"  # unsorted: the order the list comes in

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")
        if self.times != -1 and self.times < 1:
            raise ValueError(f"times must be a positive count or -1 (forever), not {self.times}")
        if not 500 <= self.status <= 599:
            raise ValueError(f"status must be a 5xx code, not {self.status}")
        if not 0.0 <= self.delay < float("inf"):
            raise ValueError(f"delay must be a non-negative number of seconds, not {self.delay}")
        if self.retry_after is not None and not self.retry_after.strip():
            raise ValueError("retry_after must be None or a non-empty header value")
        if self.after < 0:
            raise ValueError(f"after must not be negative, not {self.after}")
        if self.size < 1:
            raise ValueError(f"size must be at least 1, not {self.size}")
        if self.order not in LIST_ORDERS:
            raise ValueError(f"order must be one of {LIST_ORDERS}, not {self.order!r}")


_FAULT_KEYS: Final[dict[str, str | None]] = {
    "times": None,
    "status": "server_error",
    "retry_after": "rate_limit",
    "delay": "slow",
    "after": "api_down",
    "size": "page_cap",
    "order": "unsorted",
}


def parse_fault(spec: str) -> tuple[str, Fault]:
    """Parse 'TARGET:KIND[xN][:key=value...]', e.g. 'b-123:rate_limit x3:retry_after=1'.

    TARGET is a batch id, ``*`` (every batch) or ``*list*`` (the list endpoint). Keys are
    ``times``, ``status`` (server_error), ``retry_after`` (rate_limit; an HTTP date may contain
    colons), ``delay`` (slow), ``after`` (api_down), ``size`` (page_cap) and ``order``
    (unsorted). Raise ValueError on a bad spec.
    """
    target, _, rest = spec.partition(":")
    target = target.strip()
    if not target or not rest.strip():
        raise ValueError(f"bad fault spec {spec!r}: expected TARGET:KIND[xN][:key=value...]")
    kind_part, *option_parts = rest.split(":")
    kind, times = _parse_fault_kind(kind_part.strip(), spec)

    options: dict[str, str] = {}
    key = ""
    for part in option_parts:
        name, sep, value = part.partition("=")
        if sep:
            key = name.strip()
            if key not in _FAULT_KEYS:
                raise ValueError(f"bad fault spec {spec!r}: unknown key {key!r}")
            if key in options:
                raise ValueError(f"bad fault spec {spec!r}: {key} given twice")
            options[key] = value.strip()
        elif key == "retry_after":
            # An HTTP date ("Wed, 21 Oct 2015 07:28:00 GMT") was split at its colons.
            options[key] += ":" + part
        else:
            raise ValueError(f"bad fault spec {spec!r}: expected key=value, got {part!r}")

    for name in options:
        applies_to = _FAULT_KEYS[name]
        if applies_to is not None and applies_to != kind:
            raise ValueError(f"bad fault spec {spec!r}: {name} only applies to {applies_to}")
    if "times" in options:
        if times is not None:
            raise ValueError(f"bad fault spec {spec!r}: count given both as xN and times=")
        times = _parse_int(options["times"], "times", spec)
    try:
        fault = Fault(
            kind=kind,
            times=1 if times is None else times,
            status=_parse_int(options.get("status", "503"), "status", spec),
            retry_after=options.get("retry_after") or None,
            delay=_parse_float(options.get("delay", "0"), "delay", spec),
            after=_parse_int(options.get("after", "0"), "after", spec),
            size=_parse_int(options.get("size", "1"), "size", spec),
            order=cast(ListOrder, options.get("order", "descending")),
        )
    except ValueError as exc:
        raise ValueError(f"bad fault spec {spec!r}: {exc}") from None
    return target, fault


def _parse_fault_kind(text: str, spec: str) -> tuple[FaultKind, int | None]:
    """Split 'rate_limit', 'rate_limitx3' or 'rate_limit x3' into the kind and its count."""
    for kind in FAULT_KINDS:
        if not text.startswith(kind):
            continue
        suffix = text[len(kind) :].strip()
        if not suffix:
            return kind, None
        if suffix.startswith("x"):
            return kind, _parse_int(suffix[1:].strip(), "count", spec)
    raise ValueError(
        f"bad fault spec {spec!r}: unknown fault kind {text!r}; expected one of {FAULT_KINDS}"
    )


def _parse_int(text: str, name: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"bad fault spec {spec!r}: {name} must be an integer, not {text!r}"
        ) from None


def _parse_float(text: str, name: str, spec: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(
            f"bad fault spec {spec!r}: {name} must be a number, not {text!r}"
        ) from None


class _BadRequest(Exception):
    """A query parameter the real API would answer with 400."""


class _Refused(Exception):
    """The emulated API is down: the request gets no answer at all."""


@dataclass
class _ArmedFault:
    fault: Fault
    remaining: int  # -1: never spent

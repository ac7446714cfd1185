"""What happens to phone numbers before they are stored: kept, hashed with a key, or dropped.

``hash`` replaces each number by an HMAC-SHA256 of it under a secret key
(BATCHSYNC_PHONE_HASH_KEY), so analysts can still count calls per number and join on it
without seeing it, while nobody without the key can test a guessed number. ``drop``
stores NULL. The policy covers the ``to_number`` / ``from_number`` columns, the
``phone_number`` in a call's request data, and numbers written into error messages.
Transcripts are free text and are not scrubbed: leave them out with ``--no-transcripts``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from batchsync.config import ENV_PHONE_HASH_KEY, Secret, env, register_secret
from batchsync.errors import ConfigError
from batchsync.payload import CallRecord, ErrorRecord, ParsedBatch

# E.164-looking numbers inside free text ("Cannot transfer to +12223334444 - ...").
_NUMBER_IN_TEXT = re.compile(r"\+?\d[\d\s().-]{6,}\d")
_REQUEST_NUMBER_KEYS = ("phone_number", "to", "from")


class PhoneMode(StrEnum):
    KEEP = "keep"
    HASH = "hash"
    DROP = "drop"


@dataclass(frozen=True)
class PhonePolicy:
    mode: PhoneMode = PhoneMode.KEEP
    key: Secret | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.mode is PhoneMode.HASH and not self.key:
            raise ConfigError("--phone-numbers hash needs a secret key in BATCHSYNC_PHONE_HASH_KEY")

    @property
    def tag(self) -> str:
        """Names the policy, and for hashing which key, without revealing the key."""
        if self.mode is not PhoneMode.HASH or self.key is None:
            return self.mode.value
        fingerprint = hmac.new(self.key.reveal().encode(), b"batchsync", hashlib.sha256)
        return f"hash:{fingerprint.hexdigest()[:12]}"

    def number(self, value: str | None) -> str | None:
        if value is None or self.mode is PhoneMode.KEEP:
            return value
        if self.mode is PhoneMode.DROP or self.key is None:
            return None
        digest = hmac.new(self.key.reveal().encode(), value.encode(), hashlib.sha256)
        return digest.hexdigest()

    def text(self, value: str | None) -> str | None:
        if value is None or self.mode is PhoneMode.KEEP:
            return value
        placeholder = "[phone]" if self.mode is PhoneMode.DROP else None
        return _NUMBER_IN_TEXT.sub(
            lambda m: placeholder or f"[phone:{(self.number(m.group()) or '')[:16]}]", value
        )


def load_phone_policy(mode: str) -> PhonePolicy:
    """The policy for ``mode``, with its key from BATCHSYNC_PHONE_HASH_KEY when hashing."""
    key = env(ENV_PHONE_HASH_KEY)
    register_secret(key)
    return PhonePolicy(PhoneMode(mode), Secret(key) if key else None)


def refuse_clear_numbers_over_protected(policy: PhonePolicy, stored_policies: set[str]) -> None:
    """Stop a run that, only by leaving --phone-numbers unset, would un-hash stored numbers.

    ``stored_policies``: the policy tags the stored batches were written under.
    """
    if policy.mode is not PhoneMode.KEEP:
        return
    protected = stored_policies - {PhoneMode.KEEP.value}
    if protected:
        modes = ", ".join(sorted(tag.partition(":")[0] for tag in protected))
        raise ConfigError(
            f"batches in this database were stored with --phone-numbers {modes}; this run "
            "would store their numbers in clear. Set --phone-numbers (or "
            "BATCHSYNC_PHONE_NUMBERS) to hash or drop, or to keep to mean it"
        )


def apply_phone_policy(parsed: ParsedBatch, policy: PhonePolicy) -> ParsedBatch:
    """The batch with its phone numbers kept, hashed or dropped as ``policy`` says."""
    if policy.mode is PhoneMode.KEEP:
        return parsed
    calls = None
    if parsed.calls is not None:
        calls = apply_phone_policy_to_calls(parsed.calls, policy)
    errors = None
    if parsed.errors is not None:
        errors = [
            ErrorRecord(e.batch_id, e.position, e.call_id, policy.text(e.error_message) or "")
            for e in parsed.errors
        ]
    return parsed._replace(calls=calls, errors=errors)


def apply_phone_policy_to_calls(calls: list[CallRecord], policy: PhonePolicy) -> list[CallRecord]:
    """The calls with their phone numbers kept, hashed or dropped as ``policy`` says."""
    if policy.mode is PhoneMode.KEEP:
        return calls
    return [_call(call, policy) for call in calls]


def _call(call: CallRecord, policy: PhonePolicy) -> CallRecord:
    return call._replace(
        to_number=policy.number(call.to_number),
        from_number=policy.number(call.from_number),
        error_message=policy.text(call.error_message),
        request_data=_request_data(call.request_data, policy),
    )


def _request_data(data: Any, policy: PhonePolicy) -> Any:
    if not isinstance(data, dict):
        return data
    cleaned = dict(data)
    for key in _REQUEST_NUMBER_KEYS:
        value = cleaned.get(key)
        if isinstance(value, str):
            cleaned[key] = policy.number(value)
    return cleaned

"""What happens to phone numbers and other personal data before they are stored.

Phone numbers are kept, hashed with a key, or dropped (:class:`PhoneMode`). ``hash``
replaces each number by an HMAC-SHA256 of its E.164 form under a secret key
(BATCHSYNC_PHONE_HASH_KEY), so analysts can still count calls per number and join on it
across tables without seeing it, while nobody without the key can test a guessed number.
``drop`` stores NULL (or a ``[phone]`` placeholder inside text).

With ``hash`` or ``drop`` no number of the payload is stored as sent:

- ``calls.to_number`` / ``calls.from_number`` / ``calls.transferred_to``;
- at any depth of the JSON columns (``request_data``, ``variables``, ``metadata``,
  ``analysis``, ``pathway_tags``, ``extra``, ``call_params``, the batch's ``extra``, the
  ``payload`` of ``batch_logs``): every value under a key that names
  a phone number (:func:`names_a_phone_number`), every value and every key equal to one
  of the call's numbers (for batch-level columns: of the batch's numbers), and the call's
  numbers written inside longer strings;
- the call's numbers anywhere in its text (transcript lines, summary), the batch's numbers
  in its label and base prompt, and anything that looks like a number in error messages;
- every other field of every record, generically (:func:`_scrub`): text equal to a number
  is hashed, numbers inside text masked, JSON and numeric values whose digits are a number
  hashed or nulled; call ids that are numbers are stored alike in every table (:class:`_CallIds`).

``redact_transcripts`` (``--redact-transcripts``) also masks, best effort and by pattern,
any phone number and e-mail address written in transcript lines and call summaries, under
every phone policy.

Numbers are compared by their E.164 form (:func:`normalize_number`), so ``+1 555-123-0001``
and ``+15551230001`` are one number with one hash.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple, TypeVar, get_args, get_type_hints

from batchsync.config import ENV_PHONE_HASH_KEY, Secret, env, redact, register_secret
from batchsync.errors import ConfigError
from batchsync.payload import (
    CallRecord,
    ErrorRecord,
    ParsedBatch,
    QueueStatusCountRecord,
    TranscriptLineRecord,
)

log = logging.getLogger(__name__)

# Phone-number-looking runs inside free text ("Cannot transfer to +1 (222) 333-4444 - ...").
# An opening parenthesis ("(212)555-0199") and an extension ("x123", "ext. 12") belong to it.
_NUMBER_IN_TEXT = re.compile(
    r"(?<![\w+(])[+(]?\d[\d\s().\-/]{5,}\d"
    r"(?:\s*(?:x|ext\.?|extension)\s*\d{1,6})?(?!\w)",
    re.IGNORECASE,
)
# A trunk prefix written after the country code, "+44 (0) 20...": not dialled from abroad.
_TRUNK_ZERO = re.compile(r"^(\+\d{1,3})[\s.\-]*\(0\)")
# E-mail addresses inside free text (redact_transcripts only).
_EMAIL_IN_TEXT = re.compile(r"[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+")
_WRITTEN_NUMBER = re.compile(r"\+?[\d\s().\-/]+")
_NOT_DIGIT = re.compile(r"\D")
# Six digits in a row or with separators: fewer cannot hold a number's digit form.
_has_digits = re.compile(r"\d(?:[\s().\-/+]*\d){5}").search
_KEY_SEPARATORS = re.compile(r"[\s_.\-]")
# A run of digits and the separators written between them, where a known number may hide.
_DIGIT_RUN = re.compile(r"(?<!\d)\+?\d[\d\s().\-/]*\d(?!\d)")

# Keys whose value is a phone number, compared lower-case with "_", "-", " " and "." removed.
# Any key containing "phone" counts too (phone, phone_number, PhoneNumber, mobile_phone...).
PHONE_KEYS = frozenset(
    {"to", "from", "number", "caller", "callee", "callerid", "tonumber", "fromnumber",
     "tel", "telephone", "mobile", "cell", "msisdn", "fax", "transfernumber", "transferto",
     "forwardto", "ani", "dnis"}
)  # fmt: skip

# Free-text fields of a call, in its ``extra``, that --redact-transcripts also masks.
TRANSCRIPT_TEXT_KEYS = ("summary", "concatenated_transcript")

# Bump when what a policy stores changes (normalisation, places covered): the tag recorded
# with each batch changes with it, so the next run rewrites batches stored the old way.
_SCRUB_VERSION = "v4"  # v4: every field of every record, the call detail columns, batch_logs


class PhoneMode(StrEnum):
    KEEP = "keep"
    HASH = "hash"
    DROP = "drop"


@functools.lru_cache(maxsize=4096)  # the same few keys come back in every call
def names_a_phone_number(key: str) -> bool:
    """Whether a JSON key names a phone number: it contains "phone", or is in PHONE_KEYS."""
    folded = _KEY_SEPARATORS.sub("", key.lower())
    return "phone" in folded or folded in PHONE_KEYS


def normalize_number(value: str) -> str | None:
    """The E.164 form of a written phone number, or None when ``value`` is not one.

    Separators (spaces, ``-``, ``.``, ``/``, parentheses) are removed; a leading ``00`` is
    read as ``+``; 10 digits without a ``+`` are a North American number (``+1``), as are
    11 digits starting with 1. Other digit strings of 7 to 15 digits keep their digits
    behind a ``+``. Anything with letters, or fewer than 7 or more than 15 digits, is not a
    number. A trunk ``(0)`` after the country code (``+44 (0) 7700 900124``) is dropped.
    """
    text = value.strip()
    if "(0)" in text:
        text = _TRUNK_ZERO.sub(r"\1", text)
    if not text or not _WRITTEN_NUMBER.fullmatch(text):
        return None
    digits = _NOT_DIGIT.sub("", text)
    if not text.startswith("+"):
        if digits.startswith("00"):
            digits = digits[2:]
        elif len(digits) == 10:
            digits = "1" + digits
    if not 7 <= len(digits) <= 15:
        return None
    return "+" + digits


@dataclass(frozen=True)
class PhonePolicy:
    mode: PhoneMode = PhoneMode.KEEP
    key: Secret | None = field(default=None, repr=False)
    redact_transcripts: bool = False

    def __post_init__(self) -> None:
        if self.mode is PhoneMode.HASH and not self.key:
            raise ConfigError("--phone-numbers hash needs a secret key in BATCHSYNC_PHONE_HASH_KEY")

    @property
    def tag(self) -> str:
        """Names what the policy stores, and for hashing which key, without revealing the key."""
        if self.mode is PhoneMode.HASH and self.key is not None:
            fingerprint = hmac.new(self.key.reveal().encode(), b"batchsync", hashlib.sha256)
            tag = f"hash:{fingerprint.hexdigest()[:12]};{_SCRUB_VERSION}"
        elif self.mode is PhoneMode.DROP:
            tag = f"drop;{_SCRUB_VERSION}"
        else:
            tag = self.mode.value
        return f"{tag};redacted-transcripts" if self.redact_transcripts else tag

    def number(self, value: str | None) -> str | None:
        """A number as stored: as sent (keep), the hash of its E.164 form, or None (drop)."""
        if value is None or self.mode is PhoneMode.KEEP:
            return value
        if self.mode is PhoneMode.DROP or self.key is None:
            return None
        normal = normalize_number(value) or value.strip()
        digest = hmac.new(self.key.reveal().encode(), normal.encode(), hashlib.sha256)
        return digest.hexdigest()

    def placeholder(self, value: str) -> str:
        """What replaces a number inside text: ``[phone:<start of its hash>]`` or ``[phone]``."""
        if self.mode is PhoneMode.HASH and self.key is not None:
            return f"[phone:{(self.number(value) or '')[:16]}]"
        return "[phone]"

    def text(self, value: str | None) -> str | None:
        """Free text (an error message) with everything that looks like a number masked."""
        if value is None or self.mode is PhoneMode.KEEP:
            return value
        return _NUMBER_IN_TEXT.sub(lambda m: self.placeholder(m.group()), value)


def stores_numbers_in_clear(tag: str) -> bool:
    """Whether batches recorded with ``tag`` hold their phone numbers as sent."""
    return tag.split(";", 1)[0] == PhoneMode.KEEP.value


def load_phone_policy(mode: str, *, redact_transcripts: bool = False) -> PhonePolicy:
    """The policy for ``mode``, with its key from BATCHSYNC_PHONE_HASH_KEY when hashing."""
    key = env(ENV_PHONE_HASH_KEY)
    register_secret(key)
    if key and mode == PhoneMode.HASH.value:
        _warn_about_key_shape(key)
    return PhonePolicy(PhoneMode(mode), Secret(key) if key else None, redact_transcripts)


def _warn_about_key_shape(key: str) -> None:
    """Warn when the hash key looks like a value copied with its quotes or surrounding
    spaces (an env file, a YAML manifest): they are part of the key as given, and a key
    that differs by them hashes every number differently. The key is used as given."""
    if len(key) >= 2 and key[0] == key[-1] and key[0] in "\"'":
        log.warning(
            "%s begins and ends with %s: the quotes are part of the key as given, and "
            "hashes made with it will not match hashes made without them",
            ENV_PHONE_HASH_KEY,
            "a double quote" if key[0] == '"' else "a single quote",
        )
    elif key != key.strip():
        log.warning(
            "%s begins or ends with white space: it is part of the key as given, and "
            "hashes made with it will not match hashes made without it",
            ENV_PHONE_HASH_KEY,
        )


def refuse_clear_numbers_over_protected(policy: PhonePolicy, stored_policies: set[str]) -> None:
    """Stop a run that, only by leaving --phone-numbers unset, would un-hash stored numbers.

    ``stored_policies``: the policy tags the stored batches were written under.
    """
    if policy.mode is not PhoneMode.KEEP:
        return
    protected = {tag for tag in stored_policies if not stores_numbers_in_clear(tag)}
    if protected:
        modes = ", ".join(sorted({tag.replace(";", ":").partition(":")[0] for tag in protected}))
        raise ConfigError(
            f"batches in this database were stored with --phone-numbers {modes}; this run "
            "would store their numbers in clear. Set --phone-numbers (or "
            "BATCHSYNC_PHONE_NUMBERS) to hash or drop, or to keep to mean it"
        )


def redact_secrets(parsed: ParsedBatch) -> ParsedBatch:
    """The batch with every registered secret (the API key...) masked in every string of
    every record, JSON keys and values at any depth included.

    For the rare body that quotes a secret (a 200 response echoing the key in
    ``call_params`` or an error text): the caller tests the raw body once
    (:func:`~batchsync.config.echoes_secret`) and only then pays for this walk.
    """

    parts: dict[str, Any] = {}
    for name, part in zip(parsed._fields, parsed, strict=True):
        if isinstance(part, list):
            parts[name] = redact_secrets_in(part)
        elif isinstance(part, tuple):  # a record (every field of ParsedBatch is one, or a list)
            parts[name] = _redacted_record(part)
    return parsed._replace(**parts)


def redact_secrets_in(records: list[_Record]) -> list[_Record]:
    """:func:`redact_secrets` for a list of records (a chunk of a batch written in chunks)."""
    return [_redacted_record(each) if isinstance(each, tuple) else each for each in records]


def _redacted_record(each: _Record) -> _Record:
    changes = {
        name: cleaned
        for name, value in zip(each._fields, each, strict=True)
        if (cleaned := _redacted(value)) != value
    }
    return each._replace(**changes) if changes else each


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(key)): _redacted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_redacted(item) for item in value]
    return value


def refuse_partial_switch(
    policy: PhonePolicy, stored_policies: set[str], left_out: Iterable[str]
) -> None:
    """Stop a policy switch that would leave some parts of stored batches as they were.

    A run with --no-calls, --no-transcripts or --no-analysis leaves those parts of a stored
    batch untouched, yet would record the batch under the new policy: the tag would claim a
    protection (or a redaction) the untouched rows do not have. ``left_out``: the options
    that leave parts out.
    """
    skipped = sorted(left_out)
    other = sorted(tag for tag in stored_policies if tag != policy.tag)
    if not skipped or not other:
        return
    raise ConfigError(
        f"batches in this database were stored under another phone-number policy, and "
        f"{' and '.join(skipped)} would leave those parts as stored while recording the new "
        "policy. Run the switch once without "
        f"{' and '.join(skipped)}, then use {'them' if len(skipped) > 1 else 'it'} again"
    )


class BatchScrub:
    """What scrubbing one batch remembers across the chunks its calls are written in: the
    stored id of each call id that is a phone number (so drop's ``[phone] 2`` is numbered
    through the batch, and hash's ids match in every table) and every number the calls
    held (so the batch's label, prompts and error messages are masked with the numbers of
    every chunk, not only of the calls still in hand at the end)."""

    def __init__(self, policy: PhonePolicy) -> None:
        self.policy = policy
        self.ids = _CallIds(policy)
        self.numbers: set[str] = set()


def apply_phone_policy(
    parsed: ParsedBatch, policy: PhonePolicy, scrub: BatchScrub | None = None
) -> ParsedBatch:
    """The batch with its phone numbers kept, hashed or dropped as ``policy`` says.

    Under hash or drop every field of every record is scrubbed (:func:`_scrub`), whatever
    its name: text fields, JSON values at any depth and numeric fields, so a field added to
    a record is covered without being listed here. ``scrub``: the batch's state when some
    of its calls were written in chunks before (:func:`apply_phone_policy_to_calls`).
    """
    if policy.mode is PhoneMode.KEEP and not policy.redact_transcripts:
        return parsed
    masks: dict[str, _Mask] = {}
    ids = scrub.ids if scrub is not None else _CallIds(policy)
    calls = None
    if parsed.calls is not None:
        calls, transcripts, masks = _calls_and_lines(parsed.calls, parsed.transcripts, policy, ids)
    else:
        transcripts = _lines(parsed.transcripts, {}, policy, ids)
    if policy.mode is PhoneMode.KEEP:
        return parsed._replace(calls=calls, transcripts=transcripts)
    batch = parsed.batch
    numbers = [n for mask in masks.values() for n in mask.numbers]
    if scrub is not None:
        numbers += sorted(scrub.numbers)
    numbers += _numbers_under_phone_keys(batch.call_params) + _numbers_under_phone_keys(batch.extra)
    batch_mask = _Mask(policy, numbers)
    errors = None
    if parsed.errors is not None:
        errors = []
        for e in parsed.errors:
            mask = masks.get(e.call_id or "", batch_mask)
            message = policy.text(mask.text(e.error_message)) or ""
            errors.append(ids.follow(e._replace(error_message=message), mask))
    batch = _scrub(
        batch._replace(
            label=batch_mask.text(batch.label),
            base_prompt=batch_mask.text(batch.base_prompt),
            call_params=batch_mask.json(batch.call_params),
            extra=batch_mask.json(batch.extra),
        ),
        batch_mask,
        done=_BATCH_DONE,
    )
    analysis = parsed.analysis and _scrub(parsed.analysis, batch_mask)
    counts = None
    if parsed.queue_status_counts is not None:
        counts = _merged_counts(_scrub(c, batch_mask) for c in parsed.queue_status_counts)
    logs = None
    if parsed.logs is not None:  # v2 log entries: their messages and payloads
        logs = [
            _scrub(entry._replace(payload=batch_mask.json(entry.payload)), batch_mask, _LOG_DONE)
            for entry in parsed.logs
        ]
    return parsed._replace(
        batch=batch,
        analysis=analysis,
        queue_status_counts=counts,
        calls=calls,
        errors=errors,
        transcripts=transcripts,
        logs=logs,
    )


# Fields already scrubbed by their own rule before the generic pass (see _call, and the
# batch and error records above), or identifiers handled by _CallIds.
_CALL_DONE = frozenset(
    {"to_number", "from_number", "error_message", "request_data", "extra", "transferred_to",
     "summary", "variables", "metadata", "analysis", "pathway_tags"}
)  # fmt: skip
_LOG_DONE = frozenset({"payload"})
_BATCH_DONE = frozenset({"label", "base_prompt", "call_params", "extra"})
_LINE_DONE = frozenset({"text"})
_ERROR_DONE = frozenset({"error_message"})
_DONE: dict[type, frozenset[str]] = {
    CallRecord: _CALL_DONE,
    TranscriptLineRecord: _LINE_DONE,
    ErrorRecord: _ERROR_DONE,
}
# Identifiers: batch_id is the key every table and the run ledger join on and names the
# batch in messages and URLs, so it is stored as sent; call_id is handled by _CallIds.
_IDS = frozenset({"batch_id", "call_id"})

_Record = TypeVar("_Record", bound=NamedTuple)


@functools.cache
def _nullable_fields(record_type: type) -> frozenset[str]:
    """The fields of a record type that may hold None (a dropped value becomes None there)."""
    hints = get_type_hints(record_type)
    return frozenset(
        name for name, hint in hints.items() if hint is Any or type(None) in get_args(hint)
    )


def _scrub(record: _Record, mask: _Mask, done: frozenset[str] = frozenset()) -> _Record:
    """``record`` with the known numbers masked in every field not in ``done``.

    Text: a value that is a number is hashed (drop: None, or ``[phone]`` where the field
    cannot be empty), a number inside longer text is masked; JSON: as :meth:`_Mask.json`;
    a numeric field whose digits are a number: None.
    """
    if not mask.active or not mask.numbers:
        return record
    nullable = _nullable_fields(type(record))
    changes: dict[str, Any] = {}
    for name, value in zip(record._fields, record, strict=True):
        if name in done or name in _IDS or value is None or isinstance(value, bool):
            continue
        if isinstance(value, str):
            cleaned: Any = mask.value(value, nullable=name in nullable)
        elif isinstance(value, int | float):
            cleaned = None if name in nullable and mask.is_number(value) else value
        elif isinstance(value, dict | list):
            cleaned = mask.json(value)
        else:
            continue
        if cleaned is not value and cleaned != value:
            changes[name] = cleaned
    return record._replace(**changes) if changes else record


def _merged_counts(counts: Iterable[QueueStatusCountRecord]) -> list[QueueStatusCountRecord]:
    """Queue statuses that became the same hash or placeholder are one row: counts added."""
    merged: dict[str, QueueStatusCountRecord] = {}
    for count in counts:
        seen = merged.get(count.queue_status)
        merged[count.queue_status] = (
            count if seen is None else seen._replace(count=seen.count + count.count)
        )
    return list(merged.values())


class _CallIds:
    """Call ids that are phone numbers, stored the same way in every table of a batch.

    hash: the id's hash, as its number is stored elsewhere (so tables still join). drop:
    ``[phone]``, then ``[phone] 2``... in the order the batch lists them; another batch may
    use the same placeholder, which is why ``batch_id`` is part of every key.
    """

    def __init__(self, policy: PhonePolicy) -> None:
        self.policy = policy
        self.stored: dict[str, str] = {}

    def follow(self, record: _Record, mask: _Mask) -> _Record:
        """``record`` scrubbed, with its call_id as stored for its call."""
        record = _scrub(record, mask, _DONE.get(type(record), frozenset()))
        call_id = getattr(record, "call_id", None)
        if not isinstance(call_id, str) or self.policy.mode is PhoneMode.KEEP:
            return record
        stored = self.stored.get(call_id)
        if stored is None:
            stored = call_id
            if normalize_number(call_id) in mask.numbers or (
                call_id.startswith("+") and normalize_number(call_id)
            ):
                stored = self.policy.number(call_id) or self._placeholder()
            self.stored[call_id] = stored
        return record._replace(call_id=stored) if stored != call_id else record

    def _placeholder(self) -> str:
        taken = set(self.stored.values())
        candidate, n = "[phone]", 1
        while candidate in taken:
            n += 1
            candidate = f"[phone] {n}"
        return candidate


def apply_phone_policy_to_calls(
    calls: list[CallRecord], lines: list[TranscriptLineRecord] | None, scrub: BatchScrub
) -> tuple[list[CallRecord], list[TranscriptLineRecord] | None]:
    """Calls and their transcript lines (one chunk of a batch) under ``scrub.policy``: what
    :func:`apply_phone_policy` does to them, for batches written in chunks. ``scrub`` is the
    batch's, the same for each of its chunks and, at the end, for the batch itself."""
    policy = scrub.policy
    if policy.mode is PhoneMode.KEEP and not policy.redact_transcripts:
        return calls, lines
    masked_calls, masked_lines, masks = _calls_and_lines(calls, lines, policy, scrub.ids)
    for mask in masks.values():
        scrub.numbers.update(mask.numbers)
    return masked_calls, masked_lines


def _calls_and_lines(
    calls: list[CallRecord],
    lines: list[TranscriptLineRecord] | None,
    policy: PhonePolicy,
    ids: _CallIds,
) -> tuple[list[CallRecord], list[TranscriptLineRecord] | None, dict[str, _Mask]]:
    masks: dict[str, _Mask] = {}
    masked = []
    for call in calls:
        mask = _Mask(policy, _numbers_of_call(call))
        masks[call.call_id] = mask
        masked.append(ids.follow(_call(call, mask), mask))
    return masked, _lines(lines, masks, policy, ids), masks


def _lines(
    lines: list[TranscriptLineRecord] | None,
    masks: dict[str, _Mask],
    policy: PhonePolicy,
    ids: _CallIds,
) -> list[TranscriptLineRecord] | None:
    if lines is None:
        return None
    masked = []
    for line in lines:
        mask = masks.get(line.call_id) or _Mask(policy, ())
        masked.append(ids.follow(_transcript_line(line, mask), mask))
    return masked


class _Mask:
    """Masks one call's (or one batch's) numbers wherever they are written."""

    def __init__(self, policy: PhonePolicy, numbers: Iterable[str]) -> None:
        self.policy = policy
        self.numbers = {n for n in map(normalize_number, numbers) if n}
        self._needles = _digit_forms(self.numbers)

    @property
    def active(self) -> bool:
        return self.policy.mode is not PhoneMode.KEEP

    def is_number(self, value: float) -> bool:
        """Whether a JSON or column number's digits are one of the known numbers' forms."""
        if isinstance(value, float) and not value.is_integer():
            return False
        return _as_text(value).lstrip("-") in self._needles

    def value(self, value: str, *, nullable: bool = True) -> str | None:
        """A text value: hashed (or dropped) when it is a known number, else masked inside."""
        if not _has_digits(value):  # most values ("completed", "user"): nothing to test
            return value
        if normalize_number(value) in self.numbers:
            stored = self.policy.number(value)
            return stored if stored is not None or nullable else "[phone]"
        return self.text(value)

    def text(self, value: str | None) -> str | None:
        """``value`` with each run of digits that holds a known number, however written, masked."""
        if value is None or not self.active or not self._needles:
            return value
        return _DIGIT_RUN.sub(self._masked_run, value)

    def _masked_run(self, match: re.Match[str]) -> str:
        run = match.group()
        digits = _NOT_DIGIT.sub("", run)
        if any(needle in digits for needle in self._needles):
            return self.policy.placeholder(run)
        return run

    def free_text(self, value: str | None) -> str | None:
        """Transcript text: known numbers masked, and with redaction any number or e-mail."""
        value = self.text(value)
        if value is None or not self.policy.redact_transcripts:
            return value
        value = _EMAIL_IN_TEXT.sub("[email]", value)
        return _NUMBER_IN_TEXT.sub(lambda m: self.policy.placeholder(m.group()), value)

    def json(self, value: Any, *, under_phone_key: bool = False) -> Any:
        """A JSON value with numbers, keys naming numbers and keys that are numbers masked."""
        if not self.active:
            return value
        if isinstance(value, dict):
            cleaned: dict[str, Any] = {}
            for key, item in value.items():
                phone_key = under_phone_key or names_a_phone_number(str(key))
                cleaned[self._key(str(key), cleaned)] = self.json(item, under_phone_key=phone_key)
            return cleaned
        if isinstance(value, list):
            return [self.json(item, under_phone_key=under_phone_key) for item in value]
        if isinstance(value, bool) or value is None:
            return value
        if under_phone_key and isinstance(value, str | int | float):
            return self.policy.number(_as_text(value))
        if isinstance(value, str):
            return self.value(value)
        if isinstance(value, int | float) and self.is_number(value):
            return self.policy.number(_as_text(value))
        return value

    def _key(self, key: str, taken: dict[str, Any]) -> str:
        """A key that is itself a number becomes its hash, or ``[phone]`` (numbered if taken)."""
        if normalize_number(key) not in self.numbers and not (
            key.startswith("+") and normalize_number(key)
        ):
            return key
        masked = self.policy.number(key) or "[phone]"
        candidate, n = masked, 1
        while candidate in taken:
            n += 1
            candidate = f"{masked} {n}"
        return candidate


def _digit_forms(numbers: Iterable[str]) -> frozenset[str]:
    """The digits each number is written with: with its country code, and in national form
    (without the 1 in North America, with a trunk 0 elsewhere, whatever the code's length)."""
    forms = set()
    for number in numbers:
        digits = number[1:]
        forms.add(digits)
        if len(digits) == 11 and digits.startswith("1"):
            forms.add(digits[1:])
        else:
            forms.update("0" + digits[k:] for k in (1, 2, 3) if len(digits) - k >= 6)
    return frozenset(forms)


def _numbers_under_phone_keys(value: Any, under_phone_key: bool = False) -> list[str]:
    """The strings and numbers found under keys that name a phone number, at any depth."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            phone_key = under_phone_key or names_a_phone_number(str(key))
            found += _numbers_under_phone_keys(item, phone_key)
            if str(key).startswith("+") and normalize_number(str(key)):
                found.append(str(key))
    elif isinstance(value, list):
        for item in value:
            found += _numbers_under_phone_keys(item, under_phone_key)
    elif under_phone_key and isinstance(value, str | int | float) and not isinstance(value, bool):
        found.append(_as_text(value))
    return found


def _as_text(value: str | float) -> str:
    """A number sent as a JSON number, as its digits (442079460958.0 -> "442079460958")."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _numbers_of_call(call: CallRecord) -> list[str]:
    numbers = [n for n in (call.to_number, call.from_number, call.transferred_to) if n]
    return [
        *numbers,
        *(
            number
            for value in (
                call.request_data,
                call.extra,
                call.variables,
                call.metadata,
                call.analysis,
            )
            for number in _numbers_under_phone_keys(value)
        ),
    ]


def _call(call: CallRecord, mask: _Mask) -> CallRecord:
    policy = mask.policy
    extra = call.extra
    if extra is not None and policy.redact_transcripts:
        extra = {
            key: mask.free_text(value)
            if key in TRANSCRIPT_TEXT_KEYS and isinstance(value, str)
            else value
            for key, value in extra.items()
        }
    return call._replace(
        to_number=policy.number(call.to_number),
        from_number=policy.number(call.from_number),
        error_message=policy.text(mask.text(call.error_message)),
        request_data=mask.json(call.request_data),
        extra=mask.json(extra),
        # The call detail's columns (v2 calls, and v1 calls with --call-details).
        transferred_to=policy.number(call.transferred_to),
        summary=mask.free_text(call.summary)
        if policy.redact_transcripts
        else mask.text(call.summary),
        variables=mask.json(call.variables),
        metadata=mask.json(call.metadata),
        analysis=mask.json(call.analysis),
        pathway_tags=mask.json(call.pathway_tags),
    )


def _transcript_line(line: TranscriptLineRecord, mask: _Mask) -> TranscriptLineRecord:
    return line._replace(text=mask.free_text(line.text))


__all__: list[str] = [
    "PHONE_KEYS",
    "PhoneMode",
    "PhonePolicy",
    "apply_phone_policy",
    "load_phone_policy",
    "names_a_phone_number",
    "normalize_number",
    "stores_numbers_in_clear",
]

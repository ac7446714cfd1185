"""Phone numbers kept, hashed with a key, or dropped: in columns, request data and messages."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from sqlalchemy import Engine, text

from batchsync import runs
from batchsync.client import BlandClient
from batchsync.config import Secret
from batchsync.emulator import Emulator
from batchsync.errors import ConfigError
from batchsync.payload import parse_batch
from batchsync.privacy import (
    PhoneMode,
    PhonePolicy,
    apply_phone_policy,
    load_phone_policy,
    refuse_clear_numbers_over_protected,
)
from batchsync.sync import SyncOptions, run_sync

KEY = Secret("k3y-for-hmac-tests")
HASH = PhonePolicy(PhoneMode.HASH, KEY)


def raw_batch() -> dict:  # type: ignore[type-arg]
    return {
        "batch_params": {"id": "b1"},
        "analysis": {"error_messages": ["Cannot transfer to +12223334444 - gone"]},
        "call_data": [
            {
                "call_id": "c1",
                "to": "+15551230001",
                "from": "+15559990000",
                "error_message": "Invalid phone number: +15551230001",
                "request_data": {"phone_number": "+15551230001", "wait": False},
            }
        ],
    }


def test_hash_is_a_keyed_hmac_of_the_number() -> None:
    """hash stores HMAC-SHA256(key, number): stable, joinable, useless without the key."""
    parsed = apply_phone_policy(parse_batch(raw_batch(), batch_id="b1"), HASH)
    assert parsed.calls is not None
    call = parsed.calls[0]
    expected = hmac.new(b"k3y-for-hmac-tests", b"+15551230001", hashlib.sha256).hexdigest()
    assert call.to_number == expected
    assert call.request_data == {"phone_number": expected, "wait": False}
    assert call.from_number != call.to_number
    assert "+1555" not in (call.error_message or "")
    assert call.error_message is not None
    assert call.error_message.startswith("Invalid phone number: [phone:")
    assert parsed.errors is not None
    assert "+1222" not in parsed.errors[0].error_message


def test_drop_stores_null_and_scrubs_messages() -> None:
    """drop stores NULL for numbers and replaces numbers in messages with [phone]."""
    parsed = apply_phone_policy(
        parse_batch(raw_batch(), batch_id="b1"), PhonePolicy(PhoneMode.DROP)
    )
    assert parsed.calls is not None
    call = parsed.calls[0]
    assert (call.to_number, call.from_number) == (None, None)
    assert call.request_data == {"phone_number": None, "wait": False}
    assert call.error_message == "Invalid phone number: [phone]"


def test_keep_changes_nothing() -> None:
    """keep stores numbers as the API sent them."""
    parsed = parse_batch(raw_batch(), batch_id="b1")
    assert apply_phone_policy(parsed, PhonePolicy()) is parsed


def test_hash_without_a_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hashing needs BATCHSYNC_PHONE_HASH_KEY; without it the run does not start."""
    monkeypatch.delenv("BATCHSYNC_PHONE_HASH_KEY", raising=False)
    with pytest.raises(ConfigError, match="BATCHSYNC_PHONE_HASH_KEY"):
        load_phone_policy("hash")


def test_tag_names_the_key_without_revealing_it() -> None:
    """The recorded policy identifies the key by a fingerprint, never the key itself."""
    assert HASH.tag.startswith("hash:")
    assert "k3y" not in HASH.tag
    assert PhonePolicy(PhoneMode.HASH, Secret("other-key-123")).tag != HASH.tag


def test_switching_to_hash_rewrites_completed_batches(
    engine: Engine, client: BlandClient, emulator: Emulator
) -> None:
    """Changing the policy re-fetches stored batches and leaves no clear number behind."""
    run_sync(engine, client, SyncOptions(discover=True))
    result = run_sync(engine, client, SyncOptions(discover=True, phones=HASH))

    assert result.count(runs.SKIPPED) == 0
    with engine.connect() as connection:
        clear = connection.execute(
            text("select count(*) from calls where to_number like '+%' or from_number like '+%'")
        ).scalar_one()
        recorded = connection.execute(
            text("select options from sync_runs order by id desc limit 1")
        ).scalar_one()
    assert clear == 0
    assert "hash:" in str(recorded)
    again = run_sync(engine, client, SyncOptions(discover=True, phones=HASH))
    assert again.count(runs.SYNCED) == 0


def test_default_keep_over_hashed_batches_is_refused_and_explicit_policies_pass() -> None:
    """Keeping numbers in clear over batches stored hashed or dropped raises ConfigError
    naming the stored modes; hash or drop, or nothing protected stored, pass."""
    with pytest.raises(ConfigError, match="hash"):
        refuse_clear_numbers_over_protected(PhonePolicy(), {"keep", "hash:ab12"})
    refuse_clear_numbers_over_protected(PhonePolicy(), {"keep"})
    refuse_clear_numbers_over_protected(PhonePolicy(PhoneMode.DROP), {"hash:ab12"})

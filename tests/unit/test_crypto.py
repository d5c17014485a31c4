"""AEAD envelope, key cache and blind-index normalisation (no servers needed)."""

from __future__ import annotations

import asyncio
import random
import uuid

import phonenumbers
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault_service.crypto import aead
from vault_service.crypto import blind_index as bi
from vault_service.crypto.keys import BranchKey, KeyCache, KeyHierarchy
from vault_service.errors import DecryptionFailed, KmsUnavailable

RID = uuid.uuid4()


def test_field_seal_round_trip_and_binding() -> None:
    key = AESGCM(aead.new_key())
    aad = aead.field_aad(RID, "birth_name", 1)
    blob = aead.seal(key, b'"Dupont"', aad)
    assert aead.open_(key, blob, aad) == b'"Dupont"'
    assert b"Dupont" not in blob
    for other in (
        aead.field_aad(uuid.uuid4(), "birth_name", 1),  # another record
        aead.field_aad(RID, "usage_name", 1),  # another field
        aead.field_aad(RID, "birth_name", 2),  # another record-key version
    ):
        with pytest.raises(DecryptionFailed):
            aead.open_(key, blob, other)


@pytest.mark.parametrize("position", [0, 1, 13, 20, -1])
def test_any_flipped_bit_fails(position: int) -> None:
    key = AESGCM(aead.new_key())
    aad = aead.field_aad(RID, "email", 1)
    blob = bytearray(aead.seal(key, b'"a@example.org"', aad))
    blob[position] ^= 0x01
    with pytest.raises(DecryptionFailed):
        aead.open_(key, bytes(blob), aad)


def test_truncated_and_wrong_key_fail() -> None:
    key = AESGCM(aead.new_key())
    aad = aead.field_aad(RID, "email", 1)
    blob = aead.seal(key, b"x", aad)
    with pytest.raises(DecryptionFailed):
        aead.open_(key, blob[:20], aad)
    with pytest.raises(DecryptionFailed):
        aead.open_(AESGCM(aead.new_key()), blob, aad)


def test_record_key_wrap_is_bound_to_record_and_structure() -> None:
    sid = uuid.uuid4()
    branch = BranchKey(sid, 1, AESGCM(aead.new_key()))
    record_key, wrapped = KeyHierarchy.new_record_key(branch, RID)
    assert len(wrapped) == 61  # the CHECK constraint on records.record_key
    opened = KeyHierarchy.open_record_key(branch, RID, wrapped)
    blob = aead.seal(record_key, b"v", b"aad")
    assert aead.open_(opened, blob, b"aad") == b"v"
    with pytest.raises(DecryptionFailed):
        KeyHierarchy.open_record_key(branch, uuid.uuid4(), wrapped)
    other_structure = BranchKey(uuid.uuid4(), 1, branch.aead)
    with pytest.raises(DecryptionFailed):
        KeyHierarchy.open_record_key(other_structure, RID, wrapped)
    # A transfer rewraps under the target's key; the source no longer opens it.
    target = BranchKey(uuid.uuid4(), 3, AESGCM(aead.new_key()))
    moved = KeyHierarchy.rewrap_record_key(branch, target, RID, wrapped)
    assert aead.open_(KeyHierarchy.open_record_key(target, RID, moved), blob, b"aad") == b"v"
    with pytest.raises(DecryptionFailed):
        KeyHierarchy.open_record_key(branch, RID, moved)


async def test_key_cache_ttl_uses_and_single_flight() -> None:
    now = [0.0]
    cache: KeyCache[str, int] = KeyCache(ttl_seconds=10, max_uses=3, clock=lambda: now[0])
    loads = 0

    async def load() -> int:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.01)
        return loads

    # Ten concurrent misses make one load.
    values = await asyncio.gather(*(cache.get("k", load) for _ in range(10)))
    assert values == [1] * 10
    assert loads == 1
    assert await cache.get("k", load) == 1  # use 2
    assert await cache.get("k", load) == 1  # use 3
    assert await cache.get("k", load) == 2  # uses exhausted: reloaded
    now[0] = 11.0
    assert await cache.get("k", load) == 3  # TTL passed: reloaded


async def test_key_cache_failure_is_not_cached() -> None:
    cache: KeyCache[str, int] = KeyCache(ttl_seconds=10, max_uses=10)

    async def down() -> int:
        raise KmsUnavailable()

    with pytest.raises(KmsUnavailable):
        await cache.get("k", down)

    async def up() -> int:
        return 7

    assert await cache.get("k", up) == 7


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Élodie", "ELODIE"),
        ("Marie-Anne", "marie anne"),
        ("D\u2019Arc", "darc"),
        ("N'Guyen", "Nguyen"),
        ("Lefèvre", "LEFEVRE"),
        ("Œdipe", "oedipe"),
        ("  Zoé  ", "zoe"),
        ("Çelik", "celik"),
        ("Du\u200bpont", "Dupont"),  # zero-width space
        ("\u200fDupont\ufeff", "dupont"),  # bidi mark, BOM
    ],
)
def test_name_normalisation_equal(a: str, b: str) -> None:
    assert bi.normalise_name(a) == bi.normalise_name(b)


def test_name_normalisation_distinct() -> None:
    assert bi.normalise_name("Martin") != bi.normalise_name("Martine")


@pytest.mark.parametrize(
    "raw", ["06 12 34 56 78", "+33 6 12 34 56 78", "0033612345678", "06.12.34.56.78"]
)
def test_phone_normalises_to_e164(raw: str) -> None:
    assert bi.normalise_phone(raw) == "+33612345678"


def _phonenumbers_e164(value: str) -> str | None:
    """The parser's answer, which the usual French spellings skip."""
    try:
        number = phonenumbers.parse(value, "FR")
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def test_phone_fast_path_agrees_with_phonenumbers() -> None:
    rng = random.Random(14)
    prefixes = ["0", "0 ", "+33", "+33 ", "+330", "0033", "0033 ", "33", "+44 ", "00 33"]
    taken = 0
    for _ in range(20_000):
        sep = rng.choice(["", " ", ".", "-"])
        digits = [rng.choice("0123456789") for _ in range(rng.choice([8, 9, 9, 10]))]
        body = "".join(d + (sep if k % 2 == 0 else "") for k, d in enumerate(digits))
        value = rng.choice(prefixes) + body.rstrip(" .-")
        if bi._FR_PHONE.fullmatch(value) is None:
            continue
        taken += 1
        try:
            ours: str | None = bi.normalise_phone(value)
        except bi.NormalisationError:
            ours = None
        assert ours == _phonenumbers_e164(value), value
    assert taken > 1_000


def test_name_normalisation_ascii_shortcut() -> None:
    # Only non-ASCII characters are looked up; format characters still drop.
    assert bi.normalise_name("Le\u00adFevre\u2060") == bi.normalise_name("lefevre") == "lefevre"


def test_seal_fields_opens_as_fields() -> None:
    key = AESGCM(aead.new_key())
    record_id = uuid.uuid4()
    prefix = aead.field_aad_prefix(record_id, 1)
    blobs = aead.seal_fields(key, prefix, {"a": b'"x"', "b": b"[1,2]"})
    assert len({blob[1:13] for blob in blobs.values()}) == 2  # a nonce each
    assert aead.open_fields(key, prefix, blobs, ["a", "b"]) == {"a": b'"x"', "b": b"[1,2]"}
    assert aead.open_(key, blobs["a"], aead.field_aad(record_id, "a", 1)) == b'"x"'


def test_other_normalisers() -> None:
    assert bi.normalise_email(" Zoe.L@Example.ORG ") == "zoe.l@example.org"
    assert bi.normalise_date("2004-03-14") == "2004-03-14"
    assert bi.normalise_ft_id("1234567a") == "1234567A"
    assert bi.normalise_nir("2 04 03 75 111 123 94") == "204037511112394"
    assert bi.nir_key_valid("2690549588157" + "80") is (97 - 2690549588157 % 97 == 80)


@pytest.mark.parametrize(
    ("normaliser", "value"),
    [
        ("name", " - '"),
        ("date", "14/03/2004"),
        ("email", "not-an-email"),
        ("phone", "12"),
        ("nir", "204037511112395"),  # wrong control key
        ("ft_id", "12"),
    ],
)
def test_normalisation_refuses_garbage(normaliser: str, value: str) -> None:
    with pytest.raises(bi.NormalisationError) as info:
        bi.NORMALISERS[normaliser](value)
    assert value not in str(info.value)


def test_index_keys_are_scoped() -> None:
    s1, s2 = uuid.uuid4(), uuid.uuid4()
    labels = {
        bi.key_label("birth_name", s1),
        bi.key_label("birth_name", s2),
        bi.key_label("birth_name", None),
        bi.key_label("email", s1),
    }
    assert len(labels) == 4
    assert bi.digest(b"k" * 32, "dupont") != bi.digest(b"j" * 32, "dupont")


async def test_key_cache_survives_a_cancelled_caller() -> None:
    cache: KeyCache[str, int] = KeyCache(ttl_seconds=10, max_uses=10)
    started = asyncio.Event()

    async def slow() -> int:
        started.set()
        await asyncio.sleep(0.05)
        return 5

    first = asyncio.create_task(cache.get("k", slow))
    await started.wait()
    second = asyncio.create_task(cache.get("k", slow))
    await asyncio.sleep(0)
    first.cancel()  # a client went away: the shared load goes on for the others
    assert await second == 5
    assert await cache.get("k", slow) == 5

"""Property-based fuzzing of every parser that reads outside input.

The ciphertext parser, the page-cursor and integer decoders, the token front door
(the Authorization header through to verified claims), the Merkle verifier, the offline
log verifier and the signed-note parser: whatever they are given, they return or raise
their documented error type, never anything else, and what they write they read back.

`VAULT_SERVICE_FUZZ_EXAMPLES` sets the examples per property (`make fuzz` runs many
more than the test suite's default).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import uuid
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_audit_verify import ORIGIN, SyntheticLog
from tests.unit.test_merkle import LeafReader, leaves_for
from vault_service import paging
from vault_service.audit import merkle, verify
from vault_service.audit.merkle import MerkleError
from vault_service.audit.note import (
    NoteError,
    NoteVerifier,
    format_checkpoint,
    parse_checkpoint,
    parse_verifier_key,
    sign_note,
    verifier_key_string,
    verifier_map,
    verify_note,
)
from vault_service.auth.guards import authenticate
from vault_service.auth.permissions import Role, scopes_for
from vault_service.auth.tokens import ALGORITHM, TokenVerifier, VerificationKey, thumbprint
from vault_service.crypto import aead
from vault_service.errors import DecryptionFailed, InvalidParameter, Unauthenticated
from vault_service.settings import Settings

# After the integration tests, the session's service keeps running in the test client's
# thread, and its background tasks draw from `random` (jitter) while these run:
# hypothesis would take that for a strategy using `random`. Nothing here does.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
EXAMPLES = int(os.environ.get("VAULT_SERVICE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
uint64 = st.integers(min_value=0, max_value=2**64 - 1)
any_int = st.one_of(st.integers(), uint64, st.integers(min_value=-5, max_value=70))
hashes = st.binary(min_size=32, max_size=32)
any_hash = st.one_of(hashes, st.binary(max_size=40))


# --- the ciphertext parser ---------------------------------------------------------------
KEY = AESGCM(aead.new_key())


@FUZZ
@given(blob=st.binary(max_size=200), aad=st.binary(max_size=64))
def test_open_refuses_any_blob_with_decryption_failed_only(blob: bytes, aad: bytes) -> None:
    with pytest.raises(DecryptionFailed):
        aead.open_(KEY, blob, aad)


@FUZZ
@given(plaintext=st.binary(max_size=300), aad=st.binary(max_size=64), data=st.data())
def test_seal_open_round_trip_and_any_change_is_refused(
    plaintext: bytes, aad: bytes, data: st.DataObject
) -> None:
    blob = aead.seal(KEY, plaintext, aad)
    assert aead.open_(KEY, blob, aad) == plaintext
    position = data.draw(st.integers(min_value=0, max_value=len(blob) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=7))
    tampered = bytearray(blob)
    tampered[position] ^= 1 << bit
    with pytest.raises(DecryptionFailed):
        aead.open_(KEY, bytes(tampered), aad)
    with pytest.raises(DecryptionFailed):
        aead.open_(KEY, blob[: data.draw(st.integers(min_value=0, max_value=len(blob) - 1))], aad)
    with pytest.raises(DecryptionFailed):
        aead.open_(KEY, blob, aad + b"x")


@FUZZ
@given(
    blobs=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.binary(max_size=60), max_size=3),
    names=st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3),
)
def test_open_fields_refuses_any_blobs_with_decryption_failed_only(
    blobs: dict[str, bytes], names: list[str]
) -> None:
    with pytest.raises(DecryptionFailed):
        aead.open_fields(KEY, b"prefix", blobs, names)


@FUZZ
@given(values=st.dictionaries(st.sampled_from(["a", "b"]), st.binary(max_size=80), min_size=1))
def test_open_fields_round_trip(values: dict[str, bytes]) -> None:
    prefix = aead.field_aad_prefix(uuid.uuid4(), 1)
    blobs = {name: aead.seal(KEY, value, prefix + name.encode()) for name, value in values.items()}
    assert aead.open_fields(KEY, prefix, blobs, list(values)) == values


# --- page cursors and integer parameters --------------------------------------------------
@FUZZ
@given(cursor=st.one_of(st.text(max_size=40), st.text("ABCDEFGHabcdefgh0123-_=+/", max_size=24)))
def test_cursor_decoders_refuse_with_invalid_parameter_only(cursor: str) -> None:
    for decode, encode in (
        (paging.decode_uuid_cursor, paging.encode_uuid_cursor),
        (paging.decode_index_cursor, paging.encode_index_cursor),
    ):
        try:
            value = decode(cursor)
        except InvalidParameter as exc:
            detail = exc.detail
        else:
            detail = None
        if detail is not None:
            assert detail == "cursor is not valid"  # never the value
            continue
        # Only the service's own output decodes: its canonical form, and nothing else.
        assert encode(value) == cursor  # type: ignore[arg-type]


@FUZZ
@given(value=st.uuids(), index=st.integers(min_value=0, max_value=paging.BIGINT_MAX))
def test_cursors_round_trip(value: uuid.UUID, index: int) -> None:
    assert paging.decode_uuid_cursor(paging.encode_uuid_cursor(value)) == value
    assert paging.decode_index_cursor(paging.encode_index_cursor(index)) == index


@FUZZ
@given(raw=st.text(max_size=30), low=st.integers(0, 10), high=st.integers(10, 2**63 - 1))
def test_query_int_accepts_plain_digits_in_range_only(raw: str, low: int, high: int) -> None:
    try:
        value = paging.query_int({"n": raw}, "n", default=None, minimum=low, maximum=high)
    except InvalidParameter as exc:
        refused = exc.detail
    else:
        refused = None
    if refused is not None:
        assert refused == f"n must be an integer between {low} and {high}"  # never the value
        return
    assert raw.isascii() and raw.isdigit() and value == int(raw) and low <= value <= high


# --- the token front door -----------------------------------------------------------------
ISSUER, AUDIENCE = "https://vault-service.test", "vault-service-test"
_PRIVATE = Ed25519PrivateKey.generate()
_PUBLIC_RAW = _PRIVATE.public_key().public_bytes(
    serialization.Encoding.Raw, serialization.PublicFormat.Raw
)
_KEY = VerificationKey(thumbprint(_PUBLIC_RAW), 1, _PUBLIC_RAW, _PRIVATE.public_key())


class _Keys:
    """The verification keys as SigningKeys holds them once read from Vault (the front
    door's parsing is what is fuzzed here; Vault is exercised by the integration tests)."""

    by_kid = {_KEY.kid: _KEY}

    async def lookup(self, kid: str) -> VerificationKey | None:
        return self.by_kid.get(kid)


class _Gate:
    async def principal(self, claims: Any) -> Any:
        return claims


_SETTINGS = Settings.from_env(
    {
        "VAULT_SERVICE_DATABASE_URL": "postgresql://vs@127.0.0.1/vs",
        "VAULT_SERVICE_VAULT_ADDR": "http://127.0.0.1:8200",
        "VAULT_SERVICE_VAULT_TOKEN": "unused",
        "VAULT_SERVICE_JWT_ISSUER": ISSUER,
        "VAULT_SERVICE_JWT_AUDIENCE": AUDIENCE,
    }
)


def _front_door(header: bytes | None) -> Any:
    """Run the Authorization header through the real guard and verifier."""
    state = SimpleNamespace(
        settings=_SETTINGS,
        account_gate=_Gate(),
        external_issuers=None,
        token_verifier=TokenVerifier(_SETTINGS, _Keys()),  # type: ignore[arg-type]
    )
    headers = [] if header is None else [(b"authorization", header)]
    scope = {"app": SimpleNamespace(state=state), "headers": headers, "state": {}}
    return asyncio.run(authenticate(scope))  # type: ignore[arg-type]


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": str(uuid.uuid4()),
        "jti": str(uuid.uuid4()),
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "role": "counsellor",
        "scope": " ".join(sorted(scopes_for(Role.COUNSELLOR))),
        "structure": str(uuid.uuid4()),
    }
    claims.update(overrides)
    return claims


def _sign(claims: dict[str, Any], **header: Any) -> str:
    return jwt.encode(claims, _PRIVATE, algorithm=ALGORITHM, headers={"kid": _KEY.kid, **header})


def _segment(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@FUZZ
@given(header=st.one_of(st.none(), st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_any_authorization_header_is_refused_as_unauthenticated_only(
    header: bytes | None,
) -> None:
    with pytest.raises(Unauthenticated):
        _front_door(header)


@FUZZ
@given(
    jose=st.one_of(
        json_values,
        st.fixed_dictionaries(
            {"alg": st.just(ALGORITHM)},
            optional={
                "kid": st.one_of(st.just(_KEY.kid), st.text(max_size=50)),
                "crit": json_values,
                "typ": json_values,
            },
        ),
    ),
    payload=st.one_of(json_values, st.builds(_claims)),
    signature=st.binary(max_size=80),
)
def test_forged_tokens_are_refused_as_unauthenticated_only(
    jose: Any, payload: Any, signature: bytes
) -> None:
    token = f"{_segment(jose)}.{_segment(payload)}.{_segment(signature)}"
    with pytest.raises(Unauthenticated):
        _front_door(f"Bearer {token}".encode())


@FUZZ
@given(
    overrides=st.fixed_dictionaries(
        {},
        optional={
            "iss": json_values,
            "aud": json_values,
            "sub": json_values,
            "jti": json_values,
            "iat": st.one_of(st.integers(), json_values),
            "nbf": st.one_of(st.integers(), json_values),
            "exp": st.one_of(st.integers(), json_values),
            "role": json_values,
            "structure": json_values,
        },
    ),
    drop=st.lists(st.sampled_from(["iss", "aud", "exp", "nbf", "iat", "sub", "jti", "role"])),
)
def test_signed_tokens_with_any_claims_verify_or_are_refused_as_unauthenticated(
    overrides: dict[str, Any], drop: list[str]
) -> None:
    claims = _claims(**overrides)
    for name in drop:
        claims.pop(name, None)
    try:
        token = _sign(claims)
    except (TypeError, ValueError):
        return  # PyJWT will not even encode it (e.g. a non-numeric exp)
    try:
        verified = _front_door(f"Bearer {token}".encode())
    except Unauthenticated:
        return
    # What passes is exactly what was signed, with every required claim sane.
    assert str(verified.sub) == claims["sub"] and str(verified.jti) == claims["jti"]
    assert claims["iss"] == ISSUER and claims["aud"] == AUDIENCE
    assert verified.exp - verified.iat <= _SETTINGS.tokens.max_lifetime_seconds


@FUZZ
@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=127))
def test_a_valid_token_round_trips_and_any_change_is_refused(position: int, flip: int) -> None:
    claims = _claims()
    token = _sign(claims)
    verified = _front_door(f"Bearer {token}".encode())
    assert (str(verified.sub), str(verified.jti)) == (claims["sub"], claims["jti"])
    index = position % len(token)
    changed = token[:index] + chr((ord(token[index]) + flip) % 128) + token[index + 1 :]
    if changed == token:
        return
    try:
        again = _front_door(f"Bearer {changed}".encode())
    except Unauthenticated:
        return
    # Base64url's last character can carry unused bits: the same bytes, so the same claims.
    assert (str(again.sub), str(again.jti)) == (claims["sub"], claims["jti"])


# --- the Merkle verifier --------------------------------------------------------------------
@FUZZ
@given(
    leaf=any_hash,
    index=any_int,
    size=any_int,
    proof=st.lists(any_hash, max_size=70),
    root=any_hash,
)
def test_verify_inclusion_raises_merkle_error_only(
    leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes
) -> None:
    try:
        merkle.verify_inclusion(leaf, index, size, proof, root)
    except MerkleError:
        return
    # Random input that verifies would be a forgery: only a one-leaf tree allows it.
    assert size == 1 and index == 0 and proof == [] and leaf == root


@FUZZ
@given(
    size1=any_int,
    size2=any_int,
    root1=any_hash,
    root2=any_hash,
    proof=st.lists(any_hash, max_size=70),
)
def test_verify_consistency_raises_merkle_error_only(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes]
) -> None:
    try:
        merkle.verify_consistency(size1, size2, root1, root2, proof)
    except MerkleError:
        return
    assert size1 == size2 and root1 == root2 and proof == []


@FUZZ
@given(data=st.data(), size=st.integers(min_value=1, max_value=300))
def test_merkle_proofs_round_trip_and_any_change_is_refused(data: st.DataObject, size: int) -> None:
    leaves = leaves_for(size, seed=size)
    reader = LeafReader(leaves)
    root = merkle.root(size, reader)
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    proof = merkle.inclusion_proof(index, size, reader)
    merkle.verify_inclusion(leaves[index], index, size, proof, root)
    first = data.draw(st.integers(min_value=1, max_value=size))
    consistency = merkle.consistency_proof(first, size, reader)
    first_root = merkle.root(first, LeafReader(leaves, first))
    merkle.verify_consistency(first, size, first_root, root, consistency)
    if proof:
        at = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        bad = [*proof]
        bad[at] = bytes([bad[at][0] ^ 1]) + bad[at][1:]
        with pytest.raises(MerkleError):
            merkle.verify_inclusion(leaves[index], index, size, bad, root)
        with pytest.raises(MerkleError):
            merkle.verify_inclusion(leaves[index], index, size, proof[:-1], root)
    if consistency:
        with pytest.raises(MerkleError):
            merkle.verify_consistency(first, size, first_root, root, [*consistency, root])


# --- the offline verifier's files -------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticLog:
    log = SyntheticLog(tmp_path_factory.mktemp("fuzz-verify"))
    log.append(40)
    log.keys()
    log.checkpoint("c.txt")
    return log


b64 = st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode())
files = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {
            "format": st.sampled_from([verify.BUNDLE_FORMAT, verify.CONSISTENCY_FORMAT, "x"]),
            "origin": st.sampled_from([ORIGIN, "other"]),
            "tree_size": any_int,
            "start": any_int,
            "end": any_int,
            "frontier": st.lists(b64, max_size=4),
            "consistency": st.lists(b64, max_size=4),
            "entries": st.lists(
                st.fixed_dictionaries(
                    {"index": any_int, "leaf": b64},
                    optional={"salt": st.one_of(st.none(), b64), "body": json_values},
                ),
                max_size=4,
            ),
        }
    ).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {
            "format": st.just(verify.INCLUSION_FORMAT),
            "origin": st.just(ORIGIN),
            "index": any_int,
            "tree_size": any_int,
            "leaf": b64,
            "proof": st.lists(b64, max_size=8),
        }
    ).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {
            "format": st.just(verify.CONSISTENCY_FORMAT),
            "origin": st.just(ORIGIN),
            "from": any_int,
            "to": any_int,
            "proof": st.lists(b64, max_size=8),
        }
    ).map(lambda v: json.dumps(v).encode()),
)


@FUZZ
@given(content=files, kind=st.sampled_from(["bundles", "inclusions", "consistency", "keys"]))
def test_offline_verifier_fails_or_refuses_input_never_crashes(
    synthetic: SyntheticLog, content: bytes, kind: str
) -> None:
    path = synthetic.dir / f"fuzz-{kind}.json"
    path.write_bytes(content)
    keys = path if kind == "keys" else synthetic.dir / "keys.json"
    extra = {} if kind == "keys" else {kind: [path]}
    try:
        report = verify.run(keys=keys, checkpoint=synthetic.dir / "c.txt", **extra)
    except verify.InputError:
        return
    assert kind != "keys" and not report.passed  # random input never verifies


# --- the signed-note parser -------------------------------------------------------------------
_NOTE_KEY = Ed25519PrivateKey.generate()
_NOTE_PUBLIC = _NOTE_KEY.public_key().public_bytes(
    serialization.Encoding.Raw, serialization.PublicFormat.Raw
)
_VERIFIERS = verifier_map(NoteVerifier.from_public_key(ORIGIN, _NOTE_PUBLIC))


@FUZZ
@given(
    note=st.one_of(
        st.text(max_size=400),
        st.builds(lambda a, b: f"{a}\n\n— {b}\n", st.text(max_size=100), st.text(max_size=120)),
    )
)
def test_verify_note_raises_note_error_only(note: str) -> None:
    with pytest.raises(NoteError):
        verify_note(note, _VERIFIERS)


@FUZZ
@given(body=st.text(max_size=300))
def test_parse_checkpoint_raises_note_error_only(body: str) -> None:
    try:
        checkpoint = parse_checkpoint(body)
    except NoteError:
        return
    assert format_checkpoint(checkpoint.origin, checkpoint.size, checkpoint.root) == body


@FUZZ
@given(
    vkey=st.one_of(
        st.text(max_size=120),
        st.builds(lambda n, k: f"{n}+{k}", st.text(max_size=20), st.text(max_size=60)),
    )
)
def test_parse_verifier_key_raises_note_error_only(vkey: str) -> None:
    try:
        verifier = parse_verifier_key(vkey)
    except NoteError:
        return
    assert verifier_key_string(verifier.name, verifier.public_key) == vkey


@FUZZ
@given(size=uint64, root=hashes, data=st.data())
def test_signed_checkpoints_round_trip_and_any_change_is_refused(
    size: int, root: bytes, data: st.DataObject
) -> None:
    body = format_checkpoint(ORIGIN, size, root)
    note = sign_note(body, ORIGIN, _NOTE_PUBLIC, _NOTE_KEY.sign)
    assert verify_note(note, _VERIFIERS) == body
    checkpoint = parse_checkpoint(body)
    assert (checkpoint.origin, checkpoint.size, checkpoint.root) == (ORIGIN, size, root)
    index = data.draw(st.integers(min_value=0, max_value=len(note) - 2))
    replacement = data.draw(st.characters(codec="ascii"))
    changed = note[:index] + replacement + note[index + 1 :]
    if changed == note:
        return
    try:
        verified = verify_note(changed, _VERIFIERS)
    except NoteError:
        return
    # Only a change that leaves the signed text and the signature's bytes alone passes.
    assert verified == body

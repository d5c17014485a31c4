"""Signed notes and checkpoints, anchored on golang.org/x/mod/sumdb/note's published
example (Ed25519 is deterministic, so our signer must reproduce it byte for byte)."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from vault_service.audit.merkle import EMPTY_ROOT
from vault_service.audit.note import (
    Checkpoint,
    NoteError,
    NoteVerifier,
    ed25519_key_id,
    format_checkpoint,
    parse_checkpoint,
    parse_verifier_key,
    sign_note,
    verifier_key_string,
    verifier_map,
    verify_note,
)
from vault_service.errors import ConfigurationError, VaultServiceError

# golang.org/x/mod/sumdb/note package documentation and note_test.go.
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n"
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
# Other published verifier keys: one whose base64 contains "+", to test the split.
OTHER_VKEYS = [
    "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop",
    "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6",
]
# c2sp.org/tlog-checkpoint example text.
SPEC_CHECKPOINT = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
)


def go_private_key() -> Ed25519PrivateKey:
    key_data = GO_SKEY.split("+", 4)[4]
    raw = base64.b64decode(key_data)
    assert raw[0] == 0x01
    return Ed25519PrivateKey.from_private_bytes(raw[1:])


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class Key:
    """A test signer: the private key stays in the object, as it stays in Vault."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.private = Ed25519PrivateKey.generate()
        self.public = public_bytes(self.private)
        self.verifier = NoteVerifier.from_public_key(name, self.public)

    @property
    def sign(self) -> Callable[[bytes], bytes]:
        return self.private.sign

    def signature_line(self, text: str) -> str:
        sig = self.verifier.key_id.to_bytes(4, "big") + self.private.sign(text.encode())
        return f"\u2014 {self.name} {base64.b64encode(sig).decode()}\n"


@pytest.fixture
def log_key() -> Key:
    return Key("vault.example/log")


@pytest.fixture
def body() -> str:
    return format_checkpoint("vault.example/log", 42, EMPTY_ROOT)


# --- interoperability anchors -------------------------------------------------------


def test_reproduces_go_signed_note_byte_for_byte() -> None:
    private = go_private_key()
    note = sign_note(GO_TEXT, "PeterNeumann", public_bytes(private), private.sign)
    assert note == GO_NOTE


def test_verifies_go_signed_note() -> None:
    verifier = parse_verifier_key(GO_VKEY)
    assert verify_note(GO_NOTE, verifier_map(verifier)) == GO_TEXT
    tampered = GO_NOTE.replace("cryptography", "cryptographY")
    with pytest.raises(NoteError):
        verify_note(tampered, verifier_map(verifier))


def test_key_id_and_verifier_string_match_go() -> None:
    verifier = parse_verifier_key(GO_VKEY)
    assert verifier.name == "PeterNeumann"
    assert verifier.key_id == 0xC74F20A3
    assert ed25519_key_id("PeterNeumann", verifier.public_key) == 0xC74F20A3
    assert verifier_key_string("PeterNeumann", public_bytes(go_private_key())) == GO_VKEY


@pytest.mark.parametrize("vkey", OTHER_VKEYS)
def test_published_verifier_keys_round_trip(vkey: str) -> None:
    verifier = parse_verifier_key(vkey)
    assert verifier_key_string(verifier.name, verifier.public_key) == vkey


def test_parses_spec_checkpoint_example() -> None:
    checkpoint = parse_checkpoint(SPEC_CHECKPOINT)
    assert checkpoint == Checkpoint(
        origin="example.com/behind-the-sofa",
        size=20852163,
        root=base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="),
    )
    assert format_checkpoint(checkpoint.origin, checkpoint.size, checkpoint.root) == (
        SPEC_CHECKPOINT
    )


# --- signing -----------------------------------------------------------------------------


def test_sign_then_verify(log_key: Key, body: str) -> None:
    seen: list[bytes] = []

    def sign(message: bytes) -> bytes:
        seen.append(message)
        return log_key.private.sign(message)

    note = sign_note(body, log_key.name, log_key.public, sign)
    assert seen == [body.encode()]  # exactly the body bytes, nothing else
    assert note.startswith(body + "\n\u2014 vault.example/log ")
    assert verify_note(note, verifier_map(log_key.verifier)) == body
    assert parse_checkpoint(verify_note(note, verifier_map(log_key.verifier))) == Checkpoint(
        origin="vault.example/log", size=42, root=EMPTY_ROOT
    )


def test_sign_refuses_a_signer_that_does_not_match_the_public_key(log_key: Key, body: str) -> None:
    other = Key(log_key.name)
    with pytest.raises(ConfigurationError):
        sign_note(body, log_key.name, log_key.public, other.sign)
    with pytest.raises(ConfigurationError):
        sign_note(body, log_key.name, log_key.public, lambda _: b"\x00" * 64)
    with pytest.raises(ConfigurationError):
        sign_note(body, log_key.name, log_key.public, lambda _: b"short")


@pytest.mark.parametrize(
    "text", ["no newline", "", "tab\there\n", "cr\r\n", "nul\x00\n", "surrogate \udc80\n"]
)
def test_sign_refuses_bad_text(log_key: Key, text: str) -> None:
    with pytest.raises(NoteError):
        sign_note(text, log_key.name, log_key.public, log_key.sign)


@pytest.mark.parametrize("name", ["", "has space", "has+plus", "tab\t", "nbsp\u00a0x"])
def test_sign_refuses_bad_key_names(log_key: Key, body: str, name: str) -> None:
    with pytest.raises(NoteError):
        sign_note(body, name, log_key.public, log_key.sign)


def test_sign_refuses_bad_public_key(log_key: Key, body: str) -> None:
    with pytest.raises(NoteError):
        sign_note(body, log_key.name, log_key.public[:31], log_key.sign)


# --- verifying -------------------------------------------------------------------------


def test_unknown_signatures_are_ignored_but_not_enough(log_key: Key, body: str) -> None:
    witness = Key("witness.example/w1")
    note = sign_note(body, log_key.name, log_key.public, log_key.sign)
    cosigned = note + witness.signature_line(body)
    assert verify_note(cosigned, verifier_map(log_key.verifier)) == body
    assert verify_note(cosigned, verifier_map(witness.verifier)) == body
    with pytest.raises(NoteError):
        verify_note(note, verifier_map(witness.verifier))
    with pytest.raises(NoteError):
        verify_note(note, {})


def test_same_name_other_key_is_unknown_not_trusted(log_key: Key, body: str) -> None:
    impostor = Key(log_key.name)  # same name, different key id
    note = body + "\n" + impostor.signature_line(body)
    with pytest.raises(NoteError, match="no trusted key"):
        verify_note(note, verifier_map(log_key.verifier))


def test_a_failing_trusted_signature_rejects_the_whole_note(log_key: Key, body: str) -> None:
    witness = Key("witness.example/w1")
    good = body + "\n" + witness.signature_line(body)
    forged_sig = log_key.verifier.key_id.to_bytes(4, "big") + b"\x00" * 64
    forged = f"\u2014 {log_key.name} {base64.b64encode(forged_sig).decode()}\n"
    trusted = verifier_map(log_key.verifier, witness.verifier)
    assert verify_note(good, trusted) == body
    with pytest.raises(NoteError):
        verify_note(good + forged, trusted)


def test_a_trusted_key_signing_twice_is_refused(log_key: Key, body: str) -> None:
    note = sign_note(body, log_key.name, log_key.public, log_key.sign)
    with pytest.raises(NoteError):
        verify_note(note + note.split("\n\n")[1], verifier_map(log_key.verifier))


def test_tampering_is_detected(log_key: Key, body: str) -> None:
    note = sign_note(body, log_key.name, log_key.public, log_key.sign)
    trusted = verifier_map(log_key.verifier)
    for tampered in (
        note.replace("\n42\n", "\n43\n"),
        note.replace("vault.example/log\n", "vault.example/lag\n", 1),
        "extra line\n" + note,
    ):
        with pytest.raises(NoteError):
            verify_note(tampered, trusted)


def _sig_b64(note: str) -> str:
    return note.rsplit(" ", 1)[1].rstrip("\n")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda n: n[:-1],  # note does not end with a newline
        lambda n: n.replace("\n\n", "\n"),  # no blank line before signatures
        lambda n: n.replace("\u2014 ", "- "),  # not an em dash
        lambda n: n.replace("\u2014 ", "\u2014"),  # no space after the dash
        lambda n: n.replace("/log ", "/log  "),  # double space
        lambda n: n[:-1] + " \n",  # trailing space
        lambda n: n + "\n",  # trailing blank line
        lambda n: n + "\u2014 \n",  # empty name and signature
        lambda n: n + "\u2014 x\n",  # no signature
        lambda n: n + "\u2014 x AAAA\n",  # too short for a key id and a signature
        lambda n: n + "\u2014 x !!!!\n",  # not base64
        lambda n: n.replace("\n\u2014", "\r\n\u2014"),  # control character
        lambda n: n.replace(_sig_b64(n), _sig_b64(n).rstrip("=")),  # missing padding
        lambda n: n.replace("\u2014 vault.example/log", "\u2014 vault+example/log"),
        lambda n: n + "\u2014 x " + base64.b64encode(b"\x00" * 68).decode() + "\u0085\n",
    ],
)
def test_malformed_notes_are_refused(log_key: Key, body: str, mangle: Callable[[str], str]) -> None:
    note = sign_note(body, log_key.name, log_key.public, log_key.sign)
    with pytest.raises(NoteError):
        verify_note(mangle(note), verifier_map(log_key.verifier))


def test_non_canonical_base64_signature_is_refused(log_key: Key, body: str) -> None:
    note = sign_note(body, log_key.name, log_key.public, log_key.sign)
    sig = _sig_b64(note)
    # 68 bytes encode to 92 characters ending "=": the last data character carries
    # 2 unused bits, zero when canonical; setting one spells the same bytes otherwise.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = sig[-2]
    twin = alphabet[alphabet.index(last) | 1]
    assert twin != last
    assert base64.b64decode(sig[:-2] + twin + "=") == base64.b64decode(sig)
    with pytest.raises(NoteError):
        verify_note(note.replace(sig, sig[:-2] + twin + "="), verifier_map(log_key.verifier))


def test_signature_count_is_capped(log_key: Key, body: str) -> None:
    note = sign_note(body, log_key.name, log_key.public, log_key.sign)
    unknown = "\u2014 other " + base64.b64encode(b"\x01" * 68).decode() + "\n"
    assert verify_note(note + unknown * 15, verifier_map(log_key.verifier)) == body
    with pytest.raises(NoteError, match="too many"):
        verify_note(note + unknown * 100, verifier_map(log_key.verifier))


def test_verifier_map_refuses_colliding_keys(log_key: Key) -> None:
    forged = NoteVerifier(log_key.name, log_key.verifier.key_id, b"\x00" * 32)
    with pytest.raises(ConfigurationError):
        verifier_map(log_key.verifier, forged)
    assert verifier_map(log_key.verifier, log_key.verifier) == {
        (log_key.name, log_key.verifier.key_id): log_key.verifier
    }


def test_misfiled_verifier_is_a_configuration_error(log_key: Key, body: str) -> None:
    note = sign_note(body, log_key.name, log_key.public, log_key.sign)
    other = Key("elsewhere")
    with pytest.raises(ConfigurationError):
        verify_note(note, {(log_key.name, log_key.verifier.key_id): other.verifier})


# --- verifier keys -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "vkey",
    [
        "",
        "PeterNeumann",
        "PeterNeumann+c74f20a3",
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong id
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # uppercase
        "PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # 7 digits
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+AhpcZ2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # type 0x02
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10",  # short key
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T",  # bad base64
        "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
)
def test_malformed_verifier_keys_are_refused(vkey: str) -> None:
    with pytest.raises(NoteError):
        parse_verifier_key(vkey)


# --- checkpoints -------------------------------------------------------------------------


def test_checkpoint_round_trip_and_extensions() -> None:
    root = bytes(range(32))
    text = format_checkpoint("vault.example/log", 7, root)
    assert text == f"vault.example/log\n7\n{base64.b64encode(root).decode()}\n"
    assert parse_checkpoint(text) == Checkpoint("vault.example/log", 7, root)
    extended = parse_checkpoint(text + "ext one\next two\n")
    assert extended.extensions == ("ext one", "ext two")
    assert parse_checkpoint(format_checkpoint("o", 0, EMPTY_ROOT)).size == 0
    big = parse_checkpoint(format_checkpoint("o", (1 << 64) - 1, root))
    assert big.size == (1 << 64) - 1


ROOT64 = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n",
        f"origin\n7\n{ROOT64}",  # no final newline
        f"origin\n7\n{ROOT64}\n\n",  # empty extension line
        f"\n7\n{ROOT64}\n",  # empty origin
        "origin\n7\n",  # no root
        f"origin\n\n{ROOT64}\n",
        f"origin\n07\n{ROOT64}\n",  # leading zero
        f"origin\n+7\n{ROOT64}\n",
        f"origin\n-7\n{ROOT64}\n",
        f"origin\n 7\n{ROOT64}\n",
        f"origin\n1_000\n{ROOT64}\n",
        f"origin\n\u0667\n{ROOT64}\n",  # Arabic-Indic seven: int() would accept it
        f"origin\n{1 << 64}\n{ROOT64}\n",  # beyond uint64
        f"origin\n{'9' * 5000}\n{ROOT64}\n",
        f"origin\n7\n{base64.b64encode(bytes(31)).decode()}\n",
        f"origin\n7\n{base64.b64encode(bytes(33)).decode()}\n",
        f"origin\n7\n{ROOT64.rstrip('=')}\n",  # unpadded
        f"origin\n7\n{ROOT64[:-2]}B=\n",  # non-canonical trailing bits
        f"origin\n7\n{ROOT64.replace('A', '-', 1)}\n",  # URL-safe alphabet
        f"origin\r\n7\r\n{ROOT64}\r\n",
    ],
)
def test_malformed_checkpoints_are_refused(text: str) -> None:
    with pytest.raises(NoteError):
        parse_checkpoint(text)


@pytest.mark.parametrize(
    ("origin", "size", "root"),
    [
        ("", 1, EMPTY_ROOT),
        ("two\nlines", 1, EMPTY_ROOT),
        ("with space", 1, EMPTY_ROOT),
        ("with+plus", 1, EMPTY_ROOT),
        ("o", -1, EMPTY_ROOT),
        ("o", 1 << 64, EMPTY_ROOT),
        ("o", True, EMPTY_ROOT),
        ("o", 1, EMPTY_ROOT[:31]),
    ],
)
def test_format_checkpoint_refuses_bad_fields(origin: str, size: int, root: bytes) -> None:
    with pytest.raises(NoteError):
        format_checkpoint(origin, size, root)


def test_note_error_is_a_stable_400() -> None:
    assert issubclass(NoteError, VaultServiceError)
    assert NoteError.code == "invalid_note"
    assert NoteError.status == 400

"""External OIDC issuers: every refusal has its stable code; the JWKS cache rotates,
rate-limits its refreshes and fails closed. The IdP is an in-memory fetch here; the
real HTTP path is in tests/integration/test_oidc_jwks.py."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.warnings import InsecureKeyLengthWarning

from vault_service.auth import oidc
from vault_service.auth.oidc import (
    ExternalClaims,
    ExternalIssuers,
    JwksFetchError,
    fetch_jwks,
    unverified_issuer,
)
from vault_service.errors import ConfigurationError, Unauthenticated
from vault_service.settings.issuers import IssuerConfig, parse_issuers

ISS = "https://idp.mission-locale.example/realms/ml"
AUD = "vault-service"
ALL_ALGS = ("RS256", "PS256", "ES256", "EdDSA")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwk(public_key: Any, kid: str, alg: str | None = None, **extra: Any) -> dict[str, Any]:
    if isinstance(public_key, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public_key, as_dict=True)
    jwk = {**jwk, "kid": kid, "use": "sig", **extra}
    if alg is not None:
        jwk["alg"] = alg
    return {k: v for k, v in jwk.items() if v is not None}


class Keys:
    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.rsa2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.ed = Ed25519PrivateKey.generate()

    def signer(self, alg: str) -> tuple[Any, str]:
        return {
            "RS256": (self.rsa, "rsa-1"),
            "PS256": (self.rsa, "rsa-1"),
            "ES256": (self.ec, "ec-1"),
            "EdDSA": (self.ed, "ed-1"),
        }[alg]

    def jwks(self) -> dict[str, Any]:
        return {
            "keys": [
                # no alg member: usable for RS256 and PS256, as configured
                _jwk(self.rsa.public_key(), "rsa-1"),
                _jwk(self.ec.public_key(), "ec-1", "ES256"),
                _jwk(self.ed.public_key(), "ed-1", "EdDSA"),
            ]
        }


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


class FakeIdP:
    """The fetch callable: serves a JWKS, counts requests, can go down."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.body: bytes | None = None  # overrides jwks when set
        self.down = False
        self.fetches = 0
        self.urls: list[str] = []
        self.threads: set[int] = set()
        self.before: Callable[[], None] | None = None  # runs in the fetch thread

    def __call__(self, url: str) -> bytes:
        self.fetches += 1
        self.urls.append(url)
        self.threads.add(threading.get_ident())
        if self.before is not None:
            self.before()
        if self.down:
            raise OSError("connection refused")
        if self.body is not None:
            return self.body
        return json.dumps(self.jwks).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def config(**over: Any) -> IssuerConfig:
    base: dict[str, Any] = {
        "issuer": ISS,
        "audience": AUD,
        "jwks_uri": ISS + "/protocol/openid-connect/certs",
        "algorithms": ALL_ALGS,
    }
    base.update(over)
    return IssuerConfig(**base)


@pytest.fixture
def idp(keys: Keys) -> FakeIdP:
    return FakeIdP(keys.jwks())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make(idp: FakeIdP, clock: Clock) -> Callable[..., ExternalIssuers]:
    def _make(*configs: IssuerConfig, **kw: Any) -> ExternalIssuers:
        return ExternalIssuers(configs or (config(),), fetch=idp, clock=clock, **kw)

    return _make


@pytest.fixture
def issuers(make: Callable[..., ExternalIssuers]) -> ExternalIssuers:
    return make()


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "f:ml-idp:counsellor-42",
        "jti": str(uuid.uuid4()),
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "acr": "eidas2",
        "amr": ["pwd", "otp", "mfa"],
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def sign(keys: Keys, alg: str = "RS256", *, kid: str | None = None, **over: Any) -> str:
    key, default_kid = keys.signer(alg)
    headers = {"kid": default_kid if kid is None else kid}
    return jwt.encode(claims(**over), key, algorithm=alg, headers=headers)


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"x") -> str:
    """A token built by hand, for headers PyJWT would not let us write."""
    return (
        _b64(json.dumps(header).encode())
        + "."
        + _b64(json.dumps(payload).encode())
        + "."
        + _b64(signature)
    )


def rs256_with_header(keys: Keys, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """A correctly RS256-signed token with an arbitrary header."""
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())
    signature = RSAAlgorithm(RSAAlgorithm.SHA256).sign(signing_input.encode(), keys.rsa)
    return signing_input + "." + _b64(signature)


async def reason_of(issuers: ExternalIssuers, token: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        await issuers.verify(token)
    return caught.value.reason


# --- happy paths ----------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALL_ALGS)
async def test_each_algorithm_verifies(issuers: ExternalIssuers, keys: Keys, alg: str) -> None:
    body = claims()
    token = jwt.encode(
        body, keys.signer(alg)[0], algorithm=alg, headers={"kid": keys.signer(alg)[1]}
    )
    got = await issuers.verify(token)
    assert got == ExternalClaims(
        issuer=ISS,
        subject=body["sub"],
        jti=body["jti"],
        iat=body["iat"],
        exp=body["exp"],
        acr="eidas2",
        amr=("pwd", "otp", "mfa"),
    )


async def test_token_id_is_stable_and_scoped_by_issuer(
    issuers: ExternalIssuers, keys: Keys
) -> None:
    jti = str(uuid.uuid4())
    first = await issuers.verify(sign(keys, jti=jti))
    again = await issuers.verify(sign(keys, "ES256", jti=jti))
    assert first.token_id() == again.token_id()
    assert isinstance(first.token_id(), uuid.UUID)
    other = msgspec.structs.replace(first, issuer="https://login.partner.example")
    assert other.token_id() != first.token_id()


async def test_optional_claims_absent(issuers: ExternalIssuers, keys: Keys) -> None:
    got = await issuers.verify(sign(keys, nbf=None, acr=None, amr=None))
    assert got.acr is None
    assert got.amr == ()


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+jwt", "application/at+jwt", None])
async def test_accepted_typ(issuers: ExternalIssuers, keys: Keys, typ: str | None) -> None:
    header = {"alg": "RS256", "kid": "rsa-1"}
    if typ is not None:
        header["typ"] = typ
    await issuers.verify(rs256_with_header(keys, header, claims()))


async def test_fetch_runs_in_a_worker_thread(
    issuers: ExternalIssuers, idp: FakeIdP, keys: Keys
) -> None:
    await issuers.verify(sign(keys))
    assert idp.urls == [ISS + "/protocol/openid-connect/certs"]
    assert threading.get_ident() not in idp.threads


def test_handles_and_unverified_issuer(issuers: ExternalIssuers, keys: Keys) -> None:
    assert issuers.handles(ISS)
    assert not issuers.handles(ISS + "/")
    assert not issuers.handles("https://vault-service.example")
    assert issuers.issuers == (ISS,)
    assert unverified_issuer(sign(keys)) == ISS
    assert unverified_issuer("garbage") is None
    assert unverified_issuer(forge({"alg": "RS256"}, {"iss": 7})) is None
    assert unverified_issuer("a" * 9000) is None


# --- refusals, one stable code each ---------------------------------------------------


async def test_token_too_large(issuers: ExternalIssuers, keys: Keys) -> None:
    token = sign(keys, padding="x" * 9000)
    assert await reason_of(issuers, token) == "token_too_large"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d.e",  # a JWE is not accepted
        "!!!.e30.x",
        _b64(b"[1]") + "." + _b64(b"{}") + ".x",  # header not an object
        _b64(b'{"alg":"RS256","kid":"rsa-1"}') + "." + _b64(b"not json") + ".x",
        _b64(b'{"alg":"RS256","kid":"rsa-1"}') + ".é.x",
    ],
)
async def test_token_malformed(issuers: ExternalIssuers, token: str) -> None:
    assert await reason_of(issuers, token) == "token_malformed"


@pytest.mark.parametrize("typ", ["logout+jwt", "secevent+jwt", "JWE", 5])
async def test_token_of_another_type_refused(
    issuers: ExternalIssuers, keys: Keys, typ: object
) -> None:
    token = rs256_with_header(keys, {"alg": "RS256", "kid": "rsa-1", "typ": typ}, claims())
    assert await reason_of(issuers, token) == "token_malformed"


async def test_alg_none_refused(issuers: ExternalIssuers) -> None:
    token = forge({"alg": "none", "kid": "rsa-1"}, claims(), b"")
    assert await reason_of(issuers, token) == "token_algorithm"


async def test_hs256_signed_with_the_public_key_pem_refused(
    issuers: ExternalIssuers, keys: Keys, idp: FakeIdP
) -> None:
    pem = keys.rsa.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims()).encode())
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    assert await reason_of(issuers, signing_input + "." + _b64(mac)) == "token_algorithm"
    assert idp.fetches == 0  # refused before any key was looked up


@pytest.mark.parametrize("alg", ["RS384", "RS512", "ES384", "HS512", "", None])
async def test_unsupported_algorithms_refused(issuers: ExternalIssuers, alg: str | None) -> None:
    token = forge({"alg": alg, "kid": "rsa-1"}, claims())
    assert await reason_of(issuers, token) == "token_algorithm"


async def test_algorithm_not_configured_for_issuer_refused(
    make: Callable[..., ExternalIssuers], keys: Keys
) -> None:
    issuers = make(config(algorithms=("RS256",)))
    assert await reason_of(issuers, sign(keys, "ES256")) == "token_algorithm"
    # the RSA key has no alg member: with only RS256 configured it is not a PS256 key
    assert await reason_of(issuers, sign(keys, "PS256")) == "token_algorithm"
    await issuers.verify(sign(keys, "RS256"))


async def test_alg_key_type_mismatch_refused(issuers: ExternalIssuers, keys: Keys) -> None:
    # header says ES256, kid points to the RSA key
    token = sign(keys, "ES256", kid="rsa-1")
    assert await reason_of(issuers, token) == "token_algorithm"
    token = sign(keys, "EdDSA", kid="ec-1")
    assert await reason_of(issuers, token) == "token_algorithm"


async def test_declared_alg_of_a_key_binds_it(
    make: Callable[..., ExternalIssuers], idp: FakeIdP, keys: Keys
) -> None:
    idp.jwks = {"keys": [_jwk(keys.rsa.public_key(), "rsa-1", "PS256")]}
    issuers = make()
    assert await reason_of(issuers, sign(keys, "RS256")) == "token_algorithm"
    await issuers.verify(sign(keys, "PS256"))


async def test_crit_refused(issuers: ExternalIssuers, keys: Keys) -> None:
    header = {"alg": "RS256", "kid": "rsa-1", "crit": ["exp"], "exp": 1}
    assert await reason_of(issuers, rs256_with_header(keys, header, claims())) == "token_crit"


@pytest.mark.parametrize(
    "kid", [None, "", "../../etc/passwd", "a/b", "a" * 129, "rsa-1\n", "é", 12, ["rsa-1"]]
)
async def test_bad_kid_refused(issuers: ExternalIssuers, keys: Keys, kid: object) -> None:
    header: dict[str, Any] = {"alg": "RS256", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    assert await reason_of(issuers, rs256_with_header(keys, header, claims())) == "token_kid"


async def test_unknown_kid_refused(issuers: ExternalIssuers, keys: Keys) -> None:
    assert await reason_of(issuers, sign(keys, kid="never-published")) == "token_unknown_key"


@pytest.mark.parametrize("iss", [None, "https://evil.example", ISS + "/", ISS.upper(), 42])
async def test_unknown_issuer_refused(
    issuers: ExternalIssuers, keys: Keys, idp: FakeIdP, iss: object
) -> None:
    token = forge({"alg": "RS256", "kid": "rsa-1"}, claims(iss=iss))
    assert await reason_of(issuers, token) == "token_issuer"
    assert idp.fetches == 0


@pytest.mark.parametrize("aud", ["other-service", [AUD, "other-service"], [AUD], AUD + " "])
async def test_audience_refused(issuers: ExternalIssuers, keys: Keys, aud: object) -> None:
    # strict: exactly our audience string, not a list that contains it
    assert await reason_of(issuers, sign(keys, aud=aud)) == "token_audience"


async def test_expired_refused(issuers: ExternalIssuers, keys: Keys) -> None:
    now = int(time.time())
    token = sign(keys, iat=now - 600, nbf=now - 600, exp=now - 31)
    assert await reason_of(issuers, token) == "token_expired"
    # within the leeway it still passes
    await issuers.verify(sign(keys, iat=now - 600, nbf=now - 600, exp=now - 20))


async def test_not_yet_valid_refused(issuers: ExternalIssuers, keys: Keys) -> None:
    now = int(time.time())
    assert await reason_of(issuers, sign(keys, nbf=now + 120)) == "token_not_yet_valid"
    token = sign(keys, iat=now + 120, nbf=None, exp=now + 400)
    assert await reason_of(issuers, token) == "token_not_yet_valid"


async def test_token_without_jti_named_by_its_hash(issuers: ExternalIssuers, keys: Keys) -> None:
    """OIDC ID tokens need not carry a jti: each token is then named by its own hash."""
    first = await issuers.verify(sign(keys, jti=None))
    second = await issuers.verify(sign(keys, jti=None, exp=int(time.time()) + 200))
    assert first.jti.startswith("sha256:")
    assert first.token_id() != second.token_id()


@pytest.mark.parametrize(
    "over",
    [
        {"sub": None},
        {"exp": None},
        {"iat": None},
        {"aud": None},
        {"aud": ""},
        {"sub": ""},
        {"sub": 42},
        {"jti": 7},
        {"sub": "x" * 256},
        {"iat": float(int(time.time()))},
        {"iat": True},
        # Computed when the tests are collected, maybe many minutes before this one
        # runs: a day ahead, so that the string, not the expiry, is what is refused.
        {"exp": str(int(time.time()) + 86_400)},
        {"amr": "mfa"},
        {"acr": 2},
        {"events": {"http://schemas.openid.net/event/backchannel-logout": {}}},
    ],
)
async def test_claims_refused(issuers: ExternalIssuers, keys: Keys, over: dict[str, Any]) -> None:
    assert await reason_of(issuers, sign(keys, **over)) == "token_claims"


async def test_signature_refused(issuers: ExternalIssuers, keys: Keys) -> None:
    # signed by a key not in the JWKS, under the kid of one that is
    rogue = jwt.encode(claims(), keys.rogue, algorithm="RS256", headers={"kid": "rsa-1"})
    assert await reason_of(issuers, rogue) == "token_signature"
    # a genuine token with its payload swapped
    header, _, signature = sign(keys).split(".")
    swapped = header + "." + _b64(json.dumps(claims(sub="someone-else")).encode()) + "." + signature
    assert await reason_of(issuers, swapped) == "token_signature"


async def test_lifetime_refused(make: Callable[..., ExternalIssuers], keys: Keys) -> None:
    issuers = make(config(max_lifetime_seconds=600))
    now = int(time.time())
    assert await reason_of(issuers, sign(keys, exp=now + 601)) == "token_lifetime"
    await issuers.verify(sign(keys, exp=now + 600))
    # exp before iat (iat slightly ahead, inside the leeway)
    token = sign(keys, iat=now + 20, nbf=None, exp=now + 10)
    assert await reason_of(issuers, token) == "token_lifetime"


async def assurance_reason(issuers: ExternalIssuers, token: str) -> str:
    claims = await issuers.verify(token)  # the signature verifies: the actor is known
    with pytest.raises(Unauthenticated) as caught:
        issuers.assurance(claims)
    return caught.value.reason


async def test_acr_policy(make: Callable[..., ExternalIssuers], keys: Keys) -> None:
    issuers = make(config(required_acr=("eidas2", "eidas3")))
    issuers.assurance(await issuers.verify(sign(keys, acr="eidas3")))
    assert await assurance_reason(issuers, sign(keys, acr="eidas1")) == (
        "token_assurance_insufficient"
    )
    assert await assurance_reason(issuers, sign(keys, acr=None)) == "token_assurance_insufficient"


async def test_amr_policy(make: Callable[..., ExternalIssuers], keys: Keys) -> None:
    issuers = make(config(required_amr=("mfa",)))
    assert issuers.assurance(await issuers.verify(sign(keys, amr=["pwd", "mfa"])))
    assert await assurance_reason(issuers, sign(keys, amr=["pwd"])) == (
        "token_assurance_insufficient"
    )
    assert await assurance_reason(issuers, sign(keys, amr=None)) == "token_assurance_insufficient"
    both = make(config(required_amr=("pwd", "otp")))
    both.assurance(await both.verify(sign(keys, amr=["otp", "pwd"])))
    assert await assurance_reason(both, sign(keys, amr=["otp"])) == "token_assurance_insufficient"


async def test_mfa_levels(make: Callable[..., ExternalIssuers], keys: Keys) -> None:
    """Multi-factor for the routes that need it, apart from each issuer's floor."""
    issuers = make(config())
    assert issuers.assurance(await issuers.verify(sign(keys, amr=["pwd", "mfa"])))
    assert not issuers.assurance(await issuers.verify(sign(keys, amr=["pwd"])))
    by_acr = make(config(mfa_acr=("eidas2",), mfa_amr=()))
    assert by_acr.assurance(await by_acr.verify(sign(keys, acr="eidas2", amr=["pwd"])))
    assert not by_acr.assurance(await by_acr.verify(sign(keys, acr="eidas1", amr=["mfa"])))


# --- the JWKS: which keys count, rotation, rate limit, outages --------------------------


async def test_unusable_keys_ignored(
    make: Callable[..., ExternalIssuers], idp: FakeIdP, keys: Keys
) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    p384 = ec.generate_private_key(ec.SECP384R1())
    rsa_pub = keys.rsa.public_key()
    no_kid = _jwk(rsa_pub, "x")
    del no_kid["kid"]
    private = {**_jwk(rsa_pub, "private"), **RSAAlgorithm.to_jwk(keys.rsa, as_dict=True)}
    private["kid"] = "private"
    del private["key_ops"]  # ["sign"] would get it ignored for another reason
    idp.jwks = {
        "keys": [
            no_kid,
            _jwk(rsa_pub, "enc", use="enc"),
            _jwk(rsa_pub, "wrap", key_ops=["wrapKey"]),
            _jwk(rsa_pub, "rs384", "RS384"),
            _jwk(keys.ed.public_key(), "ed-as-rs", "RS256"),  # alg inconsistent with kty
            {"kty": "oct", "k": _b64(b"s" * 32), "kid": "hmac", "alg": "HS256"},
            {"kty": "oct", "k": _b64(b"s" * 32), "kid": "oct"},
            private,
            _jwk(weak.public_key(), "weak"),
            _jwk(p384.public_key(), "p384"),  # crv P-384, no alg: not an ES256 key
            {"kid": "junk", "kty": "RSA", "n": 5, "e": "AQAB"},
            "not an object",
            _jwk(keys.rsa2.public_key(), "dup"),
            _jwk(keys.rsa.public_key(), "dup"),
            _jwk(keys.ec.public_key(), "ec-1", "ES256"),  # the one usable key
        ]
    }
    issuers = make()
    for kid in ["x", "enc", "wrap", "rs384", "ed-as-rs", "oct", "private", "weak", "junk", "dup"]:
        assert await reason_of(issuers, sign(keys, kid=kid)) == "token_unknown_key", kid
    with pytest.warns(InsecureKeyLengthWarning):
        weak_token = jwt.encode(claims(), weak, algorithm="RS256", headers={"kid": "weak"})
    assert await reason_of(issuers, weak_token) == "token_unknown_key"
    # PyJWT will not sign ES256 with a P-384 key; its bare algorithm object will
    signing_input = (
        _b64(json.dumps({"alg": "ES256", "kid": "p384"}).encode())
        + "."
        + _b64(json.dumps(claims()).encode())
    )
    p384_sig = ECAlgorithm(ECAlgorithm.SHA256).sign(signing_input.encode(), p384)
    p384_token = signing_input + "." + _b64(p384_sig)
    assert await reason_of(issuers, p384_token) == "token_unknown_key"
    await issuers.verify(sign(keys, "ES256"))
    assert idp.fetches == 1


async def test_rotation_new_kid_one_refresh_then_accepted(
    issuers: ExternalIssuers, idp: FakeIdP, keys: Keys, clock: Clock
) -> None:
    await issuers.verify(sign(keys))
    assert idp.fetches == 1
    clock.advance(31)
    idp.jwks = {"keys": [*keys.jwks()["keys"], _jwk(keys.rsa2.public_key(), "rsa-2")]}
    rotated = jwt.encode(claims(), keys.rsa2, algorithm="RS256", headers={"kid": "rsa-2"})
    await issuers.verify(rotated)
    assert idp.fetches == 2
    await issuers.verify(rotated)
    await issuers.verify(sign(keys))
    assert idp.fetches == 2


async def test_withdrawn_key_stops_verifying_after_refresh(
    issuers: ExternalIssuers, idp: FakeIdP, keys: Keys, clock: Clock
) -> None:
    await issuers.verify(sign(keys))
    idp.jwks = {"keys": [_jwk(keys.rsa2.public_key(), "rsa-2")]}
    clock.advance(3601)  # cache expired: the next request refreshes
    assert await reason_of(issuers, sign(keys)) == "token_unknown_key"
    assert idp.fetches == 2


async def test_new_kid_within_interval_waits_for_the_interval(
    issuers: ExternalIssuers, idp: FakeIdP, keys: Keys, clock: Clock
) -> None:
    await issuers.verify(sign(keys))
    idp.jwks = {"keys": [*keys.jwks()["keys"], _jwk(keys.rsa2.public_key(), "rsa-2")]}
    rotated = jwt.encode(claims(), keys.rsa2, algorithm="RS256", headers={"kid": "rsa-2"})
    assert await reason_of(issuers, rotated) == "token_unknown_key"
    assert idp.fetches == 1
    clock.advance(30)
    await issuers.verify(rotated)
    assert idp.fetches == 2


async def test_forged_kids_cannot_hammer_the_idp(
    issuers: ExternalIssuers, idp: FakeIdP, keys: Keys, clock: Clock
) -> None:
    await issuers.verify(sign(keys))
    clock.advance(31)
    before = idp.fetches
    tokens = [sign(keys, kid=secrets.token_urlsafe(16)) for _ in range(100)]
    results = await asyncio.gather(*(issuers.verify(t) for t in tokens), return_exceptions=True)
    assert all(isinstance(r, Unauthenticated) and r.reason == "token_unknown_key" for r in results)
    assert idp.fetches - before <= 1
    # and sequentially, still inside the interval: no more fetches
    for _ in range(20):
        assert await reason_of(issuers, sign(keys, kid=secrets.token_urlsafe(8))) == (
            "token_unknown_key"
        )
    assert idp.fetches - before <= 1


async def test_idp_unavailable_without_cache_fails_closed(
    issuers: ExternalIssuers, idp: FakeIdP, keys: Keys, clock: Clock
) -> None:
    idp.down = True
    assert await reason_of(issuers, sign(keys)) == "idp_unavailable"
    # the failed attempt counts against the rate limit too
    assert await reason_of(issuers, sign(keys)) == "idp_unavailable"
    assert idp.fetches == 1
    idp.down = False
    clock.advance(30)
    await issuers.verify(sign(keys))


async def test_malformed_jwks_is_a_failure(
    issuers: ExternalIssuers, idp: FakeIdP, keys: Keys, clock: Clock
) -> None:
    for body in [b"<html>", b"[]", b'{"keys": {}}', b"{}"]:
        idp.body = body
        assert await reason_of(issuers, sign(keys)) == "idp_unavailable"
        clock.advance(31)
    idp.body = None
    await issuers.verify(sign(keys))
    idp.body = b"<html>"
    clock.advance(3601)
    await issuers.verify(sign(keys))  # the previous keys are kept


async def test_empty_jwks_is_honoured(
    issuers: ExternalIssuers, idp: FakeIdP, keys: Keys, clock: Clock
) -> None:
    await issuers.verify(sign(keys))
    idp.jwks = {"keys": []}
    clock.advance(3601)
    assert await reason_of(issuers, sign(keys)) == "token_unknown_key"


async def test_outage_with_cache_still_serves_known_kids(
    issuers: ExternalIssuers, idp: FakeIdP, keys: Keys, clock: Clock
) -> None:
    await issuers.verify(sign(keys))
    idp.down = True
    clock.advance(31)
    assert await reason_of(issuers, sign(keys, kid="rotated-away")) == "token_unknown_key"
    await issuers.verify(sign(keys))
    for alg in ALL_ALGS:
        await issuers.verify(sign(keys, alg))
    clock.advance(7200)  # cache expired, refresh fails: keys kept while not too stale
    await issuers.verify(sign(keys))
    assert idp.fetches == 3


async def test_known_kid_does_not_wait_for_a_slow_refresh(
    issuers: ExternalIssuers, idp: FakeIdP, keys: Keys, clock: Clock
) -> None:
    await issuers.verify(sign(keys))
    started, release = threading.Event(), threading.Event()

    def slow() -> None:
        started.set()
        release.wait(5)

    idp.before = slow
    clock.advance(3601)
    try:
        refreshing = asyncio.create_task(issuers.verify(sign(keys)))
        while not started.is_set():
            await asyncio.sleep(0.01)
        # the cache is stale and a refresh is in flight: a known kid is served at once
        await asyncio.wait_for(issuers.verify(sign(keys, "ES256")), 1)
    finally:
        release.set()
    await refreshing
    assert idp.fetches == 2


async def test_too_stale_cache_fails_closed(
    make: Callable[..., ExternalIssuers], idp: FakeIdP, keys: Keys, clock: Clock
) -> None:
    issuers = make(max_stale_seconds=7200)
    await issuers.verify(sign(keys))
    idp.down = True
    clock.advance(7201)
    assert await reason_of(issuers, sign(keys)) == "idp_unavailable"


async def test_cache_age_triggers_refresh(
    issuers: ExternalIssuers, idp: FakeIdP, keys: Keys, clock: Clock
) -> None:
    await issuers.verify(sign(keys))
    clock.advance(3599)
    await issuers.verify(sign(keys))
    assert idp.fetches == 1
    clock.advance(2)
    await issuers.verify(sign(keys))
    assert idp.fetches == 2


async def test_hanging_fetch_is_bounded(
    make: Callable[..., ExternalIssuers], keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(oidc, "FETCH_TIMEOUT_SECONDS", 0.05)
    release = threading.Event()

    def hang(url: str) -> bytes:
        release.wait(5)
        return b"{}"

    issuers = ExternalIssuers([config()], fetch=hang)
    try:
        assert await reason_of(issuers, sign(keys)) == "idp_unavailable"
    finally:
        release.set()


async def test_issuers_are_independent(
    make: Callable[..., ExternalIssuers], idp: FakeIdP, keys: Keys
) -> None:
    other = "https://login.partner.example"
    issuers = make(
        config(),
        config(
            issuer=other, audience="vault-partner", jwks_uri=other + "/jwks", algorithms=("EdDSA",)
        ),
    )
    await issuers.verify(sign(keys, "EdDSA", iss=other, aud="vault-partner"))
    assert await reason_of(issuers, sign(keys, "RS256", iss=other, aud="vault-partner")) == (
        "token_algorithm"
    )
    # each issuer has its own audience
    assert await reason_of(issuers, sign(keys, "EdDSA", iss=other)) == "token_audience"
    await issuers.verify(sign(keys))
    assert sorted(idp.urls) == sorted([ISS + "/protocol/openid-connect/certs", other + "/jwks"])


# --- logs carry the issuer and the reason code, nothing else -----------------------------


class RecordingLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def _record(self, level: str) -> Callable[..., None]:
        def emit(event: str, **kw: Any) -> None:
            self.events.append((level, event, kw))

        return emit

    def __getattr__(self, level: str) -> Callable[..., None]:
        return self._record(level)


async def test_logs_carry_no_token_or_claim(
    issuers: ExternalIssuers, idp: FakeIdP, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = RecordingLog()
    monkeypatch.setattr(oidc, "log", recorder)
    secret_sub = "youth-counsellor-" + secrets.token_hex(8)
    good = sign(keys, sub=secret_sub)
    await issuers.verify(good)
    bad_iss = sign(keys, iss="https://attacker.example/" + secret_sub)
    await reason_of(issuers, bad_iss)
    await reason_of(issuers, sign(keys, sub=secret_sub, aud="elsewhere"))
    text = repr(recorder.events)
    for value in (secret_sub, good, bad_iss, "attacker.example"):
        assert value not in text
    refusals = [kw for _, event, kw in recorder.events if event == "external_token_refused"]
    assert refusals == [
        {"issuer": None, "reason": "token_issuer"},
        {"issuer": ISS, "reason": "token_audience"},
    ]


async def test_fetch_failure_logged_by_class_only(
    make: Callable[..., ExternalIssuers], idp: FakeIdP, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = RecordingLog()
    monkeypatch.setattr(oidc, "log", recorder)
    idp.down = True
    await reason_of(make(), sign(keys))
    assert ("warning", "oidc_jwks_fetch_failed", {"issuer": ISS, "error": "OSError"}) in (
        recorder.events
    )
    assert "connection refused" not in repr(recorder.events)


# --- configuration --------------------------------------------------------------------


def test_parse_issuers() -> None:
    text = json.dumps(
        [
            {
                "issuer": ISS,
                "audience": AUD,
                "jwks_uri": ISS + "/protocol/openid-connect/certs",
                "algorithms": ["RS256", "ES256"],
                "required_amr": ["mfa"],
            },
            {
                "issuer": "http://127.0.0.1:8080",
                "audience": AUD,
                "jwks_uri": "http://localhost:8080/jwks?v=1",
                "algorithms": ["EdDSA"],
                "required_acr": ["eidas2"],
                "max_lifetime_seconds": 600,
                "leeway_seconds": 0,
            },
        ]
    )
    first, second = parse_issuers(text)
    assert first.algorithms == ("RS256", "ES256")
    assert first.required_amr == ("mfa",)
    assert first.max_lifetime_seconds == 3600
    assert second.required_acr == ("eidas2",)
    assert parse_issuers("[]") == ()


SECRETISH = "hunter2-" + "0" * 8


@pytest.mark.parametrize(
    "over",
    [
        {"issuer": "http://idp.example"},
        {"issuer": "http://localhost.evil.example"},
        {"issuer": "http://127.0.0.1.evil.example"},
        {"issuer": f"https://user:{SECRETISH}@idp.example"},
        {"issuer": "https://idp.example/?tenant=1"},
        {"issuer": "https://idp.example/#x"},
        {"issuer": "https://idp.example/\nx"},
        {"issuer": "ftp://idp.example"},
        {"issuer": ""},
        {"issuer": "https://idp.example/" + "a" * 300},
        {"jwks_uri": "http://idp.example/jwks"},
        {"jwks_uri": f"https://idp.example/jwks#{SECRETISH}"},
        {"jwks_uri": f"https://admin:{SECRETISH}@idp.example/jwks"},
        {"jwks_uri": "file:///etc/passwd"},
        {"audience": ""},
        {"algorithms": []},
        {"algorithms": ["HS256"]},
        {"algorithms": ["none"]},
        {"algorithms": ["RS256", "RS256"]},
        {"algorithms": ["RS384"]},
        {"algorithms": "RS256"},
        {"required_amr": [""]},
        {"max_lifetime_seconds": 0},
        {"max_lifetime_seconds": 86401},
        {"leeway_seconds": -1},
        {"leeway_seconds": 61},
        {"client_secret": SECRETISH},
        {"audience": None},
    ],
)
def test_parse_issuers_refuses(over: dict[str, Any]) -> None:
    entry: dict[str, Any] = {
        "issuer": ISS,
        "audience": AUD,
        "jwks_uri": ISS + "/certs",
        "algorithms": ["RS256"],
    }
    entry.update(over)
    entry = {k: v for k, v in entry.items() if v is not None}
    with pytest.raises(ConfigurationError) as caught:
        parse_issuers(json.dumps([entry]))
    assert SECRETISH not in str(caught.value)
    assert "$[0]" in str(caught.value)


@pytest.mark.parametrize("text", ["", "not json", "{", '{"issuer": "x"}', "[1]"])
def test_parse_issuers_refuses_shape(text: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_issuers(text)


def test_parse_issuers_refuses_duplicates() -> None:
    entry = {"issuer": ISS, "audience": AUD, "jwks_uri": ISS + "/c", "algorithms": ["RS256"]}
    with pytest.raises(ConfigurationError, match="twice"):
        parse_issuers(json.dumps([entry, {**entry, "audience": "other"}]))
    with pytest.raises(ConfigurationError):
        ExternalIssuers([config(), config()])


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ConfigurationError):
        config(algorithms=("HS256",))
    with pytest.raises(ConfigurationError):
        ExternalIssuers([config()], cache_seconds=0)


def test_default_fetch_refuses_plain_http_outside_loopback() -> None:
    # refused before any connection is attempted
    for url in ["http://idp.example/jwks", "file:///etc/passwd", "http://localhost.evil/jwks"]:
        with pytest.raises(JwksFetchError):
            fetch_jwks(url)

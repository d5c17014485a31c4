"""External OIDC over real HTTP: a JWKS served by a stdlib server on 127.0.0.1, fetched
by the default urllib fetch. Rotation is served live; when the server goes away,
cached keys keep verifying and unknown kids are refused, not crashed on.

Needs neither PostgreSQL nor OpenBao: none of the session fixtures is used."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from vault_service.auth.oidc import (
    ExternalIssuers,
    JwksFetchError,
    fetch_jwks,
)
from vault_service.errors import Unauthenticated
from vault_service.settings.issuers import IssuerConfig

pytestmark = pytest.mark.integration

AUD = "vault-service"


class JwksServer:
    """A JWKS endpoint whose answer the test changes while it runs."""

    def __init__(self) -> None:
        self.body = b'{"keys": []}'
        self.status = 200
        self.location: str | None = None
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                if self.path == "/moved" and server.location is not None:
                    self.send_response(302)
                    self.send_header("Location", server.location)
                    self.end_headers()
                    return
                self.send_response(server.status)
                self.send_header("Content-Type", "application/jwk-set+json")
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.running = True

    def serve(self, jwks: dict[str, Any]) -> None:
        self.body = json.dumps(jwks).encode()

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(5)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[JwksServer]:
    # A proxy from the environment has no business seeing loopback traffic.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    srv = JwksServer()
    try:
        yield srv
    finally:
        srv.stop()


def _jwk(public_key: Any, kid: str, alg: str) -> dict[str, Any]:
    if isinstance(public_key, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public_key, as_dict=True)
    return {**jwk, "kid": kid, "use": "sig", "alg": alg}


def _token(issuer: str, key: Any, alg: str, kid: str) -> str:
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": AUD,
        "sub": "counsellor-" + uuid.uuid4().hex,
        "jti": str(uuid.uuid4()),
        "iat": now,
        "exp": now + 300,
        "amr": ["pwd", "mfa"],
    }
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


async def _reason(issuers: ExternalIssuers, token: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        await issuers.verify(token)
    return caught.value.reason


def _issuers(server: JwksServer, path: str = "/jwks", **kw: Any) -> ExternalIssuers:
    config = IssuerConfig(
        issuer=server.base,
        audience=AUD,
        jwks_uri=server.base + path,
        algorithms=("RS256", "ES256", "EdDSA"),
        required_amr=("mfa",),
    )
    return ExternalIssuers([config], **kw)  # default fetch: urllib, in a thread


async def test_live_rotation_then_outage(server: JwksServer) -> None:
    rsa1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec1 = ec.generate_private_key(ec.SECP256R1())
    ed1 = Ed25519PrivateKey.generate()
    server.serve(
        {
            "keys": [
                _jwk(rsa1.public_key(), "rsa-1", "RS256"),
                _jwk(ec1.public_key(), "ec-1", "ES256"),
                _jwk(ed1.public_key(), "ed-1", "EdDSA"),
            ]
        }
    )
    issuers = _issuers(server, min_refresh_interval=0.2, cache_seconds=1.0)
    iss = server.base

    for key, alg, kid in [(rsa1, "RS256", "rsa-1"), (ec1, "ES256", "ec-1"), (ed1, "EdDSA", "ed-1")]:
        claims = await issuers.verify(_token(iss, key, alg, kid))
        assert claims.issuer == iss
        assert claims.amr == ("pwd", "mfa")
    assert server.requests == ["/jwks"]

    # Rotation, served live: the IdP publishes rsa-2; its first token triggers one fetch.
    server.serve(
        {
            "keys": [
                _jwk(rsa2.public_key(), "rsa-2", "RS256"),
                _jwk(rsa1.public_key(), "rsa-1", "RS256"),
                _jwk(ec1.public_key(), "ec-1", "ES256"),
            ]
        }
    )
    await asyncio.sleep(0.25)
    await issuers.verify(_token(iss, rsa2, "RS256", "rsa-2"))
    assert len(server.requests) == 2
    await issuers.verify(_token(iss, rsa1, "RS256", "rsa-1"))
    # ed-1 was withdrawn by that refresh
    assert await _reason(issuers, _token(iss, ed1, "EdDSA", "ed-1")) == "token_unknown_key"

    # The IdP goes away: cached keys keep verifying.
    server.stop()
    await issuers.verify(_token(iss, rsa2, "RS256", "rsa-2"))
    await asyncio.sleep(0.25)
    # an unknown kid: a refresh is attempted, fails, and the token is refused cleanly
    assert await _reason(issuers, _token(iss, rsa2, "RS256", "rotated-in")) == "token_unknown_key"
    # cache past its age: the refresh fails again, the known keys still serve
    await asyncio.sleep(1.0)
    await issuers.verify(_token(iss, rsa1, "RS256", "rsa-1"))
    await issuers.verify(_token(iss, ec1, "ES256", "ec-1"))


async def test_unreachable_idp_without_cache_fails_closed(server: JwksServer) -> None:
    key = Ed25519PrivateKey.generate()
    issuers = _issuers(server)
    server.stop()
    token = _token(server.base, key, "EdDSA", "ed-1")
    assert await _reason(issuers, token) == "idp_unavailable"


@pytest.mark.parametrize("status", [404, 500])
async def test_http_error_is_unavailable(server: JwksServer, status: int) -> None:
    key = Ed25519PrivateKey.generate()
    server.serve({"keys": [_jwk(key.public_key(), "ed-1", "EdDSA")]})
    server.status = status
    issuers = _issuers(server)
    assert await _reason(issuers, _token(server.base, key, "EdDSA", "ed-1")) == "idp_unavailable"


async def test_oversized_jwks_refused(server: JwksServer) -> None:
    key = Ed25519PrivateKey.generate()
    jwk = _jwk(key.public_key(), "ed-1", "EdDSA")
    server.serve({"keys": [jwk], "padding": "x" * (300 * 1024)})
    with pytest.raises(JwksFetchError):
        fetch_jwks(server.base + "/jwks")
    issuers = _issuers(server)
    assert await _reason(issuers, _token(server.base, key, "EdDSA", "ed-1")) == "idp_unavailable"
    # just under the cap is fine
    server.serve({"keys": [jwk], "padding": "x" * (200 * 1024)})
    assert len(fetch_jwks(server.base + "/jwks")) < 256 * 1024


async def test_redirects_follow_the_same_rules(server: JwksServer) -> None:
    key = Ed25519PrivateKey.generate()
    server.serve({"keys": [_jwk(key.public_key(), "ed-1", "EdDSA")]})
    # to another loopback URL: followed
    server.location = server.base + "/jwks"
    assert json.loads(fetch_jwks(server.base + "/moved"))["keys"][0]["kid"] == "ed-1"
    # to plain http off loopback: refused before any connection is made
    server.location = "http://jwks.example.invalid/jwks"
    with pytest.raises(JwksFetchError):
        fetch_jwks(server.base + "/moved")
    issuers = _issuers(server, path="/moved")
    assert await _reason(issuers, _token(server.base, key, "EdDSA", "ed-1")) == "idp_unavailable"

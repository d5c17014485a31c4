"""`GET /console/...`: the console's files, each under a strict Content-Security-Policy.

The files are the package's own (`static/`, listed once at import: a path that is not
one of them is 404, so no request can reach outside the folder). The pages hold no
data: the browser asks the auditor API for everything, with the token the auditor
pasted or obtained by signing in, kept in the page's memory only. Being mere files,
the routes are public and out of the OpenAPI document.
"""

from __future__ import annotations

import mimetypes
from importlib import resources
from typing import Any, Final

import msgspec
from litestar import Request, Response, get
from litestar.params import FromPath

from vault_service.errors import NotFound
from vault_service.settings import Settings
from vault_service.settings.console import ConsoleSignIn

_PUBLIC: Final = {"public": True, "exclude_from_auth": True}


def content_security_policy(signin: ConsoleSignIn | None) -> str:
    """Nothing but this origin: no inline script or style, no eval, no third party, no
    framing, no plugin, no <base> rewriting, no form posting anywhere. With an OpenID
    sign-in, the page may also reach the provider's token endpoint (the code exchange);
    the authorization endpoint is a pop-up's navigation, which connect-src does not
    govern."""
    connect = "connect-src 'self'" + (f" {signin.connect_origin}" if signin else "")
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self'",
            "font-src 'self'",
            connect,
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


_HEADERS: Final = {
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
}


def _load() -> dict[str, tuple[bytes, str]]:
    files: dict[str, tuple[bytes, str]] = {}
    root = resources.files(__package__).joinpath("static")

    def walk(folder: resources.abc.Traversable, prefix: str) -> None:
        for entry in folder.iterdir():
            name = prefix + entry.name
            if entry.is_dir():
                walk(entry, name + "/")
                continue
            suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
            media = _TYPES.get(suffix) or mimetypes.guess_type(entry.name)[0] or "text/plain"
            files[name] = (entry.read_bytes(), media)

    walk(root, "")
    return files


_FILES: Final = _load()


def _signin(request: Request[Any, Any, Any]) -> ConsoleSignIn | None:
    settings: Settings = request.app.state.settings
    return settings.console.oidc


def _file(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    found = _FILES.get(name)
    if found is None:
        raise NotFound("no such console file")
    body, media = found
    csp = content_security_policy(_signin(request))
    return Response(body, media_type=media, headers={**_HEADERS, "Content-Security-Policy": csp})


@get("/console", opt=_PUBLIC, include_in_schema=False)
async def console_index(request: Request[Any, Any, Any]) -> Response[bytes]:
    return _file(request, "index.html")


@get("/console/config.json", opt=_PUBLIC, include_in_schema=False)
async def console_config(request: Request[Any, Any, Any]) -> Response[bytes]:
    """How the page signs in: the OpenID provider and client (public values), or none
    (paste a token)."""
    signin = _signin(request)
    body = msgspec.json.encode({"oidc": signin})
    csp = content_security_policy(signin)
    return Response(
        body, media_type="application/json", headers={**_HEADERS, "Content-Security-Policy": csp}
    )


@get("/console/{name:path}", opt=_PUBLIC, include_in_schema=False)
async def console_file(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
    return _file(request, name.lstrip("/") or "index.html")


__all__ = ["console_config", "console_file", "console_index", "content_security_policy"]

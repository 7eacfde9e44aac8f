"""Who may talk to the server: loopback-only by default, bearer tokens and a session cookie otherwise,
a Host check against DNS rebinding, and the request-body size limit, as one ASGI middleware."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response

TOKEN_HEADER = "x-audiofind-token"
SESSION_COOKIE = "audiofind_session"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


class BodyTooLarge(Exception):
    """Raised from inside `receive` when a request body passes the limit mid-stream."""


def is_loopback(host: str) -> bool:
    """True for names and addresses only this machine can reach; anything else needs a token."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None, no_auth: bool) -> None:
    """Refuse to expose the library beyond this machine without a token, unless told so explicitly."""
    if token is not None and no_auth:
        raise ValueError("give either --token or --no-auth, not both")
    if token is not None and len(token) < 8:
        raise ValueError("the token must be at least 8 characters")
    if not is_loopback(host) and token is None and not no_auth:
        raise ValueError(
            f"refusing to listen on {host} without a token: anyone who can reach this port could read "
            "your sound files. Pass --token SECRET (clients send 'Authorization: Bearer SECRET') "
            "or --no-auth to serve without one."
        )


# ---------------------------------------------------------------- middleware


class Guard:
    """Host check (against DNS rebinding), bearer token for /api, and the upload size limit."""

    def __init__(
        self, app: ASGIApp, token: str | None, allowed_hosts: Sequence[str] | None, max_upload_bytes: int
    ) -> None:
        self.app = app
        self.token = token
        self.cookie_value = session_cookie_value(token) if token else None
        self.allowed_hosts = (
            None
            if allowed_hosts is None or "*" in allowed_hosts
            else {h.lower().strip("[]") for h in allowed_hosts}
        )
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path: str = scope["path"]
        if self.allowed_hosts is not None:
            host = _host_name(headers.get("host", ""))
            if host not in self.allowed_hosts:
                await error_response(421, "host not allowed", {"host": headers.get("host", "")[:100]})(
                    scope, receive, send
                )
                return
        if self.token is not None and path.startswith("/api") and not self._authorised(headers):
            await error_response(
                401,
                "missing or wrong access token",
                "send 'Authorization: Bearer TOKEN' or 'X-Audiofind-Token: TOKEN'",
                headers={"WWW-Authenticate": 'Bearer realm="audiofind"'},
            )(scope, receive, send)
            return
        if scope["method"] in ("POST", "PUT", "PATCH"):
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_upload_bytes:
                await _drain(receive, int(declared), self.max_upload_bytes)
                await error_response(
                    413,
                    "upload too large",
                    {"limit_bytes": self.max_upload_bytes, "got_bytes": int(declared)},
                    headers={"Connection": "close"},
                )(scope, receive, send)
                return
            receive = self._limited(receive)
        await self.app(scope, receive, send)

    def _authorised(self, headers: dict[str, str]) -> bool:
        assert self.token is not None and self.cookie_value is not None
        given = headers.get(TOKEN_HEADER)
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        if given is not None:
            return hmac.compare_digest(given.encode(), self.token.encode())
        cookie = _cookie(headers.get("cookie", ""), SESSION_COOKIE)
        return cookie is not None and hmac.compare_digest(cookie.encode(), self.cookie_value.encode())

    def _limited(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_upload_bytes

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge()
            return message

        return limited


async def _drain(receive: Receive, declared: int, limit: int) -> None:
    """Read (and drop) a too-large body, up to a bound, so the client sees the 413 instead of a reset."""
    budget = min(declared, 2 * limit + 1024 * 1024)
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def session_cookie_value(token: str) -> str:
    """The cookie <audio> elements (which cannot send headers) authenticate with: derived, not the token."""
    return hmac.new(token.encode(), b"audiofind-session-v1", hashlib.sha256).hexdigest()

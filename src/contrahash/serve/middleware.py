"""Pure-ASGI middleware: request-body cap (413 without reading the body), security headers.

The body cap works in two steps: a declared ``Content-Length`` above the cap is refused before
any of the body is read; otherwise (no length, chunked, or a lying length) the bytes handed to
the application are counted and reading stops at the cap, the answer becoming 413 whatever the
application made of the cut-off body. A 413 closes the connection (the rest of the body is
never read).
"""

from __future__ import annotations

import hmac
import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The page and its assets: scripts and styles from this origin only, no inline code, images
# from here (thumbnails) or blob:/data: (thumbnails fetched with a token, the query preview).
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; "
            "img-src 'self' blob: data:; connect-src 'self'; form-action 'none'; "
            "base-uri 'none'; frame-ancestors 'none'")


class _PayloadTooLarge(Exception):
    pass


def _json_message(status: int, detail: str, extra_headers: list[tuple[bytes, bytes]]
                  ) -> tuple[Message, Message]:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *extra_headers]
    return ({"type": "http.response.start", "status": status, "headers": headers},
            {"type": "http.response.body", "body": body, "more_body": False})


class LimitsMiddleware:
    """Cap request bodies at ``max_body_bytes``; add headers; stamp the request's start time."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["t0"] = time.perf_counter()
        limit = self.max_body_bytes
        too_large = f"request body over the {limit}-byte limit (upload limit plus form overhead)"
        path: str = scope.get("path", "")
        extra = _security_headers(path)

        declared = _content_length(scope)
        if declared is not None and declared > limit:
            for message in _json_message(413, too_large, [(b"connection", b"close"), *extra]):
                await send(message)
            return

        received = 0
        overflow = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, overflow
            if overflow:
                raise _PayloadTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    overflow = True
                    raise _PayloadTooLarge
            return message

        async def wrapped_send(message: Message) -> None:
            nonlocal started
            if overflow:  # whatever the app answers to a cut-off body becomes 413
                if message["type"] == "http.response.start" and not started:
                    started = True
                    for m in _json_message(413, too_large,
                                           [(b"connection", b"close"), *extra]):
                        await send(m)
                return
            if message["type"] == "http.response.start":
                started = True
                if extra:
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, limited_receive, wrapped_send)
        except _PayloadTooLarge:
            pass
        except Exception:
            if not overflow:
                raise
        if overflow and not started:
            for m in _json_message(413, too_large, [(b"connection", b"close"), *extra]):
                await send(m)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _security_headers(path: str) -> list[tuple[bytes, bytes]]:
    headers = [(b"x-content-type-options", b"nosniff")]
    if path == "/" or path.startswith("/static/"):
        headers += [(b"content-security-policy", PAGE_CSP.encode()),
                    (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]
    return headers


class TokenMiddleware:
    """401 for every ``/api`` request without ``Authorization: Bearer <token>``.

    Checked before anything else, so an unauthenticated upload is never parsed. The
    comparison takes constant time. ``/``, ``/static``, ``/docs`` and ``/healthz`` stay open.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = b"bearer " + token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _is_api(scope):
            given = b""
            for name, value in scope.get("headers", []):
                if name == b"authorization":
                    given = value
                    break
            scheme, _, credentials = given.partition(b" ")
            if not hmac.compare_digest(scheme.lower() + b" " + credentials.strip(),
                                       self.expected):
                for message in _json_message(
                        401, "missing or wrong API token: send 'Authorization: Bearer TOKEN'",
                        [(b"www-authenticate", b"Bearer"), (b"connection", b"close"),
                         *_security_headers(scope.get("path", ""))]):
                    await send(message)
                return
        await self.app(scope, receive, send)


def _is_api(scope: Scope) -> bool:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return path == "/api" or path.startswith("/api/")

"""Authentication at the edge: an ASGI middleware in front of every route.

Every HTTP request (except the public paths: health, and metrics when configured so) and every
websocket handshake must carry a bearer token; the middleware verifies it, applies the
per-subject request limit and puts the :class:`~gateway.core.authz.Principal` in the ASGI
scope, where endpoints find it with :func:`principal_of` (an endpoint reached without one
refuses: fail closed). Nothing of the request is read before the token is verified.

Where the token comes from:

- ``Authorization: Bearer <token>`` on HTTP and on the websocket handshake;
- for browsers, whose websocket API cannot set headers: a subprotocol
  ``sync-gateway.bearer.<token>`` offered next to the real one. It is removed from the offered
  subprotocols before the endpoint chooses, so it is never echoed back. Never a query string
  (query strings end up in access logs).

Websocket handshakes are also refused (before ``accept``, with an HTTP answer) when their
``Origin`` header is present and not in ``allowed_origins`` (exact match: a page of another site
cannot ride a user's credentials; native clients send no ``Origin``), and when the subject
already holds ``max_connections_per_subject`` connections to this instance (429).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.adapters.http_context import header
from gateway.adapters.http_errors import error_response
from gateway.core.authz import Principal
from gateway.core.codec import MediaType, preferred_media_type
from gateway.errors import AuthError, Forbidden, GatewayError, RateLimited, Unauthorized
from gateway.flows.limits import SubjectLimits

log = logging.getLogger(__name__)

BEARER_SUBPROTOCOL_PREFIX: Final = "sync-gateway.bearer."
"""A websocket subprotocol that carries the bearer token (for browsers)."""

PRINCIPAL_KEY: Final = "sync_gateway.principal"
"""Where the verified principal is kept in the ASGI scope's ``state``."""

Authenticate = Callable[[str | None], Principal]
"""Verifies a bearer token (``None``: none was sent) or raises an :class:`AuthError`."""


def insecure_authenticate(token: str | None) -> Principal:
    """Authentication of a gateway run with ``insecure_no_auth``: everybody is let in."""
    return Principal.insecure_anonymous()


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    public_paths: frozenset[str] = frozenset({"/healthz", "/readyz"})
    allowed_origins: frozenset[str] = frozenset()
    max_connections_per_subject: int = 16
    connection_retry_after_s: float = 5.0


def principal_of(scope: Scope) -> Principal:
    """The verified principal of a request, or :class:`Unauthorized` if none was verified."""
    principal = scope.get("state", {}).get(PRINCIPAL_KEY)
    if not isinstance(principal, Principal):
        raise Unauthorized("missing_token", "the request was not authenticated")
    return principal


def bearer_token(scope: Scope) -> str | None:
    """The token of the ``Authorization: Bearer`` header, else of a bearer subprotocol."""
    authorization = header(scope, b"authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("malformed", "the Authorization header is not 'Bearer <token>'")
        return token.strip()
    for offered in scope.get("subprotocols", ()):
        if isinstance(offered, str) and offered.startswith(BEARER_SUBPROTOCOL_PREFIX):
            return offered[len(BEARER_SUBPROTOCOL_PREFIX) :]
    return None


def _without_bearer(subprotocols: Iterable[str]) -> list[str]:
    return [p for p in subprotocols if not p.startswith(BEARER_SUBPROTOCOL_PREFIX)]


class AuthMiddleware:
    """Verifies the caller of every request before the application sees it."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticate: Authenticate,
        limits: SubjectLimits,
        settings: EdgeSettings,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.authenticate = authenticate
        self.limits = limits
        self.settings = settings
        self.on_refused = on_refused or (lambda _reason: None)
        self.connections: Counter[str] = Counter()
        """Open websocket connections per subject, on this instance."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _verify(self, scope: Scope) -> Principal:
        principal = self.authenticate(bearer_token(scope))
        await self.limits.check_request(principal)
        return principal

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] in self.settings.public_paths:
            await self.app(scope, receive, send)
            return
        try:
            principal = await self._verify(scope)
        except GatewayError as exc:
            self._refused(exc)
            media = preferred_media_type(header(scope, b"accept"), MediaType.JSON)
            await error_response(exc, media, retry_after_s=1)(scope, receive, send)
            return
        scope.setdefault("state", {})[PRINCIPAL_KEY] = principal
        await self.app(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            self._check_origin(scope)
            principal = await self._verify(scope)
            key = principal.subject
            if (
                not principal.unrestricted
                and self.connections[key] >= self.settings.max_connections_per_subject
            ):
                raise RateLimited(
                    f"at most {self.settings.max_connections_per_subject} connections per subject",
                    self.settings.connection_retry_after_s,
                )
        except GatewayError as exc:
            self._refused(exc)
            await _deny(scope, receive, send, exc)
            return
        scope["subprotocols"] = _without_bearer(scope.get("subprotocols", ()))
        scope.setdefault("state", {})[PRINCIPAL_KEY] = principal
        self.connections[key] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.connections[key] -= 1
            if self.connections[key] <= 0:
                del self.connections[key]

    def _check_origin(self, scope: Scope) -> None:
        origin = header(scope, b"origin")
        if origin is not None and origin not in self.settings.allowed_origins:
            raise Forbidden("origin_not_allowed", "websocket handshakes from this origin refused")

    def _refused(self, exc: GatewayError) -> None:
        reason = exc.reason if isinstance(exc, AuthError) else getattr(exc, "code", "error")
        self.on_refused(reason)


async def _deny(scope: Scope, receive: Receive, send: Send, exc: GatewayError) -> None:
    """Refuse a websocket handshake with an HTTP answer (403 where the server cannot)."""
    message: Message = await receive()
    if message["type"] != "websocket.connect":
        return
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    response: Response = error_response(exc, MediaType.JSON, retry_after_s=1)
    await send(
        {
            "type": "websocket.http.response.start",
            "status": response.status_code,
            "headers": response.raw_headers,
        }
    )
    await send({"type": "websocket.http.response.body", "body": response.body})

"""The authentication edge for tests that serve single endpoints without a token."""

from __future__ import annotations

from starlette.middleware import Middleware

from gateway.adapters.http_auth import AuthMiddleware, EdgeSettings, insecure_authenticate
from gateway.flows.limits import UNLIMITED

INSECURE_EDGE = [
    Middleware(
        AuthMiddleware,
        authenticate=insecure_authenticate,
        limits=UNLIMITED,
        settings=EdgeSettings(),
    )
]
"""Middleware that lets every caller in as the insecure anonymous principal."""

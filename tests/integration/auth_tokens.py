"""Signing keys, a JWKS file and tokens (valid and hostile) for the authentication tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

AUDIENCE = "sync-clients"
ISSUER = "https://issuer.test"
TENANT = "acme"
KID = "k1"
ALLOWED_ORIGIN = "https://app.example"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(obj: dict[str, Any]) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


@dataclass
class Keys:
    """An RS256 signing key published in a JWKS file under ``KID``, plus a stranger's key."""

    private_pem: str
    public_pem: str
    stranger_pem: str
    jwks_path: Path

    @classmethod
    def make(cls, directory: Path) -> Keys:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)

        def private(k: rsa.RSAPrivateKey) -> str:
            return k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode()

        public_pem = (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        jwk.update({"kid": KID, "alg": "RS256", "use": "sig"})
        path = directory / "jwks.json"
        path.write_text(json.dumps({"keys": [jwk]}))
        return cls(private(key), public_pem, private(stranger), path)

    def settings(self) -> dict[str, str]:
        """Gateway settings that verify tokens of this key."""
        return {
            "jwt_algorithms": '["RS256"]',
            "jwks": str(self.jwks_path),
            "jwt_audience": AUDIENCE,
            "jwt_issuer": ISSUER,
            "tenant": TENANT,
            "allowed_origins": f'["{ALLOWED_ORIGIN}"]',
        }

    def claims(
        self,
        sub: str,
        channels: list[str] | None = None,
        publish: list[str] | None = None,
        ttl_s: float = 600,
        **overrides: Any,
    ) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": sub,
            "tenant": TENANT,
            "channels": channels if channels is not None else ["orders:{sub}"],
            "publish": publish if publish is not None else ["Order.*"],
            "aud": AUDIENCE,
            "iss": ISSUER,
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl_s),
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, sub: str, *, kid: str = KID, key: str | None = None, **kwargs: Any) -> str:
        """A token signed with the JWKS key (or ``key``), for ``sub``."""
        return jwt.encode(
            self.claims(sub, **kwargs),
            key if key is not None else self.private_pem,
            algorithm="RS256",
            headers={"kid": kid},
        )

    def hostile(self) -> dict[str, str | None]:
        """The tokens every endpoint must refuse, by name (``None``: no token at all)."""
        valid = self.token("user-a")
        header, _, signature = valid.split(".")
        tampered = ".".join(
            [header, _segment(self.claims("user-a", channels=["orders:*"])), signature]
        )
        unsigned = ".".join(
            [_segment({"alg": "none", "typ": "JWT", "kid": KID}), _segment(self.claims("user-a"))]
        )
        confused_head = _segment({"alg": "HS256", "typ": "JWT", "kid": KID})
        confused_body = _segment(self.claims("user-a"))
        mac = hmac.new(
            self.public_pem.encode(), f"{confused_head}.{confused_body}".encode(), hashlib.sha256
        )
        return {
            "no_token": None,
            "malformed": "not-a-jwt",
            "alg_none": unsigned + ".",
            "hs256_with_rs_public_key": f"{confused_head}.{confused_body}.{_b64(mac.digest())}",
            "expired": self.token("user-a", iat=1, nbf=1, exp=int(time.time()) - 3600),
            "not_yet_valid": self.token("user-a", nbf=int(time.time()) + 3600),
            "wrong_audience": self.token("user-a", aud="someone-else"),
            "wrong_issuer": self.token("user-a", iss="https://evil.test"),
            "unknown_kid": self.token("user-a", kid="k-unknown"),
            "signed_by_stranger": self.token("user-a", key=self.stranger_pem),
            "tampered_payload": tampered,
            "other_tenant": self.token("user-a", tenant="globex"),
            "no_tenant": self.token("user-a", tenant=None),
            "no_exp": self.token("user-a", exp=None),
        }

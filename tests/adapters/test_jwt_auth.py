import base64
import hashlib
import hmac
import json
import time
from dataclasses import replace
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gateway.adapters.jwt_auth import JwtSettings, JwtVerifier, mint
from gateway.core.authz import Forbidden, Principal, Unauthorized
from gateway.errors import ConfigError

SECRET = "s" * 16 + "0123456789abcdef-dev-secret"
AUD = "sync-gateway"
ISS = "https://auth.example"
CHANNELS = ["orders:{sub}", "inventory:*"]
PUBLISH = ["Order.*"]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, object], claims: dict[str, object], key: bytes) -> str:
    """An HS256-signed token built by hand (PyJWT refuses to sign with a PEM key as secret)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def good_claims(**extra: object) -> dict[str, object]:
    now = int(time.time())
    return {
        "sub": "u-42",
        "aud": AUD,
        "iss": ISS,
        "exp": now + 600,
        "nbf": now,
        "channels": CHANNELS,
        "publish": PUBLISH,
        **extra,
    }


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture
def hs() -> JwtSettings:
    return JwtSettings(algorithms=("HS256",), secret=SECRET, audience=AUD, issuer=ISS, leeway_s=5)


@pytest.fixture
def rs(rsa_key: rsa.RSAPrivateKey) -> JwtSettings:
    return JwtSettings(
        algorithms=("RS256",), public_key=public_pem(rsa_key), audience=AUD, issuer=ISS
    )


@pytest.fixture
def jwks_file(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> Path:
    jwk = json.loads(ECAlgorithm.to_jwk(ec_key.public_key()))
    other = json.loads(ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key()))
    path = tmp_path / "jwks.json"
    path.write_text(
        json.dumps(
            {
                "keys": [
                    {**other, "kid": "old", "alg": "ES256", "use": "sig"},
                    {**jwk, "kid": "k1", "alg": "ES256", "use": "sig"},
                ]
            }
        )
    )
    return path


@pytest.fixture
def es(jwks_file: Path) -> JwtSettings:
    return JwtSettings(algorithms=("ES256",), jwks_path=jwks_file, audience=AUD, issuer=ISS)


def refused(verifier: JwtVerifier, token: str, reason: str) -> None:
    with pytest.raises(Unauthorized) as info:
        verifier.verify(token)
    assert info.value.reason == reason
    assert info.value.status == 401
    assert info.value.__cause__ is None
    if token:
        assert token not in str(info.value)
        for part in token.split("."):
            if len(part) > 8:
                assert part not in str(info.value)


# --- the good cases --------------------------------------------------------------------------


def test_good_hs256(hs: JwtSettings) -> None:
    token = mint(hs, "u-42", channels=CHANNELS, publish=PUBLISH, ttl_s=600, tenant="acme")
    p = JwtVerifier(hs).verify(token)
    assert p.subject == "u-42"
    assert p.tenant == "acme"
    assert p.channel_patterns == tuple(CHANNELS)
    assert p.publish_patterns == tuple(PUBLISH)
    assert p.expires_at is not None
    assert p.expires_at > time.time()
    assert p.may_subscribe("orders:u-42")
    assert not p.may_subscribe("orders:u-1")
    assert p.may_publish("Order.Placed", "u-42")


def test_good_rs256(rs: JwtSettings, rsa_key: rsa.RSAPrivateKey) -> None:
    token = mint(rs, "dev-7", channels=["inventory:s-7"], publish=[], ttl_s=60,
                 private_key=private_pem(rsa_key))  # fmt: skip
    p = JwtVerifier(rs).verify(token)
    assert (p.subject, p.channel_patterns, p.publish_patterns) == ("dev-7", ("inventory:s-7",), ())


def test_good_es256_via_jwks_kid(es: JwtSettings, ec_key: ec.EllipticCurvePrivateKey) -> None:
    token = mint(es, "u-42", channels=CHANNELS, publish=PUBLISH, ttl_s=60,
                 private_key=private_pem(ec_key), kid="k1")  # fmt: skip
    p = JwtVerifier(es).verify(token)
    assert p.subject == "u-42"
    assert p.may_subscribe("inventory:s-1")


def test_leeway_accepts_a_just_expired_token(hs: JwtSettings) -> None:
    token = mint(hs, "u-42", channels=[], publish=[], ttl_s=60, now=time.time() - 62)
    assert JwtVerifier(hs).verify(token).subject == "u-42"


def test_tenant_isolation(hs: JwtSettings) -> None:
    gw = replace(hs, tenant="acme")
    ok = mint(gw, "u-42", channels=[], publish=[], ttl_s=60)
    assert JwtVerifier(gw).verify(ok).tenant == "acme"
    other = mint(gw, "u-42", channels=[], publish=[], ttl_s=60, tenant="globex")
    with pytest.raises(Forbidden):
        JwtVerifier(gw).verify(other)
    untenanted = mint(hs, "u-42", channels=[], publish=[], ttl_s=60)
    with pytest.raises(Forbidden):
        JwtVerifier(gw).verify(untenanted)


# --- the auth matrix: every bad token is refused ---------------------------------------------


def test_no_token(hs: JwtSettings) -> None:
    refused(JwtVerifier(hs), "", "missing_token")
    with pytest.raises(Unauthorized):
        JwtVerifier(hs).verify(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "token",
    [
        "x",
        "a.b",
        "a.b.c",
        "...",
        "eyJhbGciOiJIUzI1NiJ9.%%%.x",
        "Bearer abc",
        "\u00e9.\u00e9.\u00e9",
        "a" * 9000,
    ],
)
def test_malformed(hs: JwtSettings, token: str) -> None:
    with pytest.raises(Unauthorized) as info:
        JwtVerifier(hs).verify(token)
    assert info.value.reason in ("malformed", "bad_signature")


def test_alg_none(hs: JwtSettings, rs: JwtSettings) -> None:
    for alg in ("none", "None", "NONE"):
        header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
        token = f"{header}.{b64(json.dumps(good_claims()).encode())}."
        refused(JwtVerifier(hs), token, "bad_algorithm")
        refused(JwtVerifier(rs), token, "bad_algorithm")


def test_algorithm_confusion_hs256_signed_with_the_public_key(
    rs: JwtSettings, rsa_key: rsa.RSAPrivateKey
) -> None:
    assert rs.public_key is not None
    token = forge({"alg": "HS256", "typ": "JWT"}, good_claims(), rs.public_key.encode())
    refused(JwtVerifier(rs), token, "bad_algorithm")


def test_algorithm_confusion_via_jwks(es: JwtSettings, ec_key: ec.EllipticCurvePrivateKey) -> None:
    token = forge({"alg": "HS256", "kid": "k1"}, good_claims(), public_pem(ec_key).encode())
    refused(JwtVerifier(es), token, "bad_algorithm")


def test_rs_token_on_an_hs_gateway(hs: JwtSettings, rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(good_claims(), private_pem(rsa_key), algorithm="RS256")
    refused(JwtVerifier(hs), token, "bad_algorithm")


def test_expired(hs: JwtSettings) -> None:
    token = mint(hs, "u-42", channels=[], publish=[], ttl_s=60, now=time.time() - 120)
    refused(JwtVerifier(hs), token, "expired")


def test_not_yet_valid(hs: JwtSettings) -> None:
    token = jwt.encode(good_claims(nbf=int(time.time()) + 120), SECRET, algorithm="HS256")
    refused(JwtVerifier(hs), token, "not_yet_valid")


def test_wrong_audience(hs: JwtSettings) -> None:
    token = jwt.encode(good_claims(aud="another-service"), SECRET, algorithm="HS256")
    refused(JwtVerifier(hs), token, "bad_audience")


def test_wrong_issuer(hs: JwtSettings) -> None:
    token = jwt.encode(good_claims(iss="https://evil.example"), SECRET, algorithm="HS256")
    refused(JwtVerifier(hs), token, "bad_issuer")


@pytest.mark.parametrize("claim", ["exp", "sub", "aud", "iss"])
def test_missing_required_claim(hs: JwtSettings, claim: str) -> None:
    claims = good_claims()
    del claims[claim]
    refused(JwtVerifier(hs), jwt.encode(claims, SECRET, algorithm="HS256"), "missing_claim")


def test_unknown_kid(es: JwtSettings, ec_key: ec.EllipticCurvePrivateKey) -> None:
    pem = private_pem(ec_key)
    for kid in ("k2", None):
        token = mint(es, "u-42", channels=[], publish=[], ttl_s=60, private_key=pem, kid=kid)
        refused(JwtVerifier(es), token, "unknown_kid")


def test_kid_of_another_key(es: JwtSettings, ec_key: ec.EllipticCurvePrivateKey) -> None:
    token = mint(es, "u-42", channels=[], publish=[], ttl_s=60,
                 private_key=private_pem(ec_key), kid="old")  # fmt: skip
    refused(JwtVerifier(es), token, "bad_signature")


def test_wrong_secret(hs: JwtSettings) -> None:
    token = jwt.encode(good_claims(), "x" * 40, algorithm="HS256")
    refused(JwtVerifier(hs), token, "bad_signature")


@pytest.mark.parametrize("fixture", ["hs", "rs"])
def test_tampered_payload(
    request: pytest.FixtureRequest, rsa_key: rsa.RSAPrivateKey, fixture: str
) -> None:
    settings: JwtSettings = request.getfixturevalue(fixture)
    token = mint(settings, "u-42", channels=["orders:{sub}"], publish=[], ttl_s=60,
                 private_key=private_pem(rsa_key))  # fmt: skip
    header, _, signature = token.split(".")
    forged = good_claims(channels=["orders:*"])
    refused(JwtVerifier(settings), f"{header}.{b64(json.dumps(forged).encode())}.{signature}",
            "bad_signature")  # fmt: skip


def test_bad_claims_after_verification(hs: JwtSettings) -> None:
    token = jwt.encode(good_claims(channels=["*"]), SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized) as info:
        JwtVerifier(hs).verify(token)
    assert info.value.reason == "bad_claims"


# --- configuration refused at construction ---------------------------------------------------


def test_settings_refused(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey, jwks_file: Path
) -> None:
    rsa_pub, ec_pub = public_pem(rsa_key), public_pem(ec_key)
    bad = [
        JwtSettings(algorithms=()),
        JwtSettings(algorithms=("none",), secret=SECRET),
        JwtSettings(algorithms=("HS256", "none"), secret=SECRET),
        JwtSettings(algorithms=("HS256", "RS256"), secret=SECRET, public_key=rsa_pub),
        JwtSettings(algorithms=("HS256", "ES256"), secret=SECRET),
        JwtSettings(algorithms=("HS256",)),
        JwtSettings(algorithms=("HS256",), secret="short"),
        JwtSettings(algorithms=("HS256",), secret=SECRET, public_key=rsa_pub),
        JwtSettings(algorithms=("HS256",), secret=rsa_pub, jwks_path=jwks_file),
        JwtSettings(algorithms=("RS256",)),
        JwtSettings(algorithms=("RS256",), secret=SECRET),
        JwtSettings(algorithms=("RS256",), public_key=rsa_pub, jwks_path=jwks_file),
        JwtSettings(algorithms=("RS256",), public_key="not a key"),
        JwtSettings(algorithms=("RS256",), public_key=ec_pub),
        JwtSettings(algorithms=("ES256",), public_key=rsa_pub),
        JwtSettings(algorithms=("RS256",), jwks_path=jwks_file),  # keys are ES256
        JwtSettings(algorithms=("ES256",), jwks_path=tmp_path / "missing.json"),
        JwtSettings(algorithms=("XS256",), secret=SECRET),
        JwtSettings(algorithms=("HS256",), secret=SECRET, leeway_s=-1),
    ]
    for settings in bad:
        with pytest.raises(ConfigError):
            JwtVerifier(settings)


@pytest.mark.parametrize(
    "keys",
    [
        "not json",
        json.dumps({"keys": []}),
        json.dumps([]),
        json.dumps({"keys": [{"kty": "EC"}]}),
        "duplicate",
        "no-kid",
        "encryption",
    ],
)
def test_jwks_file_refused(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey, keys: str) -> None:
    jwk = json.loads(ECAlgorithm.to_jwk(ec_key.public_key()))
    variants = {
        "duplicate": {"keys": [{**jwk, "kid": "a"}, {**jwk, "kid": "a"}]},
        "no-kid": {"keys": [jwk]},
        "encryption": {"keys": [{**jwk, "kid": "a", "use": "enc"}]},
    }
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(variants[keys]) if keys in variants else keys)
    with pytest.raises(ConfigError):
        JwtVerifier(JwtSettings(algorithms=("ES256",), jwks_path=path))


def test_rsa_jwks(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    jwk = json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key()))
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{**jwk, "kid": "r1"}]}))
    settings = JwtSettings(algorithms=("RS256",), jwks_path=path)
    token = mint(settings, "svc", channels=[], publish=["*"], ttl_s=60,
                 private_key=private_pem(rsa_key), kid="r1")  # fmt: skip
    assert JwtVerifier(settings).verify(token) == Principal(
        subject="svc",
        tenant=None,
        channel_patterns=(),
        publish_patterns=("*",),
        expires_at=JwtVerifier(settings).verify(token).expires_at,
    )


def test_mint_needs_a_private_key_for_asymmetric(rs: JwtSettings) -> None:
    with pytest.raises(ConfigError):
        mint(rs, "u", channels=[], publish=[], ttl_s=60)

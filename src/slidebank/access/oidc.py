"""Institutional identities: OIDC bearer tokens and GA4GH Passport visas, verified with PyJWT.

Configured by environment (a node trusts one identity provider and a list of visa issuers):
SLIDEBANK_OIDC_ISSUER, SLIDEBANK_OIDC_AUDIENCE, SLIDEBANK_OIDC_JWKS (a JWKS file or https URL)
and SLIDEBANK_VISA_ISSUERS ("issuer=jwks,issuer=jwks"). Signature, issuer, audience and expiry
are all required; a `ControlledAccessGrants` visa for `.../datasets/NAME` from a trusted visa
issuer counts as a grant for dataset NAME until the visa expires.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt

ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]
VISA_TYPE = "ControlledAccessGrants"


class InvalidIdentity(Exception):
    """The token is not one this node accepts (any reason): answered 401."""


@dataclass(frozen=True)
class Identity:
    issuer: str
    subject: str
    name: str
    dataset_visas: dict[str, datetime] = field(default_factory=dict)  # dataset alias -> visa expiry
    visa_issuers: dict[str, str] = field(default_factory=dict)  # dataset alias -> who issued its visa


class _KeySet:
    """Signing keys of one issuer, from a JWKS file or URL (fetched and cached by PyJWT)."""

    def __init__(self, source: str) -> None:
        if source.startswith(("https://", "http://")):
            self._client: jwt.PyJWKClient | None = jwt.PyJWKClient(source, cache_keys=True)
            self._keys = None
        else:
            self._client = None
            self._keys = jwt.PyJWKSet.from_json(Path(source).read_text())

    def key_for(self, token: str) -> Any:
        if self._client is not None:
            return self._client.get_signing_key_from_jwt(token).key
        kid = jwt.get_unverified_header(token).get("kid")
        for key in self._keys.keys:  # type: ignore[union-attr]  # set when there is no client
            if kid is None or key.key_id == kid:
                return key.key
        raise InvalidIdentity("unknown signing key")


class OidcVerifier:
    def __init__(self, issuer: str, audience: str, jwks: str, visa_issuers: dict[str, str] | None = None) -> None:
        self.issuer, self.audience = issuer, audience
        self._keys = _KeySet(jwks)
        self._visa_keys = {name: _KeySet(source) for name, source in (visa_issuers or {}).items()}

    @classmethod
    def from_environment(cls) -> OidcVerifier | None:
        issuer, audience, jwks = (os.environ.get(f"SLIDEBANK_OIDC_{k}") for k in ("ISSUER", "AUDIENCE", "JWKS"))
        if not (issuer and audience and jwks):
            return None
        visas = dict(pair.split("=", 1) for pair in os.environ.get("SLIDEBANK_VISA_ISSUERS", "").split(",") if pair)
        return cls(issuer, audience, jwks, visas)

    @staticmethod
    def looks_like_jwt(token: str) -> bool:
        return token.count(".") == 2

    def verify(self, token: str) -> Identity:
        try:
            claims = jwt.decode(
                token, self._keys.key_for(token), algorithms=ALGORITHMS, audience=self.audience, issuer=self.issuer,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except (jwt.PyJWTError, InvalidIdentity) as error:
            raise InvalidIdentity(str(error)) from error
        name = str(claims.get("preferred_username") or claims["sub"])
        granted, issuers = self._dataset_visas(claims)
        return Identity(claims["iss"], claims["sub"], name, granted, issuers)

    def _dataset_visas(self, claims: dict[str, Any]) -> tuple[dict[str, datetime], dict[str, str]]:
        """Datasets granted by valid ControlledAccessGrants visas of trusted issuers (with each visa's
        expiry and issuer); others are ignored."""
        granted: dict[str, datetime] = {}
        issuers: dict[str, str] = {}
        for visa_token in claims.get("ga4gh_passport_v1") or []:
            try:
                issuer = jwt.decode(visa_token, options={"verify_signature": False}).get("iss")
                keys = self._visa_keys.get(str(issuer))
                if keys is None:
                    continue
                visa = jwt.decode(visa_token, keys.key_for(visa_token), algorithms=ALGORITHMS, issuer=issuer,
                                  options={"require": ["exp", "iss", "sub"], "verify_aud": False})
            except (jwt.PyJWTError, InvalidIdentity, TypeError):
                continue
            body = visa.get("ga4gh_visa_v1") or {}
            if visa.get("sub") != claims["sub"] or body.get("type") != VISA_TYPE:
                continue
            dataset = str(body.get("value", "")).rstrip("/").rsplit("/", 1)[-1]
            if dataset:
                granted[dataset] = datetime.fromtimestamp(visa["exp"], UTC)
                issuers[dataset] = str(issuer)
        return granted, issuers


def jwks_document(public_keys: list[tuple[str, Any]]) -> str:
    """A JWKS JSON document for (kid, public key) pairs: for operators' setups and the tests."""
    keys = []
    for kid, key in public_keys:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key))
        keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
    return json.dumps({"keys": keys})

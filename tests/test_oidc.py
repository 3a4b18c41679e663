"""OIDC bearer tokens and GA4GH Passport visas, signed by keys the test makes, against a real server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import json_lines, run_cli, running_server
from slidebank.access.oidc import jwks_document

ISSUER, AUDIENCE, VISA_ISSUER = "https://login.hospital.example", "slidebank", "https://visas.elixir.example"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Setup:
    base: str
    home: Path
    slide: str
    idp: rsa.RSAPrivateKey
    visa_issuer: rsa.RSAPrivateKey

    def token(self, key: rsa.RSAPrivateKey | None = None, kid: str = "idp", **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u-123", "preferred_username": "carol",
                "iat": now, "exp": now + 600, **claims}
        return jwt.encode(body, key or self.idp, algorithm="RS256", headers={"kid": kid})

    def visa(self, dataset: str, key: rsa.RSAPrivateKey | None = None, issuer: str = VISA_ISSUER,
             sub: str = "u-123", kind: str = "ControlledAccessGrants") -> str:
        now = int(time.time())
        body = {"iss": issuer, "sub": sub, "iat": now, "exp": now + 600,
                "ga4gh_visa_v1": {"type": kind, "value": f"https://repo.example/datasets/{dataset}",
                                  "source": "https://dac.example", "by": "dac", "asserted": now}}
        return jwt.encode(body, key or self.visa_issuer, algorithm="RS256", headers={"kid": "visa"})

    def status(self, path: str, token: str) -> int:
        return httpx.get(f"{self.base}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, generic_slide) -> Iterator[Setup]:  # noqa: ANN001
    folder = tmp_path_factory.mktemp("oidc")
    home = folder / "node"
    run_cli("init", home=home, check=True)
    run_cli("datasets", "create", "restricted", "--policy", "apply to the DAC", home=home, check=True)
    [slide] = json_lines(run_cli("ingest", str(generic_slide.path), "--dataset", "restricted", "--json",
                                 home=home, check=True).stdout)
    idp, visa_issuer = new_key(), new_key()
    (folder / "idp.jwks").write_text(jwks_document([("idp", idp.public_key())]))
    (folder / "visas.jwks").write_text(jwks_document([("visa", visa_issuer.public_key())]))
    env = {"SLIDEBANK_OIDC_ISSUER": ISSUER, "SLIDEBANK_OIDC_AUDIENCE": AUDIENCE,
           "SLIDEBANK_OIDC_JWKS": str(folder / "idp.jwks"),
           "SLIDEBANK_VISA_ISSUERS": f"{VISA_ISSUER}={folder / 'visas.jwks'}"}
    with running_server(home, env=env) as base:
        yield Setup(base, home, slide["slide_id"], idp, visa_issuer)


def test_valid_oidc_token_identifies_a_researcher(setup: Setup) -> None:
    me = httpx.get(f"{setup.base}/api/me", headers={"Authorization": f"Bearer {setup.token()}"}).json()
    assert (me["name"], me["role"]) == ("carol@login.hospital.example", "researcher")  # namespaced by issuer
    assert setup.status(f"/api/slides/{setup.slide}", setup.token()) == 404  # no grant yet


def test_an_identity_provider_cannot_mint_the_operator_or_lock_anyone_out(setup: Setup) -> None:
    """Names from the identity provider never equal local or reserved names, and a second subject whose
    name is taken gets its own account instead of an error."""
    run_cli("run", "qc", "--slide", setup.slide, home=setup.home, check=True)  # a job of the operator's
    posing = setup.token(sub="u-evil", preferred_username="operator")
    me = httpx.get(f"{setup.base}/api/me", headers={"Authorization": f"Bearer {posing}"}).json()
    assert me["name"] != "operator" and me["name"].endswith("@login.hospital.example")
    assert httpx.get(f"{setup.base}/api/jobs", headers={"Authorization": f"Bearer {posing}"}).json() == []
    twin = setup.token(sub="u-twin", preferred_username="operator")  # same name, another subject
    answer = httpx.get(f"{setup.base}/api/me", headers={"Authorization": f"Bearer {twin}"})
    assert answer.status_code == 200 and answer.json()["name"] not in ("operator", me["name"])
    again = httpx.get(f"{setup.base}/api/me", headers={"Authorization": f"Bearer {posing}"}).json()
    assert again["name"] == me["name"]  # each subject keeps its own account


@pytest.mark.parametrize(
    "change",
    [{"aud": "someone-else"}, {"iss": "https://evil.example"}, {"exp": int(time.time()) - 60}, {"key": "other"},
     {"kid": "unknown"}, {"tamper": True}],
    ids=["audience", "issuer", "expired", "signature", "kid", "tampered"],
)
def test_wrong_tokens_are_refused(setup: Setup, change: dict[str, Any]) -> None:
    claims = {k: v for k, v in change.items() if k in ("aud", "iss", "exp")}
    token = setup.token(new_key() if change.get("key") else None, change.get("kid", "idp"), **claims)
    if change.get("tamper"):
        header, body, signature = token.split(".")
        token = ".".join((header, body[:-4] + ("AAAA" if body[-4:] != "AAAA" else "BBBB"), signature))
    assert setup.status("/api/me", token) == 401


def test_passport_visa_from_a_trusted_issuer_is_a_grant(setup: Setup) -> None:
    path = f"/slides/{setup.slide}_files/0/0_0.jpeg"
    assert setup.status(path, setup.token(ga4gh_passport_v1=[setup.visa("restricted")])) == 200
    for untrusted in (
        setup.visa("restricted", key=new_key()),  # signed by someone else
        setup.visa("restricted", issuer="https://unknown.example"),
        setup.visa("restricted", sub="someone-else"),
        setup.visa("restricted", kind="AffiliationAndRole"),
        setup.visa("other-dataset"),
    ):
        assert setup.status(path, setup.token(ga4gh_passport_v1=[untrusted])) == 404


def test_api_tokens_still_work_beside_oidc(setup: Setup) -> None:
    token = run_cli("tokens", "create", "admin", home=setup.home, check=True).stdout.strip()
    assert setup.status(f"/api/slides/{setup.slide}", token) == 200
    assert setup.status("/api/me", "sbk_" + "x" * 43) == 401

"""An IdP that issues JWT access tokens: the bot verifies them against the IdP's JWKS."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from bot.idp.errors import IdPError
from tests.conftest import MintingBot
from tests.test_e2e_minting import approve, pickup_url


@pytest.fixture
def idp_token_format() -> str:
    return "jwt"


def test_jwt_access_token_is_verified_and_minted(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id = approve(bot)
    assert bot.stored(request_id).status == "active"
    token = httpx.get(pickup_url(bot, request_id), headers={"Accept": "application/json"}).json()["access_token"]
    assert token.count(".") == 2
    minting = bot.served.runtime.minting
    assert minting is not None
    claims = minting.idp.verify_jwt_access_token(token, audience="https://db.internal.example")
    assert claims is not None and claims["sub"] == "alice" and claims["scope"] == "read"

    # Wrong audience, and a tampered payload, do not verify.
    with pytest.raises(IdPError) as wrong_aud:
        minting.idp.verify_jwt_access_token(token, audience="https://other.example")
    assert wrong_aud.value.code == "invalid_token"
    header, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["scope"] = "read write"
    forged_payload = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    with pytest.raises(IdPError) as forged:
        minting.idp.verify_jwt_access_token(f"{header}.{forged_payload}.{signature}", audience=body["aud"])
    assert forged.value.code == "invalid_token"

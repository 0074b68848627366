"""An IdP that issues JWT access tokens: the bot verifies them against the IdP's JWKS."""

from __future__ import annotations

import base64
import json

import pytest

from bot.idp.errors import IdPError
from tests.testbot import MintingBot
from tests.world import APPROVER_1, PROD_DB_CLAIMS


@pytest.fixture
def idp_token_format() -> str:
    return "jwt"


def test_jwt_access_token_is_verified_and_minted(minting_bot: MintingBot) -> None:
    bot = minting_bot
    request_id = bot.approve()
    assert bot.stored(request_id).status == "active"
    token = bot.token(request_id)
    assert token.count(".") == 2
    claims = bot.idp_client.verify_jwt_access_token(token, audience="https://db.internal.example")
    assert claims is not None and claims["sub"] == "alice" and claims["scope"] == "read"
    # A resource server verifying the JWT reads the approval's context from its signed jit claim.
    assert claims["jit"] == {"request_id": request_id, "approvers": [APPROVER_1], "claims": PROD_DB_CLAIMS}

    # Wrong audience, and a tampered payload, do not verify.
    with pytest.raises(IdPError) as wrong_aud:
        bot.idp_client.verify_jwt_access_token(token, audience="https://other.example")
    assert wrong_aud.value.code == "invalid_token"
    header, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["scope"] = "read write"
    forged_payload = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    with pytest.raises(IdPError) as forged:
        bot.idp_client.verify_jwt_access_token(f"{header}.{forged_payload}.{signature}", audience=body["aud"])
    assert forged.value.code == "invalid_token"

"""Extensions end to end: `/jit extend` and the Extend button on the expiry notice, decided by the policy
and the same approvers, minted by the dev IdP for the new window, the old token revoked once the new
one is picked up (or at its own expiry), and the chain shown on both cards."""

from __future__ import annotations

import json
from datetime import timedelta

import httpx
import pytest

from bot.domain.digest import AuditAnchor, Digest, digest_json, plan_digest
from bot.domain.policy import Policy
from bot.jobs.expiry import SWEEP_JOB
from bot.runtime import REQUEST_TIMEOUTS_JOB
from bot.services.reminders import REMINDERS_JOB
from bot.slack.forms import ExtendForm
from bot.slack.ids import ActionId
from bot.store.db import read_scope
from bot.store.digest import read_figures
from bot.store.models import AccessRequest
from tests.testbot import MintingBot, card_text, cards_posted, opened_views
from tests.world import APPROVER_1, AUDIT_CHANNEL, OUTSIDER, REQUESTER, lifted_quota, make_policy, policy_data

# Most of these are about the flow, not the database: SQLite only (the suite's time is tight).
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

EXTEND_READS = {
    # Extensions of prod-db reads need nobody, up to 3h in all (prod-db's own max_duration is 2h).
    "name": "extend-reads",
    "when": {"extension": True, "resources": ["prod-db"], "scopes_within": ["read"]},
    "effect": "auto_approve",
    "max_total": "3h",
}


@pytest.fixture
def sweep_interval() -> float:
    """Only the expiry timer and explicit sweeps revoke here, so a test that moves the clock past a
    grant's end decides when the engine sees it."""
    return 3600.0


def _extend(bot: MintingBot, user: str, text: str) -> tuple[str, AccessRequest | None]:
    """``/jit extend <text>`` as ``user``: the answer, and the extension it stored (None: none)."""
    before = bot.request_count()
    response, key = bot.command(user, f"extend {text}")
    assert response.status_code == 200, response.text
    answer = response.json()["text"] if response.content and response.json().get("text") else bot.reply_text(key)
    return answer, _newest_extension(bot) if bot.request_count() > before else None


def _newest_extension(bot: MintingBot) -> AccessRequest | None:
    from sqlmodel import Session, col, select

    with Session(bot.engine) as session:
        return session.exec(
            select(AccessRequest)
            .where(col(AccessRequest.extends).is_not(None))
            .order_by(col(AccessRequest.created_at).desc())
        ).first()


def _card_of(bot: MintingBot, request_id: str) -> str:
    """Wait for the extension's card to be posted and return its id."""
    bot.eventually(lambda: any(c.request_id == request_id for c in cards_posted(bot.slack)))
    bot.eventually(lambda: bot.stored(request_id).card_ts is not None)
    return request_id


def _digest_extensions(bot: MintingBot) -> dict[str, int]:
    """Today's extensions as the digest's JSON counts them."""
    options = bot.served.runtime.policy.digest
    now = bot.clock()
    plan = plan_digest(now.astimezone(options.zone).date(), options, now=now)
    with read_scope(bot.engine) as session:
        figures = read_figures(session=session, plan=plan)
    found = digest_json(Digest(plan, figures, AuditAnchor(0, "0" * 64, verified=True)))["extensions"]
    assert isinstance(found, dict)
    return found


def _pick_up(bot: MintingBot, request_id: str) -> str:
    answer = httpx.get(bot.pickup_url(request_id), headers={"Accept": "application/json"})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def test_approved_extension_mints_a_new_token_and_its_pickup_revokes_the_old(minting_bot: MintingBot) -> None:
    bot = minting_bot
    first = bot.approve("request prod-db read 1h checking INC-1234")
    old_token = _pick_up(bot, first)
    old_end = bot.grant(first).expires_at

    answer, extension = _extend(bot, REQUESTER, f"{first} 30m")
    assert extension is not None
    second = extension.id
    assert f"Extension `{second}` of `{first}` (+30m, total 1h30m)" in answer
    assert extension.reason == "checking INC-1234", "no reason typed: the original's"
    assert (extension.requester_subject, extension.scopes, extension.audience) == (
        "alice",
        "read",
        "https://db.internal.example",
    )
    (asked,) = bot.events(first, "extension_requested")
    assert asked.details == {
        "extension": second,
        "extra_seconds": 1800,
        "total_seconds": 5400,
        "cap_seconds": 7200,
        "cap_rule": None,
    }

    # The chain on both cards: the extension's, and the grant it extends.
    _card_of(bot, second)
    chain = f"Extension* of `{first}` (1h) → +30m, total 1h30m"
    assert chain in card_text(bot.card_showing(second, chain))
    bot.card_showing(first, f"Extension `{second}`: asked, waiting for approval")
    assert [b["text"]["text"] for b in bot.buttons(second)] == ["Approve", "Deny"]
    assert f"for 30m more, extending {first}." in str(bot.card(second)["text"])
    (line,) = bot.eventually(lambda: bot.posts_to(AUDIT_CHANNEL, f"[submitted] `{second}`"))
    assert f"Extension of `{first}`, total 1h30m." in line

    bot.click(APPROVER_1, ActionId.APPROVE, second)
    bot.eventually(lambda: bot.stored(second).status == "active", timeout=15)
    new_grant = bot.grant(second)
    assert new_grant.expires_at == old_end + timedelta(minutes=30), "the new window runs on from the old end"
    (issued,) = [t for t in bot.idp.tokens() if t["request_id"] == second]
    assert abs(issued["exp"] - new_grant.expires_at.timestamp()) <= 2, "the IdP's lifetime matches the window"
    bot.card_showing(first, f"Extension `{second}`: approved; its new token replaces this one once picked up")
    assert bot.grant(first).status == "active", "the old token lives until the new one is picked up"
    assert bot.introspect(old_token)["active"] is True
    dm = bot.eventually(lambda: [t for t in bot.dms_to(REQUESTER, second) if "/pickup/" in t])
    assert f"This extends `{first}`: its token is revoked once you pick this one up." in dm[0]

    new_token = _pick_up(bot, second)
    bot.eventually(lambda: bot.stored(first).status == "revoked", timeout=15)
    assert bot.introspect(old_token) == {"active": False}
    assert bot.introspect(new_token)["active"] is True
    old = bot.grant(first)
    assert old.replaced_by == second and old.revoke_requested_by is None
    assert old.token_ciphertext is None
    (replaced,) = bot.events(first, "grant_replaced")
    assert replaced.details == {"replaced_by": second}
    (revoked,) = bot.events(first, "grant_revoked")
    assert revoked.details["proof"] == {"revocation": "accepted", "introspection": {"active": False}}
    bot.card_showing(first, f"Revoked: replaced by extension `{second}` once its new token was picked up")
    told = bot.eventually(lambda: [t for t in bot.dms_to(REQUESTER, first) if "was replaced by extension" in t])
    assert f"`{second}`" in told[0] and "old token was revoked at the IdP" in told[0]
    assert bot.grant(second).status == "active"
    (summary,) = bot.eventually(lambda: bot.posts_to(AUDIT_CHANNEL, f"[revoked] `{first}`"))
    assert f"Replaced by extension `{second}` once its new token was picked up" in summary
    assert bot.slack.rejected() == []
    assert _digest_extensions(bot) == {"requested": 1, "approved": 1}


def test_unpicked_extension_leaves_the_old_token_to_its_own_expiry(minting_bot: MintingBot) -> None:
    bot = minting_bot
    first = bot.approve("request prod-db read 2m quick look")
    old_token = _pick_up(bot, first)
    _answer, extension = _extend(bot, REQUESTER, f"{first} 30m still looking")
    assert extension is not None and extension.reason == "still looking"
    second = _card_of(bot, extension.id)
    bot.click(APPROVER_1, ActionId.APPROVE, second)
    bot.eventually(lambda: bot.stored(second).status == "active", timeout=15)

    # The old grant's own end comes before anyone picks the new token up.
    bot.clock.advance(timedelta(minutes=2, seconds=1))
    bot.served.runtime.jobs.run_now(SWEEP_JOB)
    bot.eventually(lambda: bot.stored(first).status == "revoked", timeout=15)
    assert bot.introspect(old_token) == {"active": False}
    assert bot.grant(first).replaced_by is None, "it ran its course"
    bot.card_showing(first, "Revoked at its expiry")
    assert bot.events(first, "grant_replaced") == []
    # The new one lives on, and its link (ten minutes) still works.
    assert bot.grant(second).status == "active"
    new_token = _pick_up(bot, second)
    assert bot.introspect(new_token)["active"] is True


def test_denied_or_expired_extension_leaves_the_grant_to_end_at_its_time_one_at_a_time(minting_bot: MintingBot) -> None:
    bot = minting_bot
    first = bot.approve("request prod-db read 1h checking INC-1234")
    end = bot.grant(first).expires_at
    _answer, extension = _extend(bot, REQUESTER, f"{first} 30m")
    assert extension is not None
    second = _card_of(bot, extension.id)

    # One extension at a time: a second one while the first waits is refused, and nothing is stored.
    answer, again = _extend(bot, REQUESTER, f"{first} 15m")
    assert again is None
    assert f"Grant `{first}` already has extension `{second}` (pending)" in answer

    response = bot.deny(APPROVER_1, second, "finish tomorrow")
    assert response.status_code == 200
    bot.eventually(lambda: bot.stored(second).status == "denied")
    told = bot.eventually(lambda: [t for t in bot.dms_to(REQUESTER, second) if "denied" in t])
    assert "Reason: finish tomorrow" in told[0]
    assert f"Grant `{first}` ends at its original time." in told[0]
    bot.card_showing(first, f"Extension `{second}`: denied; this grant ends at its original time")
    assert bot.find_grant(second) is None
    grant = bot.grant(first)
    assert (grant.status, grant.expires_at) == ("active", end)

    # Denied is decided: a new extension may be asked.
    _answer, third = _extend(bot, REQUESTER, f"{first} 15m")
    assert third is not None and third.id != second
    assert _digest_extensions(bot) == {"requested": 2, "approved": 0}

    # Nobody decides it within request_timeout (30m): it expires, and the grant still ends on time.
    _card_of(bot, third.id)
    bot.clock.advance(timedelta(minutes=31))
    bot.served.runtime.jobs.run_now(REQUEST_TIMEOUTS_JOB)
    bot.eventually(lambda: bot.stored(third.id).status == "expired")
    told = bot.eventually(lambda: [t for t in bot.dms_to(REQUESTER, third.id) if "expired" in t])
    assert f"Grant `{first}` ends at its original time." in told[0]
    bot.card_showing(first, f"Extension `{third.id}`: expired undecided; this grant ends at its original time")
    grant = bot.grant(first)
    assert (grant.status, grant.expires_at) == ("active", end)


def test_extension_over_the_resource_maximum_is_refused_with_nothing_stored(minting_bot: MintingBot) -> None:
    bot = minting_bot
    first = bot.approve("request prod-db read 1h30m checking INC-1234")
    events = len(bot.audit())
    count = bot.request_count()
    answer, extension = _extend(bot, REQUESTER, f"{first} 1h")
    assert extension is None and bot.request_count() == count
    assert answer == (
        f"That would bring grant `{first}` to 2h30m in all, over the 2h allowed by the max_duration of "
        "`prod-db`. Nothing was asked; try a shorter extension."
    )
    assert len(bot.audit()) == events, "nothing recorded either"


@pytest.fixture
def policy(request: pytest.FixtureRequest) -> Policy:
    """The world's policy, or (parametrized indirectly) the one a test gives."""
    given: Policy | None = getattr(request, "param", None)
    return given or make_policy()


@pytest.mark.parametrize(
    "policy", [make_policy(rules=[EXTEND_READS], **lifted_quota(3))], ids=["extend-rule"], indirect=True
)
def test_an_extension_rule_auto_approves_up_to_its_max_total_and_chains(minting_bot: MintingBot) -> None:
    bot = minting_bot
    # The rule is only for extensions: the first request still goes to people.
    first = bot.approve("request prod-db read 1h30m checking INC-1234")
    assert bot.stored(first).rule is None

    answer, extension = _extend(bot, REQUESTER, f"{first} 1h")
    assert extension is not None, answer
    second = extension.id
    assert "auto-approved by rule `extend-reads`" in answer
    bot.eventually(lambda: bot.stored(second).status == "active", timeout=15)
    assert bot.stored(second).rule == "extend-reads"
    (submitted,) = bot.events(second, "request_submitted")
    assert submitted.details["extension"]["cap_rule"] == "extend-reads"
    assert submitted.details["decision"]["effect"] == "auto_approve"
    _pick_up(bot, second)
    bot.eventually(lambda: bot.stored(first).status == "revoked", timeout=15)

    # Extending the extension: the chain goes on, and the rule's max_total caps it.
    answer, over = _extend(bot, REQUESTER, f"{second} 45m")
    assert over is None, "nothing new stored"
    assert answer == (
        f"That would bring grant `{second}` to 3h15m in all, over the 3h allowed by rule `extend-reads`'s "
        "max_total. Nothing was asked; try a shorter extension."
    )
    _answer, third = _extend(bot, REQUESTER, f"{second} 30m")
    assert third is not None and third.id != second
    chain = f"Extension* of `{second}` (2h30m) → +30m, total 3h"
    assert chain in card_text(bot.card_showing(third.id, chain))


def test_the_extend_button_opens_a_form_whose_submission_extends(minting_bot: MintingBot) -> None:
    bot = minting_bot
    first = bot.approve("request prod-db read 1h checking INC-1234")
    # The expiry notice is a DM to the requester; its Extend button carries the request id.
    dm = {"channel": REQUESTER, "ts": "1700000000.000100"}

    # Someone else's press is refused and audited, and opens nothing.
    _, key = bot.click(OUTSIDER, ActionId.EXTEND, first, **dm)
    assert bot.reply_text(key) == "Only the requester of a grant can extend it."
    (attempt,) = bot.events(first, "unauthorized_attempt")
    assert attempt.actor == OUTSIDER and attempt.details["action"] == "extend"

    _, key = bot.click(REQUESTER, ActionId.EXTEND, first, **dm)
    (view,) = bot.eventually(lambda: opened_views(bot.slack, first))
    assert view["callback_id"] == ExtendForm.CALLBACK_ID
    assert json.loads(view["private_metadata"])["request_id"] == first

    def form(duration: str, reason: str = "") -> dict[str, dict[str, object]]:
        values: dict[str, dict[str, object]] = {
            ExtendForm.DURATION_BLOCK: {ExtendForm.DURATION_ACTION: {"type": "plain_text_input", "value": duration}}
        }
        values[ExtendForm.REASON_BLOCK] = {ExtendForm.REASON_ACTION: {"type": "plain_text_input", "value": reason}}
        return values

    count = bot.request_count()
    refused = bot.send.submit_view(REQUESTER, view, form("soon"))
    assert refused.json()["response_action"] == "errors"
    assert ExtendForm.DURATION_BLOCK in refused.json()["errors"]
    assert bot.request_count() == count

    accepted = bot.send.submit_view(REQUESTER, view, form("15m", "one more query"))
    assert accepted.status_code == 200
    extension = bot.eventually(lambda: _newest_extension(bot))
    assert (extension.extends, extension.duration_seconds, extension.reason) == (first, 900, "one more query")
    _card_of(bot, extension.id)
    # Answered where the button was pressed (the form keeps that response_url).
    assert f"Extension `{extension.id}` of `{first}` (+15m, total 1h15m) was sent to" in bot.reply_text(key)


def test_only_the_requester_can_extend_only_a_live_grant(minting_bot: MintingBot) -> None:
    bot = minting_bot
    first = bot.approve("request prod-db read 1h checking INC-1234")
    count = bot.request_count()

    answer, _ = _extend(bot, OUTSIDER, f"{first} 30m")
    assert answer == "Only the requester of a grant can extend it."
    (attempt,) = bot.events(first, "unauthorized_attempt")
    assert attempt.details == {"action": "extend", "refusal": "not_requester", "request_status": "active"}

    pending = bot.request(REQUESTER, "request billing read 30m check invoices").request_id
    answer, _ = _extend(bot, REQUESTER, f"{pending} 30m")
    assert f"Request `{pending}` is pending, so there is no live grant to extend." in answer
    answer, _ = _extend(bot, REQUESTER, "RNOSUCH000 30m")
    assert answer == "There is no request `RNOSUCH000`. `/jit list` shows your grants."
    answer, _ = _extend(bot, REQUESTER, f"{first}")
    assert answer.startswith("Which grant, and how much more time?")
    answer, _ = _extend(bot, REQUESTER, f"{first} soon")
    assert "Give the extra time like `30m`" in answer
    assert bot.request_count() == count + 1, "only the billing request was stored"
    assert bot.grant(first).status == "active"


def test_an_extension_is_never_granted_once_its_grant_has_ended(minting_bot: MintingBot) -> None:
    bot = minting_bot
    # Revoked early while its extension waits: the extension is cancelled with it.
    first = bot.approve("request prod-db read 1h checking INC-1234")
    _answer, extension = _extend(bot, REQUESTER, f"{first} 30m")
    assert extension is not None
    second = _card_of(bot, extension.id)
    response, _ = bot.command(REQUESTER, f"revoke {first}")
    assert response.status_code == 200
    bot.eventually(lambda: bot.stored(first).status == "revoked", timeout=15)
    bot.eventually(lambda: bot.stored(second).status == "cancelled")
    assert bot.stored(second).failure_code == "extended_grant_ended"
    bot.card_showing(second, f"Cancelled: the grant of `{first}` it extends has ended")
    bot.eventually(lambda: bot.buttons(second) == [])
    told = bot.eventually(lambda: [t for t in bot.dms_to(REQUESTER, second) if "cancelled" in t])
    assert f"Grant `{first}` had ended, so nothing was extended." in told[0]
    _, key = bot.click(APPROVER_1, ActionId.APPROVE, second)
    assert bot.reply_text(key) == "That request is no longer pending, so it cannot be voted on."

    # Approved after its grant's end, before the engine got to that grant: refused at the mint, and
    # the IdP is never asked.
    third = bot.approve("request prod-db read 10m checking INC-1234")
    _answer, extension = _extend(bot, REQUESTER, f"{third} 30m")
    assert extension is not None
    fourth = _card_of(bot, extension.id)
    bot.clock.advance(timedelta(minutes=10, seconds=1))
    bot.click(APPROVER_1, ActionId.APPROVE, fourth)
    bot.eventually(lambda: bot.stored(fourth).status == "failed", timeout=15)
    assert bot.stored(fourth).failure_code == "extended_grant_ended"
    assert bot.find_grant(fourth) is None, "no token was asked for"
    assert [t for t in bot.idp.tokens() if t["request_id"] == fourth] == []
    told = bot.eventually(lambda: [t for t in bot.dms_to(REQUESTER, fourth) if "Nothing was issued" in t])
    assert f"Grant `{third}` had ended, so nothing was extended." in told[0]


def test_revoking_a_grant_ends_its_extension_not_yet_picked_up(minting_bot: MintingBot) -> None:
    bot = minting_bot
    first = bot.approve("request prod-db read 1h checking INC-1234")
    _answer, extension = _extend(bot, REQUESTER, f"{first} 30m")
    assert extension is not None
    second = _card_of(bot, extension.id)
    bot.click(APPROVER_1, ActionId.APPROVE, second)
    bot.eventually(lambda: bot.stored(second).status == "active", timeout=15)
    link = bot.pickup_url(second)

    # An approver ends the access: the new token, minted but not picked up, must not carry it on.
    response, key = bot.command(APPROVER_1, f"revoke {first}")
    assert response.status_code == 200
    assert bot.reply_text(key).startswith(f"Revoking `{first}` now.")
    bot.eventually(lambda: bot.stored(first).status == "revoked" and bot.stored(second).status == "revoked", 15)
    assert bot.idp.active_tokens(first) == [] and bot.idp.active_tokens(second) == []
    assert bot.grant(second).revoke_requested_by == APPROVER_1
    (asked,) = bot.events(second, "revoke_requested")
    assert asked.details == {"cause": f"its grant {first} was revoked"}
    assert httpx.get(link, headers={"Accept": "application/json"}).status_code == 410


def test_revoking_any_link_of_a_chain_not_yet_picked_up_ends_the_whole_chain(minting_bot: MintingBot) -> None:
    bot = minting_bot
    # R1 live; R2 extends it and R3 extends R2, both minted and neither picked up.
    first = bot.approve("request prod-db read 1h checking INC-1234")
    chain = [first]
    for extra in ("30m", "15m"):
        _answer, extension = _extend(bot, REQUESTER, f"{chain[-1]} {extra}")
        assert extension is not None, _answer
        chain.append(_card_of(bot, extension.id))
        bot.click(APPROVER_1, ActionId.APPROVE, chain[-1])
        bot.eventually(lambda: bot.stored(chain[-1]).status == "active", timeout=15)
    _first, second, third = chain
    link = bot.pickup_url(third)

    # Revoking the first grant must not leave R3's link to carry the access on.
    response, _ = bot.command(APPROVER_1, f"revoke {first}")
    assert response.status_code == 200
    bot.eventually(lambda: all(bot.stored(r).status == "revoked" for r in chain), 15)
    assert httpx.get(link, headers={"Accept": "application/json"}).status_code == 410
    assert all(bot.idp.active_tokens(r) == [] for r in chain)

    # Revoking an extension not picked up yet ends the token its requester still holds: the one it extends.
    fourth = bot.approve("request prod-db read 1h checking INC-1234")
    old_token = _pick_up(bot, fourth)
    _answer, extension = _extend(bot, REQUESTER, f"{fourth} 30m")
    assert extension is not None
    fifth = _card_of(bot, extension.id)
    bot.click(APPROVER_1, ActionId.APPROVE, fifth)
    bot.eventually(lambda: bot.stored(fifth).status == "active", timeout=15)
    response, _ = bot.command(APPROVER_1, f"revoke {fifth}")
    assert response.status_code == 200
    bot.eventually(lambda: bot.stored(fourth).status == "revoked" and bot.stored(fifth).status == "revoked", 15)
    assert bot.introspect(old_token) == {"active": False}


def test_picking_up_an_extension_of_an_extension_revokes_every_token_before_it(minting_bot: MintingBot) -> None:
    bot = minting_bot
    first = bot.approve("request prod-db read 1h checking INC-1234")
    old_token = _pick_up(bot, first)
    chain = [first]
    for extra in ("30m", "15m"):  # R2 is never picked up; R3 extends it
        _answer, extension = _extend(bot, REQUESTER, f"{chain[-1]} {extra}")
        assert extension is not None, _answer
        chain.append(_card_of(bot, extension.id))
        bot.click(APPROVER_1, ActionId.APPROVE, chain[-1])
        bot.eventually(lambda: bot.stored(chain[-1]).status == "active", timeout=15)
    _pick_up(bot, chain[2])
    bot.eventually(lambda: bot.stored(first).status == "revoked" and bot.stored(chain[1]).status == "revoked", 15)
    assert bot.introspect(old_token) == {"active": False}
    assert bot.grant(first).replaced_by == chain[2]


ONCALL_READS = {
    "name": "oncall-reads",
    "when": {"requester_in": ["S0ONCALL"], "resources": ["prod-db"], "scopes_within": ["read"]},
    "effect": "auto_approve",
    "revoke_when_context_ends": True,
}


@pytest.mark.parametrize(
    "policy",
    [make_policy(rules=[{**EXTEND_READS, "when": {"extension": True}}, ONCALL_READS], **lifted_quota(3))],
    ids=["oncall-then-extend-rule"],
    indirect=True,
)
def test_more_time_on_access_given_while_on_call_still_ends_when_the_call_does(minting_bot: MintingBot) -> None:
    from bot.runtime import CONTEXT_ENDS_JOB

    bot = minting_bot
    bot.slack.set_usergroup("S0ONCALL", [REQUESTER])
    first = bot.request(REQUESTER, "request prod-db read 30m paged for INC-3").request_id
    bot.eventually(lambda: bot.stored(first).status == "active", timeout=15)
    assert bot.stored(first).context_usergroups == "S0ONCALL"
    # The extension is decided by a rule that asks nothing of the on-call rota...
    _answer, extension = _extend(bot, REQUESTER, f"{first} 30m")
    assert extension is not None and extension.rule == "extend-reads", _answer
    bot.eventually(lambda: bot.stored(extension.id).status == "active", timeout=15)
    token = _pick_up(bot, extension.id)
    bot.eventually(lambda: bot.stored(first).status == "revoked", timeout=15)

    # ...but it is more time on access given for being on call: it ends when the call does.
    # (someone else is on call now: a usergroup listed as empty is taken for an odd answer, not a leave)
    bot.slack.set_usergroup("S0ONCALL", [APPROVER_1])
    bot.served.runtime.jobs.run_now(CONTEXT_ENDS_JOB)
    bot.eventually(lambda: bot.stored(extension.id).status == "revoked", timeout=15)
    assert bot.introspect(token) == {"active": False}


@pytest.mark.parametrize(
    "policy",
    [
        make_policy(
            groups={"sre": [REQUESTER]},
            resources=[
                {**policy_data()["resources"][0], "break_glass": {"max_duration": "1h", "allowed": ["sre"]}},
                *policy_data()["resources"][1:],
            ],
            rules=[EXTEND_READS],
        )
    ],
    ids=["break-glass-and-extend-rule"],
    indirect=True,
)
def test_more_time_on_a_break_glass_grant_is_for_people_to_give(minting_bot: MintingBot) -> None:
    bot = minting_bot
    _response, key = bot.command(REQUESTER, "breakglass prod-db read 30m INC-99 primary is down")
    first = bot.reply_text(key).split("`")[1]
    bot.eventually(lambda: bot.stored(first).status == "active", timeout=15)
    # Nobody approved the break-glass: a rule that waves extensions through must not add unseen time.
    answer, extension = _extend(bot, REQUESTER, f"{first} 1h")
    assert extension is not None, answer
    assert extension.rule is None and extension.approvals_required == 1
    assert bot.stored(extension.id).status == "pending"
    assert [t for t in bot.idp.tokens() if t["request_id"] == extension.id] == []

    # Nor on the next link: the chain is still break-glass access, whoever approved the link before.
    bot.click(APPROVER_1, ActionId.APPROVE, _card_of(bot, extension.id))
    bot.eventually(lambda: bot.stored(extension.id).status == "active", timeout=15)
    answer, further = _extend(bot, REQUESTER, f"{extension.id} 30m")
    assert further is not None, answer
    assert further.rule is None and further.approvals_required == 1
    assert bot.stored(further.id).status == "pending"
    assert [t for t in bot.idp.tokens() if t["request_id"] == further.id] == []


@pytest.mark.parametrize("policy", [make_policy(reminders={"after": "10m"})], ids=["reminders"], indirect=True)
def test_an_extension_of_a_grant_ended_early_is_cancelled_at_once(minting_bot: MintingBot) -> None:
    bot = minting_bot
    first = bot.approve("request prod-db read 1h checking INC-1234")
    _answer, extension = _extend(bot, REQUESTER, f"{first} 30m")
    assert extension is not None, _answer
    # The IdP refuses revocations for now: the early end is recorded, its confirmation is not.
    bot.idp.fail_next(503, 10_000, endpoint="revocation")
    response, _ = bot.command(REQUESTER, f"revoke {first}")
    assert response.status_code == 200
    bot.eventually(lambda: bot.grant(first).revoke_requested_by == REQUESTER)
    # Nobody is to be asked for, or able to give, more time on access that has ended.
    assert bot.stored(extension.id).status == "cancelled"
    bot.clock.advance(timedelta(minutes=11))
    bot.served.runtime.jobs.run_now(REMINDERS_JOB)
    assert bot.events(extension.id, "reminder_sent") == []


@pytest.mark.parametrize("policy", [make_policy(reminders={"after": "10m"})], ids=["reminders"], indirect=True)
def test_no_one_is_reminded_of_an_extension_of_a_grant_past_its_end(minting_bot: MintingBot) -> None:
    bot = minting_bot
    first = bot.approve("request prod-db read 30m checking INC-1234")
    bot.clock.advance(timedelta(minutes=25))
    _answer, extension = _extend(bot, REQUESTER, f"{first} 10m")
    assert extension is not None, _answer
    # The grant reaches its end while the IdP refuses revocations: its end is not yet confirmed.
    bot.idp.fail_next(503, 10_000, endpoint="revocation")
    bot.clock.advance(timedelta(minutes=11))
    bot.served.runtime.jobs.run_now(REMINDERS_JOB)
    assert bot.events(extension.id, "reminder_sent") == []

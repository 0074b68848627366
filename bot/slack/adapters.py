"""The services' ports, implemented with the real Slack Web API client."""

from __future__ import annotations

import base64
import http.client
import logging
from collections.abc import Callable
from typing import Any, TypeVar, assert_never

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.bounded_http import retry_after_seconds
from bot.domain.text import one_line
from bot.services.notices import (
    Alert,
    ApprovalCard,
    ApprovalReminder,
    AuditSummary,
    BreakGlassAcknowledged,
    BreakGlassAlerted,
    CardChanged,
    ContextEnded,
    DigestChart,
    DigestPost,
    EndSummary,
    ExpiryNotice,
    Notice,
    PickupLink,
    RequesterTold,
)
from bot.services.ports import Delivered, DeliveryError, DirectoryError
from bot.slack.cards import approval_card, break_glass_acknowledged_blocks, break_glass_alert_blocks, card_text
from bot.slack.messages import (
    alert_text,
    audit_summary_text,
    break_glass_acknowledged_text,
    break_glass_alert_parts,
    break_glass_alert_text,
    context_ended_text,
    end_summary_text,
    expiry_notice_blocks,
    expiry_notice_text,
    leads_cc,
    outcome_text,
    pickup_text,
    reminder_text,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# Errors after which the same message may well go through later: Slack's own trouble, and tokens an
# admin has to fix (every message fails until then, and none should be given up meanwhile).
_TRANSIENT = frozenset(
    {
        "ratelimited",
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "missing_scope",
        "team_access_not_granted",
    }
)


def _delivery_error(exc: Exception) -> DeliveryError:
    if isinstance(exc, SlackApiError):
        code = one_line(str(exc.response.get("error") or "unknown_error"), 80)
        status = getattr(exc.response, "status_code", 200)
        headers = getattr(exc.response, "headers", None) or {}
        retry_after = retry_after_seconds(_header(headers, "retry-after"))
        transient = code in _TRANSIENT or status == 429 or status >= 500
        if status == 429 and retry_after is None:
            retry_after = 1.0
        return DeliveryError(code, permanent=not transient, retry_after=retry_after)
    # Network trouble: say what kind, never echo the request (it could carry a token header).
    return DeliveryError(type(exc).__name__, permanent=False)


def _header(headers: Any, name: str) -> str | None:
    for key, value in dict(headers).items():
        if str(key).lower() == name:
            return str(value[0] if isinstance(value, list) and value else value)
    return None


def _call(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (SlackClientError, OSError, http.client.HTTPException, ValueError) as exc:
        raise _delivery_error(exc) from None


class SlackNotifier:
    def __init__(self, client: WebClient, *, audit_channel: str | None, security_leads: tuple[str, ...] = ()) -> None:
        self._client = client
        self._audit_channel = audit_channel
        self._security_leads = security_leads

    def deliver(self, notice: Notice, *, secret: str | None = None) -> Delivered:
        match notice:
            case ApprovalCard(request=request):
                response: Any = _call(
                    lambda: self._client.chat_postMessage(
                        channel=request.approver_channel,
                        text=card_text(request),
                        blocks=approval_card(request),
                        unfurl_links=False,
                    )
                )
                return Delivered(channel=str(response["channel"]), ts=str(response["ts"]))
            case CardChanged(request=request):
                channel, ts = request.card_channel, request.card_ts
                if channel is None or ts is None:
                    raise DeliveryError("no_card", permanent=True)
                _call(
                    lambda: self._client.chat_update(
                        channel=channel, ts=ts, text=card_text(request), blocks=approval_card(request)
                    )
                )
            case ApprovalReminder(request=request):
                card_channel, card_ts = request.card_channel, request.card_ts
                if card_channel is None or card_ts is None:
                    raise DeliveryError("no_card", permanent=True)
                # In the card's thread: the mentions notify, and the channel is not filled with reminders.
                self._post(card_channel, reminder_text(notice), thread_ts=card_ts)
            case RequesterTold(request=request):
                # Posting to a user id opens (or reuses) the DM with the bot.
                self._post(request.requester, outcome_text(request))
            case PickupLink(request=request, link_expires_at=until):
                if secret is None:
                    raise DeliveryError("pickup_link_missing", permanent=True)
                # No unfurling: Slack's unfurler would fetch the link and use up the one-time pickup.
                self._post(request.requester, pickup_text(request, secret, until), unfurl_media=False)
            case ExpiryNotice(request=request):
                # Posting to the user id opens the DM; a button click there comes back like the card's.
                self._post(request.requester, expiry_notice_text(notice), blocks=expiry_notice_blocks(notice))
            case ContextEnded(request=request):
                self._post(request.requester, context_ended_text(notice))
            case AuditSummary(request=request, event=event):
                self._post_to_audit(audit_summary_text(request, event))
            case EndSummary():
                self._post_to_audit(end_summary_text(notice))
            case Alert():
                self._post_to_audit(alert_text(notice) + leads_cc(self._security_leads))
            case BreakGlassAlerted(request=request):
                if self._audit_channel is None:
                    raise DeliveryError("no_audit_channel", permanent=True)
                audit = self._audit_channel
                words = break_glass_alert_text(notice, self._security_leads)
                blocks = break_glass_alert_blocks(*break_glass_alert_parts(notice, self._security_leads), request.id)
                alerted: Any = _call(
                    lambda: self._client.chat_postMessage(channel=audit, text=words, blocks=blocks, unfurl_links=False)
                )
                return Delivered(channel=str(alerted["channel"]), ts=str(alerted["ts"]))
            case BreakGlassAcknowledged(channel=alert_channel, ts=stamps):
                words = break_glass_acknowledged_text(notice)
                if alert_channel is None or not stamps:
                    # No alert was ever posted to redraw: say it instead.
                    self._post_to_audit(words)
                else:
                    self._redraw_alerts(alert_channel, stamps, words)
            case DigestPost(channel=where, text=text):
                # Nothing in it should unfurl: it names requests, people and resources, not links.
                posted: Any = _call(
                    lambda: self._client.chat_postMessage(
                        channel=where, text=text, unfurl_links=False, unfurl_media=False
                    )
                )
                return Delivered(channel=str(posted["channel"]), ts=str(posted["ts"]))
            case DigestChart(day=day, channel=chart_channel, png=png, thread_ts=thread_ts):
                # files.getUploadURLExternal, the upload, files.completeUploadExternal: a failure at
                # any step is retried by the outbox as a whole (an upload never completed is
                # never shown, so nothing appears twice).
                _call(
                    lambda: self._client.files_upload_v2(
                        channel=chart_channel,
                        thread_ts=thread_ts,
                        content=base64.b64decode(png),
                        filename=f"jit-digest-{day}.png",
                        title=f"jit-bot digest {day}",
                    )
                )
            case _:
                # A kind without a renderer must fail loudly, never count as sent.
                assert_never(notice)
        return Delivered()

    def _redraw_alerts(self, channel: str, stamps: tuple[str, ...], words: str) -> None:
        # Updates are idempotent: a retry after a failure half-way redraws the same.
        for stamp in stamps:
            _call(
                lambda stamp=stamp: self._client.chat_update(  # type: ignore[misc]
                    channel=channel, ts=stamp, text=words, blocks=break_glass_acknowledged_blocks(words)
                )
            )

    def _post_to_audit(self, text: str) -> None:
        if self._audit_channel is None:
            raise DeliveryError("no_audit_channel", permanent=True)
        self._post(self._audit_channel, text)

    def _post(self, channel: str, text: str, **options: Any) -> None:
        _call(lambda: self._client.chat_postMessage(channel=channel, text=text, unfurl_links=False, **options))


class SlackDirectory:
    def __init__(self, client: WebClient) -> None:
        self._client = client

    def _lookup(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (SlackClientError, OSError, http.client.HTTPException, ValueError) as exc:
            raise DirectoryError(_delivery_error(exc).code) from None

    def email_of(self, slack_user_id: str) -> str | None:
        response: Any = self._lookup(lambda: self._client.users_info(user=slack_user_id))
        user = response.get("user") or {}
        if user.get("deleted") or user.get("is_bot"):
            return None
        email = (user.get("profile") or {}).get("email")
        return str(email) if email else None

    def usergroup_members(self, usergroup_id: str) -> frozenset[str]:
        response: Any = self._lookup(lambda: self._client.usergroups_users_list(usergroup=usergroup_id))
        users = response.get("users")
        # A success without its list (or with something else in its place) says nothing about who is
        # in the group: read as nobody, it would end every grant resting on it, so it is a failure.
        if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
            raise DirectoryError("invalid_usergroup_listing")
        return frozenset(users)

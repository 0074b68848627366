"""The IdP call deadline holds where the socket timeouts cannot reach: a resolver that hangs, and a
wait behind another thread's slow call."""

from __future__ import annotations

import socket
import threading
from typing import Any

import httpx
import pytest

from bot.bounded_http import CallBudget, budgeted_client
from bot.idp.errors import IdPError, waiting_within


def test_a_hanging_name_lookup_ends_at_the_calls_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    released = threading.Event()

    def hanging_getaddrinfo(*_args: Any, **_kwargs: Any) -> Any:
        # A resolver that answers long after anyone asked (getaddrinfo itself takes no timeout).
        released.wait(30)
        raise socket.gaierror("too late")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_getaddrinfo)
    budget = CallBudget.starting_now(0.3)
    try:
        with (
            budgeted_client(budget, ssl_context=httpx.create_ssl_context(), url="https://idp.example") as http,
            pytest.raises(httpx.ConnectTimeout, match="looking up idp.example"),
        ):
            http.get("https://idp.example/.well-known/openid-configuration")
    finally:
        released.set()


def test_a_name_that_does_not_resolve_is_a_connect_error_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_getaddrinfo(*_args: Any, **_kwargs: Any) -> Any:
        raise socket.gaierror("Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", failing_getaddrinfo)
    with (
        budgeted_client(
            CallBudget.starting_now(5), ssl_context=httpx.create_ssl_context(), url="https://x.invalid"
        ) as http,
        pytest.raises(httpx.ConnectError, match=r"could not resolve x\.invalid"),
    ):
        http.get("https://x.invalid/")


def test_waiting_behind_another_threads_call_counts_against_the_deadline() -> None:
    lock = threading.Lock()
    holding = threading.Event()
    done = threading.Event()

    def slow_call() -> None:
        with lock:
            holding.set()
            done.wait(30)

    other = threading.Thread(target=slow_call)
    other.start()
    try:
        assert holding.wait(5)
        with pytest.raises(IdPError) as raised, waiting_within(lock, CallBudget.starting_now(0.2), during="JWKS"):
            pytest.fail("the lock was taken although another call held it")
        assert raised.value.code == "idp_timeout" and raised.value.transient
        assert "JWKS" in raised.value.description
    finally:
        done.set()
        other.join()
    with waiting_within(lock, CallBudget.starting_now(0.2), during="JWKS"):
        assert lock.locked(), "free again, the lock is taken and held inside the block"
    assert not lock.locked()

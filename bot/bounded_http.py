"""HTTP to the IdP with a total deadline and a size cap on every answer.

httpx's timeouts bound each socket operation, not the call: an IdP that answers one byte a second
never trips a 5 s read timeout and can hold a thread for as long as it likes. Here each socket
operation of a call gets at most what is left of that call's deadline, and every byte read is
counted, so a call ends by its deadline (connect, TLS, headers and body included) and never reads
more than ``max_bytes``.

    budget = CallBudget.starting_now(seconds=5.0, max_bytes=1 << 20)
    with budgeted_client(budget, ssl_context=tls) as http:
        http.get(url)            # raises httpx.TimeoutException once the 5 s are spent
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
import typing
import urllib.request
from dataclasses import dataclass

import httpcore
import httpx

# Discovery documents, JWKS and token answers are a few KB; a MiB is far beyond any honest answer.
MAX_ANSWER_BYTES = 1 << 20


@dataclass
class CallBudget:
    """What one call may spend: a moment by which it must be done, and how much it may read."""

    deadline: float  # time.monotonic()
    max_bytes: int = MAX_ANSWER_BYTES
    bytes_read: int = 0
    too_large: bool = False
    # Set when the answer came compressed although identity was asked for: the size cap counts
    # bytes on the wire, and a few KB of gzip can inflate to gigabytes.
    encoded: str | None = None

    @classmethod
    def starting_now(cls, seconds: float, *, max_bytes: int = MAX_ANSWER_BYTES) -> CallBudget:
        return cls(deadline=time.monotonic() + seconds, max_bytes=max_bytes)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def bound(self, timeout: float | None) -> float | None:
        """The timeout for the next socket operation, or None when the deadline has passed."""
        left = self.remaining()
        if left <= 0:
            return None
        return left if timeout is None else min(timeout, left)


class _BudgetedStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, budget: CallBudget) -> None:
        self._inner = inner
        self._budget = budget

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        bounded = self._budget.bound(timeout)
        if bounded is None:
            raise httpcore.ReadTimeout("the call's deadline passed")
        data = self._inner.read(max_bytes, bounded)
        self._budget.bytes_read += len(data)
        if self._budget.bytes_read > self._budget.max_bytes:
            self._budget.too_large = True
            raise httpcore.ReadError(f"answer larger than {self._budget.max_bytes} bytes")
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        bounded = self._budget.bound(timeout)
        if bounded is None:
            raise httpcore.WriteTimeout("the call's deadline passed")
        self._inner.write(buffer, bounded)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        bounded = self._budget.bound(timeout)
        if bounded is None:
            raise httpcore.ConnectTimeout("the call's deadline passed")
        return _BudgetedStream(self._inner.start_tls(ssl_context, server_hostname, bounded), self._budget)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


def _resolve(host: str, port: int, budget: CallBudget) -> list[str]:
    """The host's addresses, looked up within what is left of the budget.

    getaddrinfo takes no timeout, and a resolver that hangs would hold the call past its deadline,
    so the lookup runs on a daemon thread that is abandoned when the deadline passes.
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [host]
    found: list[str] = []
    failed: list[BaseException] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
                if str(sockaddr[0]) not in found:
                    found.append(str(sockaddr[0]))
        except OSError as exc:
            failed.append(exc)
        finally:
            done.set()

    threading.Thread(target=lookup, name="idp-dns", daemon=True).start()
    if not done.wait(max(budget.remaining(), 0.0)):
        raise httpcore.ConnectTimeout(f"looking up {host} outlasted the call's deadline")
    if failed or not found:
        raise httpcore.ConnectError(f"could not resolve {host}")
    return found


class _BudgetedBackend(httpcore.NetworkBackend):
    def __init__(self, budget: CallBudget) -> None:
        self._budget = budget
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = _resolve(host, port, self._budget)
        last: Exception | None = None
        for address in addresses:
            bounded = self._budget.bound(timeout)
            if bounded is None:
                raise httpcore.ConnectTimeout("the call's deadline passed")
            try:
                stream = self._inner.connect_tcp(address, port, bounded, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
                continue
            return _BudgetedStream(stream, self._budget)
        assert last is not None  # _resolve returns at least one address
        raise last

    def connect_unix_socket(
        self,
        path: str,  # noqa: ARG002 - the interface's signature
        timeout: float | None = None,  # noqa: ARG002
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,  # noqa: ARG002
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for the IdP")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _BudgetedTransport(httpx.HTTPTransport):
    """httpx's own transport (request mapping, error mapping), over a connection pool whose sockets
    obey the budget. httpx does not let a network backend be passed in, so the pool is built here."""

    def __init__(self, budget: CallBudget, *, ssl_context: ssl.SSLContext, proxy: str | None) -> None:
        backend = _BudgetedBackend(budget)
        self._pool: httpcore.ConnectionPool | httpcore.HTTPProxy
        if proxy is None:
            self._pool = httpcore.ConnectionPool(ssl_context=ssl_context, network_backend=backend, max_connections=2)
        else:
            self._pool = httpcore.HTTPProxy(
                proxy_url=proxy, ssl_context=ssl_context, network_backend=backend, max_connections=2
            )
        self._budget = budget

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        # The size cap counts bytes on the wire, which is only the size of the answer uncompressed.
        request.headers["Accept-Encoding"] = "identity"
        response = super().handle_request(request)
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            response.close()
            self._budget.encoded = encoding[:32]
            raise httpx.DecodingError(f"the answer is {self._budget.encoded}-encoded; identity was asked for")
        return response


def proxy_for(url: str) -> str | None:
    """The environment's proxy for ``url`` (HTTPS_PROXY, HTTP_PROXY, NO_PROXY), as urllib reads it."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    if urllib.request.proxy_bypass(host.split(":", 1)[0]):
        return None
    proxy = urllib.request.getproxies().get(scheme)
    return proxy or None


def budgeted_transport(budget: CallBudget, *, ssl_context: ssl.SSLContext, url: str) -> httpx.BaseTransport:
    return _BudgetedTransport(budget, ssl_context=ssl_context, proxy=proxy_for(url))


def budgeted_client(budget: CallBudget, *, ssl_context: ssl.SSLContext, url: str) -> httpx.Client:
    """A client for calls to ``url``'s host that all share ``budget``.

    The per-operation timeout is what is left of the budget; trust_env is off because the
    transport already applies the environment's proxy.
    """
    return httpx.Client(
        transport=budgeted_transport(budget, ssl_context=ssl_context, url=url),
        timeout=httpx.Timeout(max(budget.remaining(), 0.001)),
        trust_env=False,
    )


def retry_after_seconds(value: str | None) -> float | None:
    """RFC 9110 Retry-After in its delay-seconds form; an HTTP date or junk is ignored."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return min(max(seconds, 0.0), 3600.0) if seconds == seconds else None  # NaN is not a delay

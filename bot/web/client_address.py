"""Whose address a request comes from, believing ``X-Forwarded-For`` only from proxies we trust.

A client can write any ``X-Forwarded-For`` it likes; only a hop we trust appends what it saw. So the
header is read from the right: each address that a trusted proxy reports is stepped over while that
address is itself a trusted proxy, and the first one that is not is the client. Nothing trusted
(the default): the peer of the TCP connection is the client, whatever the header says.
"""

from __future__ import annotations

from collections.abc import Sequence

from bot.domain.networks import IPAddress, IPNetwork, parse_address, within


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted_proxies: Sequence[IPNetwork]
) -> IPAddress | None:
    """The client's address, or None when it cannot be known (no peer, a trusted proxy that passed on
    no address or something that is not one): a caller that restricts by address then refuses."""
    address = parse_address(peer) if peer else None
    if address is None:
        return None
    hops = [part for header in forwarded_for for part in header.split(",") if part.strip()]
    while within(address, trusted_proxies):
        if not hops:
            # A trusted proxy that says nothing of whom it forwards for: the client is unknown, and the
            # proxy's own (often internal) address must not stand in for it.
            return None
        address = parse_address(hops.pop())
        if address is None:
            return None
    return address

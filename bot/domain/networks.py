"""CIDR lists in settings and the policy (``pickup_networks``, ``JIT_TRUSTED_PROXIES``)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    # An IPv4 client seen through an IPv6 socket (::ffff:10.1.2.3) is that IPv4 client.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def within(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(address.version == network.version and address in network for network in networks)


def parse_networks(entries: Sequence[str]) -> tuple[IPNetwork, ...]:
    """Each entry as a network, or a ValueError that names the entry and says what to write."""
    networks = []
    for entry in entries:
        text = entry.strip()
        try:
            networks.append(ipaddress.ip_network(text, strict=True))
        except ValueError:
            try:
                # Host bits set (10.1.2.3/8): most likely the network was meant, but say so, never guess.
                loose = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ValueError(f"'{text}' is not a network like 10.0.0.0/8 or 2001:db8::/32") from None
            raise ValueError(f"'{text}' has host bits set; did you mean {loose}?") from None
    return tuple(networks)

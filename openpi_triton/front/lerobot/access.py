"""Who may call the LeRobot endpoint. LeRobot's client speaks plaintext gRPC and sends no credentials, so the
network is the only gate: the endpoint binds loopback unless told otherwise, a wider bind needs an allow-list
of client networks (--lerobot-allow), and every call's peer is checked against it. Loopback peers (an SSH
tunnel ends there) are always allowed."""

from __future__ import annotations

import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AccessError(ValueError):
    """A malformed allow-list."""


def parse_networks(text: str | tuple[str, ...] | None) -> tuple[Network, ...]:
    """CIDRs (or single addresses), comma-separated: '10.8.0.0/24,192.168.1.7'."""
    items = text.split(",") if isinstance(text, str) else list(text or ())
    networks = []
    for item in (item.strip() for item in items):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise AccessError(f"{item!r} is not a network (CIDR such as 10.8.0.0/24) or an address") from None
    return tuple(networks)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def peer_address(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP of a gRPC peer string ('ipv4:10.0.0.2:5123', 'ipv6:[::1]:5123'); None for others (unix sockets)."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host = rest.rsplit(":", 1)[0].strip("[]") if kind == "ipv4" or rest.startswith("[") else rest
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def peer_allowed(peer: str, networks: tuple[Network, ...]) -> bool:
    if peer.startswith("unix:"):  # a local socket: only this host can reach it
        return True
    address = peer_address(peer)
    if address is None:
        return False
    return address.is_loopback or any(address in network for network in networks)

"""Where the front finds its Triton replicas: the `--triton-url` list (`host:port`, comma-separated) and
the addresses each name resolves to (a Kubernetes headless Service answers with one address per ready
Triton pod, so replicas come and go with its records)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

from openpi_triton.config import TRITON_GRPC_PORT

# getaddrinfo's answers for "this name has no address" (NXDOMAIN, or no record of the asked type); any
# other failure means DNS could not answer now, and what was known is kept.
_NO_ADDRESS = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


class AddressError(ValueError):
    """A --triton-url that cannot be used; the message says which entry and why."""


@dataclass(frozen=True)
class Target:
    """One entry of --triton-url: an IP address (one replica for good) or a name (re-resolved)."""

    host: str
    port: int

    def __str__(self) -> str:
        return host_port(self.host, self.port)

    @property
    def literal(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def host_port(host: str, port: int) -> str:
    """gRPC's form of an address: IPv6 in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _target(entry: str) -> Target:
    if "://" in entry:
        raise AddressError(f"{entry!r}: give host:port without a scheme (Triton's gRPC port, e.g. triton:8001)")
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise AddressError(f"{entry!r}: expected [IPv6 address]:port")
        port = rest[1:]
    elif entry.count(":") > 1:
        raise AddressError(f"{entry!r}: write an IPv6 address in brackets, e.g. [::1]:8001")
    else:
        host, _, port = entry.partition(":")
    if not host:
        raise AddressError(f"{entry!r}: no host")
    if not port:
        return Target(host, TRITON_GRPC_PORT)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise AddressError(f"{entry!r}: the port must be a number from 1 to 65535, got {port!r}")
    return Target(host, int(port))


def parse_targets(text: str) -> tuple[Target, ...]:
    """`"triton-a:8001,10.0.0.7:8001"` -> its targets, in order, without repeats; the port defaults to
    Triton's gRPC port, 8001."""
    entries = [entry.strip() for entry in text.split(",")]
    if not any(entries):
        raise AddressError("no Triton address given; expected host:port, or several separated by commas")
    if not all(entries):
        raise AddressError(f"{text!r} has an empty entry; expected host:port[,host:port...]")
    return tuple(dict.fromkeys(_target(entry) for entry in entries))


async def resolve(target: Target) -> list[str] | None:
    """The gRPC addresses `target` stands for now, sorted: itself for an IP address, else every address
    its name resolves to, IPv4 when it has any (Triton listens on 0.0.0.0 unless told otherwise, and a
    dual-stack Service would otherwise list each pod twice). [] when the name has no address (a headless
    Service without ready pods); None when DNS did not answer (keep what was known)."""
    if target.literal:
        return [str(target)]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        return [] if error.errno in _NO_ADDRESS else None
    by_family: dict[int, set[str]] = {socket.AF_INET: set(), socket.AF_INET6: set()}
    for family, _, _, _, sockaddr in infos:
        if family in by_family:
            by_family[family].add(str(sockaddr[0]).split("%", 1)[0])  # no IPv6 zone: gRPC's form has none
    addresses = by_family[socket.AF_INET] or by_family[socket.AF_INET6]
    return [host_port(address, target.port) for address in sorted(addresses, key=ipaddress.ip_address)]

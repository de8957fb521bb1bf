"""Which hosts the server may call on a user's behalf (webhooks, notifications, brokers).

A user-given URL makes the server open a connection, so a careless target could reach the
cloud's credentials endpoint or another internal service. Link-local, multicast and
unspecified addresses and cloud-metadata addresses and names are always refused, however
written (IPv4-mapped, integer or octal forms, a trailing dot) and whatever a name resolves
to; an operator's allow list cannot open them.
Operators add their own denied networks or names; with an allow list set, only what it
names is reachable. Loopback and private ranges are allowed until an operator denies them.
The check runs when a target is saved and again before every send, since DNS can change.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from conveyor.errors import BadRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Cloud metadata services answer on link-local addresses (169.254.169.254 for AWS, Azure,
# Google, Oracle, OpenStack and most others; refused as link-local), on these names, and on
# these addresses outside the link-local ranges, which the private-range default would let by.
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "instance-data"})
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(text)
    for text in (
        "fd00:ec2::254",  # AWS instance metadata over IPv6
        "fd20:ce::254",  # Google Cloud metadata on IPv6-only instances
        "100.100.100.200",  # Alibaba Cloud instance metadata
        "192.0.0.192",  # Oracle Cloud Classic instance metadata
        "168.63.129.16",  # Azure WireServer: agent configuration and certificates
    )
)


@dataclass(frozen=True)
class TargetPolicy:
    """Allowed and denied networks and host names for outgoing calls."""

    allow_networks: tuple[IPNetwork, ...] = ()
    allow_hosts: frozenset[str] = frozenset()
    deny_networks: tuple[IPNetwork, ...] = ()
    deny_hosts: frozenset[str] = frozenset()

    @classmethod
    def from_lists(cls, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> TargetPolicy:
        """A policy from entries that are networks (``10.0.0.0/8``), addresses or host names."""
        allow_networks, allow_hosts = _split(allow)
        deny_networks, deny_hosts = _split(deny)
        return cls(allow_networks, allow_hosts, deny_networks, deny_hosts)

    def check_url(self, url: str, what: str, schemes: Iterable[str] = ("http", "https")) -> str:
        """``url`` when it may be called; :class:`BadRequest` saying why not otherwise."""
        allowed = tuple(schemes)
        parts = urlsplit(url)
        if parts.scheme not in allowed or not parts.hostname:
            raise BadRequest(f"{what} {url!r} must be a {'/'.join(allowed)} URL with a host")
        self.check_host(parts.hostname, what)
        return url

    def check_host(self, hostname: str, what: str) -> None:
        """Raise :class:`BadRequest` unless ``hostname`` may be called."""
        host = hostname.lower().rstrip(".")
        if host in METADATA_HOSTS or host in self.deny_hosts:
            raise BadRequest(f"{what} host {host!r} is not allowed (a denied or metadata host)")
        addresses = resolved_addresses(host)
        for address in addresses:
            reason = _always_refused(address)
            if reason is not None:
                raise BadRequest(f"{what} host {host!r} is (or resolves to) {address}, {reason}")
            if any(address in network for network in self.deny_networks):
                raise BadRequest(f"{what} host {host!r} resolves to {address}, a denied network")
        if self.allow_networks or self.allow_hosts:
            named = host in self.allow_hosts
            inside = bool(addresses) and all(
                any(address in network for network in self.allow_networks) for address in addresses
            )
            if not (named or inside):
                raise BadRequest(f"{what} host {host!r} is not in the allowed targets")


def _always_refused(address: IPAddress) -> str | None:
    """Why ``address`` is refused whatever the operator configured; None if it is not."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_link_local or address.is_multicast or address.is_unspecified:
        return "a link-local, multicast or unspecified address"
    return None


def resolved_addresses(host: str) -> list[IPAddress]:
    """The addresses ``host`` stands for: itself when literal, else what it resolves to."""
    try:
        found: list[IPAddress] = [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError):
            return []  # unresolvable now: the send will fail, and is checked again then
        found = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    mapped = [
        address.ipv4_mapped
        for address in found
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None
    ]
    return [*found, *mapped]


def _split(entries: Iterable[str]) -> tuple[tuple[IPNetwork, ...], frozenset[str]]:
    networks: list[IPNetwork] = []
    hosts: set[str] = set()
    for entry in entries:
        text = entry.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            hosts.add(text.lower().rstrip("."))
    return tuple(networks), frozenset(hosts)

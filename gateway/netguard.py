"""The one guard for URLs the platform connects to on someone's say-so (no SSRF).

Pure standard library, no Django: the control plane (upstream URLs, the hub mirror),
the artifact fetcher and the gateway (external upstreams) all use it.

* Hosts are read the way HTTP clients and the C resolver read them: ``2130706433``,
  ``0177.0.0.1``, ``0x7f.1`` and ``127.1`` are all 127.0.0.1; ``[::ffff:127.0.0.1]``,
  ``[::127.0.0.1]``, NAT64 (``64:ff9b::/96``), 6to4 (``2002::/16``) and Teredo forms
  are judged by the IPv4 address they carry.
* Internal means loopback, private, link-local, shared (100.64/10), unspecified,
  multicast, reserved or otherwise not globally routable. Such an address is refused
  unless the host is in ``ALLOWED_INTERNAL_HOSTS`` (host names, IP addresses or CIDR
  networks; an administrator's choice). Cloud metadata endpoints are refused always.
* ``check_url`` resolves once and returns the addresses it approved; callers connect
  to one of those (never resolve the name again), so a DNS answer that changes
  between the check and the connection (rebinding) cannot redirect them.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``resolve(host, port)`` -> the addresses (as text) the name stands for.
Resolver = Callable[[str, int], list[str]]

#: Cloud metadata services: never a legitimate target, whatever the allow list says.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)

_INTERNAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
_NUMERIC_PART = re.compile(r"^(0[xX][0-9a-fA-F]*|[0-9]+)$")


class UnsafeURL(ValueError):
    """The URL may not be used; the message says why (safe to show an administrator)."""


@dataclass(frozen=True)
class CheckedTarget:
    """A URL that passed the guard and the addresses it may be reached at."""

    scheme: str
    host: str  # as written (lower case, no brackets): for Host, SNI and certificates
    port: int
    addresses: tuple[str, ...]


def parse_ipv4_loose(host: str) -> ipaddress.IPv4Address | None:
    """An IPv4 address in any spelling ``inet_aton`` accepts (decimal, octal, hex, with
    1 to 4 parts), or ``None`` when ``host`` is not numeric. A numeric-looking host
    that is not a valid address raises ``UnsafeURL`` rather than going to DNS."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_NUMERIC_PART.match(p) for p in parts):
        return None
    values = []
    for part in parts:
        try:
            if part[:2].lower() == "0x":
                values.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part.startswith("0"):
                values.append(int(part, 8))
            else:
                values.append(int(part, 10))
        except ValueError:
            raise UnsafeURL(f"{host!r} is not a valid address") from None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        raise UnsafeURL(f"{host!r} is not a valid address")
    number = 0
    for v in head:
        number = number * 256 + v
    number = (number << (8 * (4 - len(head)))) + last
    return ipaddress.IPv4Address(number)


def parse_ip(host: str) -> IPAddress | None:
    """``host`` as an IP address if it is one in any spelling, else ``None``."""
    text = host.strip().strip("[]").rstrip(".")
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text.split("%", 1)[0])
        except ValueError:
            raise UnsafeURL(f"{host!r} is not a valid address") from None
    return parse_ipv4_loose(text)


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, translated,
    NAT64, 6to4, Teredo), if any."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _IPV4_TRANSLATED or any(ip in net for net in _NAT64):
        return low32
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # not :: or ::1
        return low32
    return None


def _forms(ip: IPAddress) -> list[IPAddress]:
    inner = embedded_ipv4(ip)
    return [ip] if inner is None else [ip, inner]


def is_metadata(ip: IPAddress) -> bool:
    return any(form in METADATA_ADDRESSES for form in _forms(ip))


def is_internal(ip: IPAddress) -> bool:
    """Anything but a globally routable unicast address. An IPv6 address that carries an
    IPv4 one is judged by the IPv4 address: that is where the packets go."""
    inner = embedded_ipv4(ip)
    for form in [ip] if inner is None else [inner]:
        if (
            any(form in net for net in _INTERNAL_NETWORKS if net.version == form.version)
            or not form.is_global
            or form.is_multicast
            or form.is_reserved
            or form.is_unspecified
            or form.is_loopback
            or form.is_link_local
        ):
            return True
    return False


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


class Allowlist:
    """``ALLOWED_INTERNAL_HOSTS``: host names, addresses and CIDR networks."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.names: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for raw in entries:
            entry = raw.strip().lower().strip("[]").rstrip(".")
            if not entry:
                continue
            if "/" in entry:
                try:
                    self.networks.append(ipaddress.ip_network(entry, strict=False))
                    continue
                except ValueError:
                    raise UnsafeURL(f"ALLOWED_INTERNAL_HOSTS: {raw!r} is not a network") from None
            try:
                ip = parse_ip(entry)
            except UnsafeURL:
                ip = None
            if ip is not None:
                self.networks.append(ipaddress.ip_network(ip))
            else:
                self.names.add(entry)

    def allows(self, host: str, ip: IPAddress) -> bool:
        if host.lower().rstrip(".") in self.names:
            return True
        return any(form in net for form in _forms(ip) for net in self.networks)


class NetGuard:
    def __init__(
        self, allowed_internal_hosts: Iterable[str] = (), resolver: Resolver | None = None
    ) -> None:
        self.allowlist = Allowlist(allowed_internal_hosts)
        self._resolver = resolver

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        literal = parse_ip(host)
        if literal is not None:
            return [literal]
        resolver = self._resolver or system_resolver
        try:
            answers = resolver(host, port)
        except (OSError, UnicodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise UnsafeURL(f"host {host!r} does not resolve: {reason}") from None
        addresses = []
        for answer in answers:
            try:
                addresses.append(ipaddress.ip_address(answer.split("%", 1)[0]))
            except ValueError:
                raise UnsafeURL(f"host {host!r} resolved to {answer!r}") from None
        if not addresses:
            raise UnsafeURL(f"host {host!r} does not resolve")
        return addresses

    def check_host(self, host: str, port: int, *, allow_internal: bool = False) -> list[str]:
        """Resolve ``host`` once and return its addresses, or raise ``UnsafeURL``."""
        addresses = self.resolve(host, port)
        if any(is_metadata(ip) for ip in addresses):
            raise UnsafeURL("Cloud metadata addresses are never allowed.")
        if not allow_internal:
            internal = [
                str(ip)
                for ip in addresses
                if is_internal(ip) and not self.allowlist.allows(host, ip)
            ]
            if internal:
                raise UnsafeURL(
                    f"{host} resolves to an internal address ({', '.join(internal)}); an "
                    "administrator must allow this host first (ALLOWED_INTERNAL_HOSTS)."
                )
        # Connect to exactly what was checked, in a form the socket layer accepts.
        return [str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip) for ip in addresses]

    def check_url(self, url: str, *, allow_internal: bool = False) -> CheckedTarget:
        """Refuse a URL that is not plain http(s) to a permitted host; return the host and
        the addresses to connect to."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise UnsafeURL(f"Not a valid URL: {exc}.") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UnsafeURL("Must be an http:// or https:// URL with a host.")
        if parts.username or parts.password:
            raise UnsafeURL("Must not carry credentials in the URL.")
        host = parts.hostname.rstrip(".") or parts.hostname
        port = port or (443 if parts.scheme == "https" else 80)
        addresses = self.check_host(host, port, allow_internal=allow_internal)
        return CheckedTarget(parts.scheme, host, port, tuple(addresses))

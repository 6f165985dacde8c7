"""Guards for URLs that users or admins hand to the platform (no SSRF)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError

from controlplane.env import env_list

# Cloud metadata services: never a legitimate target.
_ALWAYS_REFUSED = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}


def _is_internal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )


def resolve_addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ValidationError(f"host {host!r} does not resolve: {exc.strerror}") from None
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


def check_url(url: str, *, allow_internal: bool, field: str = "url") -> None:
    """Refuse a URL that is not http(s) or, unless ``allow_internal``, one whose host
    resolves to a private, loopback, link-local or otherwise internal address.
    Hosts in the ``ALLOWED_INTERNAL_HOSTS`` setting are exempt (an admin's choice)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError({field: "Must be an http:// or https:// URL with a host."})
    if parts.username or parts.password:
        raise ValidationError({field: "Must not carry credentials; use the api_key field."})
    host = parts.hostname
    try:
        addresses = resolve_addresses(host)
    except ValidationError as exc:
        raise ValidationError({field: exc.messages[0]}) from None
    if any(ip in _ALWAYS_REFUSED for ip in addresses):
        raise ValidationError({field: "Cloud metadata addresses are never allowed."})
    if allow_internal or host in env_list("ALLOWED_INTERNAL_HOSTS"):
        return
    internal = [str(ip) for ip in addresses if _is_internal(ip)]
    if internal:
        raise ValidationError(
            {
                field: f"{host} resolves to an internal address ({', '.join(internal)}); "
                "an administrator must allow this host first (ALLOWED_INTERNAL_HOSTS)."
            }
        )

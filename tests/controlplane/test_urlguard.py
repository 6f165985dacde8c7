"""The one URL guard: every spelling of an internal or metadata address is refused,
public addresses pass, and ALLOWED_INTERNAL_HOSTS opens exactly what it names."""

from __future__ import annotations

import pytest
from controlplane import netsafety
from django.core.exceptions import ValidationError

from gateway.netguard import NetGuard, UnsafeURL, parse_ip

# Names the fake resolver knows (no network in tests).
DNS = {
    "public.example": ["93.184.216.34"],
    "dual.example": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
    "sneaky.example": ["93.184.216.34", "10.1.2.3"],  # one bad answer is enough
    "localhost": ["127.0.0.1", "::1"],
    "metadata.google.internal": ["169.254.169.254"],
    "vllm.internal": ["10.0.0.5"],
    "mapped.example": ["::ffff:127.0.0.1"],
}


def resolver(host: str, port: int) -> list[str]:
    if host not in DNS:
        raise OSError(-2, "Name or service not known")
    return DNS[host]


def guard(*allowed: str) -> NetGuard:
    return NetGuard(allowed, resolver=resolver)


REFUSED = [
    # loopback in every spelling the resolver and HTTP clients accept
    "http://127.0.0.1/",
    "http://127.1/",
    "http://127.0.1/",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://0x7f.1/",
    "http://0x7f000001/",
    "http://017700000001/",
    "http://127.0.0.1./",
    "http://127.255.255.254:8080/",
    "http://localhost/",
    "http://[::1]/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::127.0.0.1]/",
    "http://[64:ff9b::127.0.0.1]/",
    "http://[2002:7f00:1::]/",
    "http://mapped.example/",
    # unspecified
    "http://0.0.0.0/",
    "http://0/",
    "http://[::]/",
    # private and shared
    "http://10.0.0.1/",
    "http://10.255.255.255/",
    "http://172.16.0.1/",
    "http://172.31.255.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://100.127.255.254/",
    "http://[::ffff:10.0.0.1]/",
    "http://[::ffff:192.168.0.1]/",
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",
    "http://vllm.internal:8000/",
    "http://sneaky.example/",
    # link-local, multicast, reserved, broadcast
    "http://169.254.1.1/",
    "http://224.0.0.1/",
    "http://239.1.1.1/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://[ff02::1]/",
    # not http(s), no host, credentials, nonsense, unknown names
    "ftp://93.184.216.34/",
    "file:///etc/passwd",
    "gopher://public.example/",
    "http:///nohost",
    "http://user:pw@public.example/",
    "http://08.0.0.1/",
    "http://256.1/",
    "http://no-such-host.example/",
    "http://[::ffff:999.1.1.1]/",
]

METADATA = [
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.170.2/v2/credentials",
    "http://[fd00:ec2::254]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://2852039166/",
    "http://0xa9.0xfe.0xa9.0xfe/",
    "http://0251.0376.0251.0376/",
    "http://169.254.43518/",
    "http://[64:ff9b::169.254.169.254]/",
    "http://[2002:a9fe:a9fe::]/",
    "http://metadata.google.internal/",
]

ALLOWED = [
    "http://93.184.216.34/",
    "https://93.184.216.34:8443/v1",
    "https://public.example/v1",
    "https://dual.example/",
    "http://[2606:2800:220:1:248:1893:25c8:1946]/",
    "http://[::ffff:93.184.216.34]/",
    "http://1.1.1.1/",
    "http://8.8.8.8/",
    "https://PUBLIC.example./",
]


@pytest.mark.parametrize("url", REFUSED)
def test_internal_forms_are_refused(url):
    with pytest.raises(UnsafeURL):
        guard().check_url(url)


@pytest.mark.parametrize("url", METADATA)
def test_metadata_is_refused_even_when_internal_is_allowed(url):
    with pytest.raises(UnsafeURL, match="metadata"):
        guard("169.254.0.0/16", "metadata.google.internal", "::/0", "0.0.0.0/0").check_url(
            url, allow_internal=True
        )


@pytest.mark.parametrize("url", ALLOWED)
def test_public_addresses_pass_and_name_what_was_checked(url):
    target = guard().check_url(url)
    assert target.addresses
    assert all(not a.startswith(("127.", "10.")) for a in target.addresses)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("[::1]", "::1"),
        ("public.example", None),
    ],
)
def test_hosts_are_read_as_the_c_resolver_reads_them(host, expected):
    ip = parse_ip(host)
    assert (str(ip) if ip else None) == expected


def test_checked_addresses_are_connectable_forms():
    assert guard().check_url("http://[::ffff:93.184.216.34]/").addresses == ("93.184.216.34",)
    assert guard().check_url("http://0x5d.0xb8.0xd8.0x22/").addresses == ("93.184.216.34",)


def test_allowed_internal_hosts_by_name_address_and_network():
    with pytest.raises(UnsafeURL):
        guard().check_url("http://vllm.internal:8000/")
    assert guard("vllm.internal").check_url("http://vllm.internal:8000/").addresses == ("10.0.0.5",)
    assert guard("10.0.0.0/24").check_url("http://vllm.internal/").addresses == ("10.0.0.5",)
    assert guard("10.0.0.5").check_url("http://10.0.0.5/").host == "10.0.0.5"
    # an allowed address is allowed in its other spellings too, nothing else is
    assert guard("127.0.0.1").check_url("http://2130706433/").addresses == ("127.0.0.1",)
    with pytest.raises(UnsafeURL):
        guard("127.0.0.1").check_url("http://127.0.0.2/")
    with pytest.raises(UnsafeURL):
        guard("vllm.internal").check_url("http://sneaky.example/")


def test_internal_allowed_for_internal_upstreams_but_not_metadata():
    assert guard().check_url("http://10.0.0.5:8000/", allow_internal=True).port == 8000
    with pytest.raises(UnsafeURL):
        guard().check_url("http://169.254.169.254/", allow_internal=True)


def test_control_plane_wrapper_names_the_field_and_reads_the_allow_list(monkeypatch):
    with pytest.raises(ValidationError) as info:
        netsafety.check_url("http://[::ffff:169.254.169.254]/", allow_internal=True, field="x")
    assert "metadata" in info.value.message_dict["x"][0]
    with pytest.raises(ValidationError) as info:
        netsafety.check_url("http://0x7f.1:9/", allow_internal=False, field="base_url")
    assert "ALLOWED_INTERNAL_HOSTS" in info.value.message_dict["base_url"][0]
    monkeypatch.setenv("ALLOWED_INTERNAL_HOSTS", "127.0.0.0/8")
    assert netsafety.check_url("http://0x7f.1:9/", allow_internal=False).addresses == ("127.0.0.1",)

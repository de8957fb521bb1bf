"""The target policy's defaults: what is always refused, and what stays reachable."""

from __future__ import annotations

import pytest

from conveyor.errors import BadRequest
from conveyor.netpolicy import TargetPolicy

DEFAULT = TargetPolicy()


@pytest.mark.parametrize(
    "host",
    [
        "fd00:ec2::254",  # AWS over IPv6
        "fd00:ec2:0:0:0:0:0:254",  # the same, written out
        "fd20:ce::254",  # Google Cloud, IPv6-only instances
        "100.100.100.200",  # Alibaba Cloud
        "::ffff:100.100.100.200",  # the same, IPv4-mapped
        "1684301000",  # the same as one integer (inet_aton accepts it)
        "192.0.0.192",  # Oracle Cloud Classic
        "168.63.129.16",  # Azure WireServer
    ],
)
def test_metadata_addresses_outside_link_local_are_refused(host: str) -> None:
    with pytest.raises(BadRequest, match="a cloud metadata address"):
        DEFAULT.check_host(host, "target")


@pytest.mark.parametrize(
    "url",
    [
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",
        "https://192.0.0.192/opc/v1/instance/",
    ],
)
def test_metadata_urls_are_refused(url: str) -> None:
    with pytest.raises(BadRequest, match="metadata"):
        DEFAULT.check_url(url, "target")


@pytest.mark.parametrize(
    "host", ["169.254.169.254", "fe80::a9fe:a9fe", "metadata.google.internal", "metadata."]
)
def test_link_local_and_metadata_names_stay_refused(host: str) -> None:
    with pytest.raises(BadRequest, match=r"link-local|metadata"):
        DEFAULT.check_host(host, "target")


def test_an_allow_list_cannot_open_a_metadata_address() -> None:
    policy = TargetPolicy.from_lists(allow=["100.64.0.0/10", "fd00::/8"])
    policy.check_host("100.100.100.1", "target")
    for host in ("100.100.100.200", "fd00:ec2::254"):
        with pytest.raises(BadRequest, match="a cloud metadata address"):
            policy.check_host(host, "target")


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "::1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.10",
        "fd00:ec2::1",  # the metadata address's neighbours are ordinary private addresses
        "fd12:3456::1",
        "100.100.100.201",
        "192.0.0.191",
    ],
)
def test_loopback_and_private_addresses_are_allowed_by_default(host: str) -> None:
    DEFAULT.check_host(host, "target")

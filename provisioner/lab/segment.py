"""A lab's place on a site: its network segment, its nodes' numbers, its registry.

One lab is one segment: a bridge, the appliance at the subnet's first address, in proxy
mode the site DHCP server at the second, in full mode the appliance's DHCP range from the
subnet's 100th to its 199th address, and this machine's leg at its last address but one::

    Segment.parse("10.98.0.0/24")   server 10.98.0.1, site 10.98.0.2, range .100-.199,
                                    this machine's leg 10.98.0.254

Two labs are two segments of one site (issue 23, docs/scale.md) when their subnets
differ, their nodes' numbers do not overlap (``lab up --first-node``: a node's name and
MAC come from its number, and the registry knows each once), and both serves write to one
registry (``lab up --registry-url``). A subnet is refused unless it is private (RFC 1918
and the like; never loopback, link-local or multicast) and between a /16 and a /24: the
lab's traffic stays in its namespaces, and this machine reaches it only through its leg,
whose route for the subnet is more specific than any default route (see :mod:`.netns`).

Errors: :class:`SegmentError`, a :class:`~provisioner.errors.UsageError` (the command
line exits 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from provisioner.config_reader import ConfigReader
from provisioner.config_services import parse_registry_url
from provisioner.errors import ConfigError, UsageError

DEFAULT_SUBNET = "10.99.0.0/24"
SERVER_HOST = 1  # the appliance: the subnet's first address
SITE_HOST = 2  # proxy mode's site DHCP server (dnsmasq)
RANGE_HOSTS = (100, 199)  # full mode's DHCP range, and the site server's in proxy mode
WIDEST, NARROWEST = 16, 24  # prefix lengths a lab's subnet may have
MAX_NODE_NUMBER = 255  # a node's number is its MAC's last byte


class SegmentError(UsageError):
    """A lab's subnet, node numbers or registry URL that `lab up` cannot use."""


@dataclass(frozen=True)
class Segment:
    """The lab's subnet and the addresses `lab up` derives from it."""

    network: IPv4Network

    @classmethod
    def parse(cls, text: str = DEFAULT_SUBNET) -> Segment:
        try:
            network = IPv4Network(text, strict=True)
        except ValueError as exc:
            raise SegmentError(f"--subnet {text!r}: not an IPv4 network ({exc})") from None
        if not WIDEST <= network.prefixlen <= NARROWEST:
            raise SegmentError(
                f"--subnet {text}: give a /{WIDEST} to a /{NARROWEST} (the DHCP range is the "
                f"subnet's addresses {RANGE_HOSTS[0]} to {RANGE_HOSTS[1]})"
            )
        odd = network.is_loopback or network.is_link_local or network.is_multicast
        if odd or network.is_reserved or not network.is_private:
            raise SegmentError(
                f"--subnet {text}: not a private network (e.g. 10.98.0.0/24): a lab's "
                "addresses must never be ones the machine could reach elsewhere"
            )
        return cls(network)

    def _host(self, index: int) -> IPv4Address:
        return self.network.network_address + index

    @property
    def server(self) -> IPv4Address:
        return self._host(SERVER_HOST)

    @property
    def site(self) -> IPv4Address:
        return self._host(SITE_HOST)

    @property
    def host_leg(self) -> IPv4Address:
        """This machine's address on the lab: outside both DHCP ranges."""
        return self.network.broadcast_address - 1

    @property
    def dhcp_first(self) -> IPv4Address:
        return self._host(RANGE_HOSTS[0])

    @property
    def dhcp_last(self) -> IPv4Address:
        return self._host(RANGE_HOSTS[1])

    @property
    def dhcp_range(self) -> str:
        return f"{self.dhcp_first}-{self.dhcp_last}"

    def interface(self, address: IPv4Address) -> IPv4Interface:
        return IPv4Interface(f"{address}/{self.network.prefixlen}")


def node_numbers(first: int, count: int) -> range:
    """The lab's nodes' numbers (``ctr<n>``/``labnode<n>``, MACs ending in ``n``)."""
    last = first + count - 1
    if first < 1 or count < 0 or last > MAX_NODE_NUMBER:
        raise SegmentError(
            f"--first-node {first} with --nodes {count}: node numbers must be 1 to "
            f"{MAX_NODE_NUMBER} (the last byte of their MACs)"
        )
    return range(first, last + 1)


def registry_url(url: str) -> str:
    """``--registry-url``, checked as ``[registry] url`` is (PostgreSQL, no password)."""
    try:
        checked = parse_registry_url(ConfigReader({"registry": {"url": url}}, "--registry-url"))
    except ConfigError as exc:
        raise SegmentError(f"--registry-url {exc.value}: {exc.reason}") from None
    assert checked is not None
    return checked

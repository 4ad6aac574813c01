"""The cluster's DNS zone and the answer to one query. Pure: records and bytes in, bytes out.

The zone (``cluster.lan`` by default) is made from the registry at the moment it is asked
(:func:`build_zone`): every node with a hostname and an address (``node3.cluster.lan``),
each cluster's name for its head (``llama.cluster.lan``, unless a node has that name), and
the appliance itself (``provisioner`` and ``gateway``, its OpenAI gateway). The reverse zone
of the cluster subnet answers PTR for the same addresses. The appliance is authoritative
for both: a name it does not hold is NXDOMAIN (with the SOA, so resolvers cache the
absence for the zone's minimum TTL), a name it holds with no record of the asked type is
NOERROR with no answer.

:func:`answer` reads one query in wire format and returns what to do with it: the reply's
bytes, or :class:`Forward` for a name outside both zones (the adapter asks the configured
upstream servers; with none, the name is REFUSED: an isolated network has no outside). A
packet that is no DNS query is dropped (``None``) and counted by the adapter. A UDP reply
that does not fit the client's size (512 bytes, or its EDNS size) is sent truncated, TC
set, and the client asks again over TCP.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

UDP_DEFAULT = 512  # bytes a UDP reply may have when the query carries no EDNS size
UDP_MAX = 4096  # what we accept as an EDNS size at most


@dataclass(frozen=True)
class Zone:
    origin: dns.name.Name  # "cluster.lan."
    server: IPv4Address  # the appliance: its NS and SOA host
    subnet: IPv4Network  # the reverse zone's addresses
    serial: int
    ttl: int = 60
    a: Mapping[dns.name.Name, tuple[IPv4Address, ...]] = field(default_factory=dict)
    ptr: Mapping[dns.name.Name, dns.name.Name] = field(default_factory=dict)

    @property
    def host(self) -> dns.name.Name:
        return dns.name.Name(("provisioner",)).concatenate(self.origin)

    def holds(self, name: dns.name.Name) -> dns.name.Name | None:
        """The zone apex ``name`` falls under (forward or reverse), or None."""
        if name.is_subdomain(self.origin):
            return self.origin
        reverse = reverse_apex(self.subnet)
        if name.is_subdomain(reverse):
            return reverse
        return None


def same_records(a: Zone, b: Zone) -> bool:
    """The two zones answer alike (their serials aside)."""
    return (a.origin, a.server, a.subnet, a.ttl, a.a, a.ptr) == (
        b.origin, b.server, b.subnet, b.ttl, b.a, b.ptr,
    )  # fmt: skip


def reverse_apex(subnet: IPv4Network) -> dns.name.Name:
    """The in-addr.arpa name that holds the subnet: octet-aligned, widened to the byte."""
    octets = str(subnet.network_address).split(".")[: max(1, subnet.prefixlen // 8)]
    return dns.name.from_text(".".join(reversed(octets)) + ".in-addr.arpa.")


def label(text: str) -> str | None:
    """A hostname as one DNS label (RFC 1123: letters, digits, '-'), or None if it is not."""
    text = text.strip().lower()
    ok = 0 < len(text) <= 63 and text[0] != "-" and text[-1] != "-"
    return text if ok and all(c.isalnum() or c == "-" for c in text if c.isascii()) else None


def build_zone(
    origin: str,
    server: IPv4Address,
    subnet: IPv4Network,
    nodes: Iterable[tuple[str, str]],
    clusters: Iterable[tuple[str, str]] = (),
    *,
    serial: int = 1,
    ttl: int = 60,
) -> Zone:
    """``nodes``: (hostname, address); ``clusters``: (cluster name, its head's hostname).

    A node without a usable name or IPv4 address is left out, and so is a cluster whose
    name a node already has or whose head has no record. The appliance is ``provisioner``
    and ``gateway``.
    """
    apex = dns.name.from_text(origin if origin.endswith(".") else origin + ".")
    a: dict[dns.name.Name, tuple[IPv4Address, ...]] = {}
    ptr: dict[dns.name.Name, dns.name.Name] = {}

    def add(name: str, address: IPv4Address) -> None:
        owner = dns.name.Name((name,)).concatenate(apex)
        if owner in a:
            return
        a[owner] = (address,)
        reverse = dns.reversename.from_address(str(address))
        if address in subnet and reverse not in ptr:
            ptr[reverse] = owner

    for name in ("provisioner", "gateway"):
        add(name, server)
    hosts: dict[str, IPv4Address] = {}
    for hostname, address in nodes:
        ok = label(hostname)
        try:
            ip = IPv4Address(address)
        except ValueError:
            continue
        if ok and ok not in hosts:
            hosts[ok] = ip
            add(ok, ip)
    for cluster, head in clusters:
        ok = label(cluster)
        head_ip = hosts.get(label(head) or "")
        if ok and head_ip is not None:
            add(ok, head_ip)
    return Zone(apex, server, subnet, serial, ttl, a, ptr)


@dataclass(frozen=True)
class Forward:
    """A query for a name outside the zones: for the upstream servers."""

    query: dns.message.Message


@dataclass(frozen=True)
class Reply:
    wire: bytes
    kind: str  # answered, nxdomain, nodata, refused, notimp, formerr, truncated


def answer(wire: bytes, zone: Zone, *, upstream: bool, tcp: bool = False) -> Reply | Forward | None:
    """What to do with one query (see the module's docstring); None: not DNS, drop it."""
    try:
        query = dns.message.from_wire(wire)
    except (dns.exception.DNSException, ValueError, IndexError):
        return None
    if query.flags & dns.flags.QR:
        return None  # a response sent to us: never answer one
    if query.opcode() != dns.opcode.QUERY:
        return _error(query, dns.rcode.NOTIMP, "notimp", tcp)
    if len(query.question) != 1:
        return _error(query, dns.rcode.FORMERR, "formerr", tcp)
    question = query.question[0]
    apex = zone.holds(question.name) if question.rdclass == dns.rdataclass.IN else None
    if apex is None:
        if upstream and question.rdclass == dns.rdataclass.IN:
            return Forward(query)
        return _error(query, dns.rcode.REFUSED, "refused", tcp)
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    if upstream:
        response.flags |= dns.flags.RA  # other names are answered (by the upstream servers)
    kind = _fill(response, question.name, question.rdtype, apex, zone)
    return _sized(query, response, kind, tcp)


def _fill(
    response: dns.message.Message,
    name: dns.name.Name,
    rdtype: dns.rdatatype.RdataType,
    apex: dns.name.Name,
    zone: Zone,
) -> str:
    """The records for ``name`` into ``response``; the kind of answer it is."""
    found: list[dns.rrset.RRset] = []
    exists = name == apex or name in zone.a or name in zone.ptr
    wanted = {rdtype} if rdtype != dns.rdatatype.ANY else set(dns.rdatatype.RdataType)
    if name == apex and wanted & {dns.rdatatype.SOA}:
        found.append(_soa(zone, apex))
    if name == apex and wanted & {dns.rdatatype.NS}:
        found.append(dns.rrset.from_text(apex, zone.ttl, "IN", "NS", zone.host.to_text()))
    if name in zone.a and wanted & {dns.rdatatype.A}:
        addresses = [str(ip) for ip in zone.a[name]]
        found.append(dns.rrset.from_text_list(name, zone.ttl, "IN", "A", addresses))
    if name in zone.ptr and wanted & {dns.rdatatype.PTR}:
        found.append(dns.rrset.from_text(name, zone.ttl, "IN", "PTR", zone.ptr[name].to_text()))
    if found:
        response.answer.extend(found)
        return "answered"
    response.authority.append(_soa(zone, apex))
    if exists:
        return "nodata"
    response.set_rcode(dns.rcode.NXDOMAIN)
    return "nxdomain"


def _soa(zone: Zone, apex: dns.name.Name) -> dns.rrset.RRset:
    mail = dns.name.Name(("hostmaster",)).concatenate(zone.origin)
    text = f"{zone.host} {mail} {zone.serial} 3600 600 86400 {zone.ttl}"
    return dns.rrset.from_text(apex, zone.ttl, "IN", "SOA", text)


def _error(query: dns.message.Message, rcode: dns.rcode.Rcode, kind: str, tcp: bool) -> Reply:
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    return _sized(query, response, kind, tcp)


def _sized(
    query: dns.message.Message, response: dns.message.Message, kind: str, tcp: bool
) -> Reply:
    """The reply's bytes; over UDP cut to the client's size with TC set when too big."""
    limit = 65535 if tcp else limit_for(query)
    try:
        return Reply(response.to_wire(max_size=limit), kind)
    except dns.exception.TooBig:
        response.answer.clear()
        response.authority.clear()
        response.additional.clear()
        response.flags |= dns.flags.TC
        return Reply(response.to_wire(max_size=limit), "truncated")


def limit_for(query: dns.message.Message) -> int:
    """How big a UDP reply the client takes: its EDNS size (512..4096), else 512."""
    if query.edns >= 0:
        return max(UDP_DEFAULT, min(UDP_MAX, query.payload))
    return UDP_DEFAULT

"""The cluster zone and the answer to one query (provisioner/dns/zone.py): pure, no sockets.
dig against the running service is tests/integration/test_dns_dig.py."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.reversename
import dns.update
import pytest

from provisioner.config import parse_config
from provisioner.dns.zone import Forward, Reply, Zone, answer, build_zone, reverse_apex
from provisioner.errors import ConfigError

SERVER = IPv4Address("10.10.0.1")
SUBNET = IPv4Network("10.10.0.0/24")
ZONE = build_zone(
    "cluster.lan",
    SERVER,
    SUBNET,
    [("node0", "10.10.0.10"), ("node1", "10.10.0.11"), ("Bad Name", "10.10.0.12"),
     ("node2", "not an address"), ("node0", "10.10.0.99")],
    [("llama", "node0"), ("node1", "node0"), ("orphan", "node9")],
    serial=7,
)  # fmt: skip


def ask(name: str, rdtype: str = "A", *, zone: Zone = ZONE, upstream: bool = False,
        tcp: bool = False, payload: int | None = None) -> dns.message.Message:  # fmt: skip
    query = dns.message.make_query(name, rdtype, use_edns=payload is not None, payload=payload or 0)
    out = answer(query.to_wire(), zone, upstream=upstream, tcp=tcp)
    assert isinstance(out, Reply), out
    return dns.message.from_wire(out.wire)


def test_nodes_clusters_and_the_appliance_have_names() -> None:
    got = ask("node0.cluster.lan")
    assert got.rcode() == dns.rcode.NOERROR and got.flags & dns.flags.AA
    assert [r.to_text() for r in got.answer[0]] == ["10.10.0.10"]  # the first node0 wins
    assert ask("NODE1.Cluster.LAN.").answer[0][0].to_text() == "10.10.0.11"  # case-blind
    assert ask("llama.cluster.lan").answer[0][0].to_text() == "10.10.0.10"  # the head
    assert ask("gateway.cluster.lan").answer[0][0].to_text() == "10.10.0.1"
    assert ask("provisioner.cluster.lan").answer[0][0].to_text() == "10.10.0.1"
    # a cluster named like a node keeps the node's address; one whose head is unknown: none
    assert ask("node1.cluster.lan").answer[0][0].to_text() == "10.10.0.11"
    assert ask("orphan.cluster.lan").rcode() == dns.rcode.NXDOMAIN


def test_reverse_names_answer_ptr() -> None:
    got = ask(dns.reversename.from_address("10.10.0.11").to_text(), "PTR")
    assert got.answer[0][0].to_text() == "node1.cluster.lan."
    assert ask("1.0.10.10.in-addr.arpa.", "PTR").answer[0][0].to_text() == (
        "provisioner.cluster.lan."
    )
    missing = ask("200.0.10.10.in-addr.arpa.", "PTR")
    assert (
        missing.rcode() == dns.rcode.NXDOMAIN and missing.authority[0].rdtype == dns.rdatatype.SOA
    )
    assert reverse_apex(IPv4Network("10.10.0.0/16")) == dns.name.from_text("10.10.in-addr.arpa.")


def test_nxdomain_and_nodata_carry_the_soa() -> None:
    gone = ask("nosuch.cluster.lan")
    assert gone.rcode() == dns.rcode.NXDOMAIN and gone.flags & dns.flags.AA
    soa = gone.authority[0]
    assert soa.rdtype == dns.rdatatype.SOA and soa[0].serial == 7 and soa[0].minimum == 60
    nodata = ask("node0.cluster.lan", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and nodata.authority
    apex = ask("cluster.lan", "SOA")
    assert apex.answer[0].rdtype == dns.rdatatype.SOA
    ns = ask("cluster.lan", "NS").answer[0][0].to_text()
    assert ns == "provisioner.cluster.lan."
    anything = ask("cluster.lan", "ANY")
    assert {r.rdtype for r in anything.answer} == {dns.rdatatype.SOA, dns.rdatatype.NS}


def test_other_names_go_upstream_or_are_refused() -> None:
    query = dns.message.make_query("deb.debian.org", "A")
    out = answer(query.to_wire(), ZONE, upstream=True)
    assert isinstance(out, Forward) and out.query.id == query.id
    refused = ask("deb.debian.org")
    assert refused.rcode() == dns.rcode.REFUSED and not refused.flags & dns.flags.RA
    assert ask("node0.cluster.lan", upstream=True).flags & dns.flags.RA


def test_what_is_not_a_query_is_dropped_or_refused_with_a_code() -> None:
    assert answer(b"", ZONE, upstream=False) is None
    assert answer(b"\x00" * 11, ZONE, upstream=False) is None
    assert answer(bytes(range(256)) * 3, ZONE, upstream=False) is None
    response = dns.message.make_response(dns.message.make_query("node0.cluster.lan", "A"))
    assert answer(response.to_wire(), ZONE, upstream=False) is None  # never answer an answer
    for opcode, message in (
        (dns.opcode.IQUERY, dns.message.make_query("node0.cluster.lan", "A")),
        (dns.opcode.UPDATE, dns.update.UpdateMessage("cluster.lan.")),
    ):
        message.set_opcode(opcode)
        out = answer(message.to_wire(), ZONE, upstream=False)
        assert isinstance(out, Reply) and out.kind == "notimp"
        assert dns.message.from_wire(out.wire).rcode() == dns.rcode.NOTIMP


def test_a_reply_too_big_for_udp_is_truncated_and_whole_over_tcp() -> None:
    addresses = tuple(IPv4Address(f"10.10.1.{i}") for i in range(1, 201))
    many = Zone(
        ZONE.origin, SERVER, SUBNET, 1, 60, {dns.name.from_text("big.cluster.lan."): addresses}
    )
    cut = ask("big.cluster.lan", zone=many)
    assert cut.flags & dns.flags.TC and not cut.answer
    assert len(ask("big.cluster.lan", zone=many, payload=4096).answer[0]) == 200  # EDNS: fits
    whole = ask("big.cluster.lan", zone=many, tcp=True)
    assert not whole.flags & dns.flags.TC and len(whole.answer[0]) == 200


BASE = """
[network]
interface = "eth1"
address = "10.10.0.1/24"
mode = "full"
[dhcp]
range = "10.10.0.100-10.10.0.200"
[http]
bind = "10.10.0.1"
"""


def test_dns_config_and_what_dhcp_hands_out() -> None:
    from provisioner.boot.dhcp_server import policy_config

    off = parse_config(BASE)
    assert not off.dns.enabled and policy_config(off).dns_servers == ()
    upstream = 'upstream = ["10.10.0.254", "9.9.9.9:5353"]\n'
    on = parse_config(BASE + '[dns]\nenabled = true\nzone = "Lab.Example."\n' + upstream)
    assert on.dns.zone == "lab.example" and on.dns.upstream == (
        (IPv4Address("10.10.0.254"), 53), (IPv4Address("9.9.9.9"), 5353),
    )  # fmt: skip
    policy = policy_config(on)
    assert policy.dns_servers == (IPv4Address("10.10.0.1"),) and policy.domain == "lab.example"
    named = parse_config(
        BASE.replace("[dhcp]\n", '[dhcp]\ndns = ["10.10.0.53"]\n') + "[dns]\nenabled = true\n"
    )
    assert policy_config(named).dns_servers == (IPv4Address("10.10.0.53"),)  # yours win


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('[dns]\nzone = "bad zone"\n', "dns.zone"),
        ('[dns]\nupstream = "10.0.0.1"\n', "dns.upstream"),
        ('[dns]\nupstream = ["10.0.0.1:99999"]\n', "dns.upstream"),
        ('[dns]\nupstream = ["resolver.example"]\n', "dns.upstream"),
        ("[dns]\nport = 0\n", "dns.port"),
        ("[dns]\nzones = 1\n", "dns.zones"),
    ],
)
def test_a_bad_dns_setting_is_refused_with_its_key(extra: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + extra)
    assert caught.value.key == key


def test_the_responder_remembers_answers_until_the_zone_changes() -> None:
    import asyncio

    from provisioner.dns.server import Responder

    zones = [ZONE]
    kinds: list[str] = []
    responder = Responder(lambda: zones[-1], count=kinds.append, max_age_s=0)
    first = dns.message.make_query("node0.cluster.lan", "A")
    second = dns.message.make_query("node0.cluster.lan", "A")
    one = asyncio.run(responder.reply(first.to_wire(), tcp=False))
    assert one is not None
    again = responder.cached(second.to_wire(), tcp=False)
    assert again is not None and again[2:] == one[2:] and again[:2] == second.to_wire()[:2]
    assert kinds == ["answered", "answered"]
    nodes = [("node0", "10.10.0.10"), ("node1", "10.10.0.11")]
    zones.append(build_zone("cluster.lan", SERVER, SUBNET, nodes, [("llama", "node0")], serial=8))
    assert responder.cached(second.to_wire(), tcp=False) is not None  # same records: kept
    moved = build_zone("cluster.lan", SERVER, SUBNET, [("node0", "10.10.0.77")], serial=9)
    zones.append(moved)  # node0 moved: nothing stale survives
    assert responder.cached(second.to_wire(), tcp=False) is None
    got = asyncio.run(responder.reply(second.to_wire(), tcp=False))
    assert got is not None and dns.message.from_wire(got).answer[0][0].to_text() == "10.10.0.77"

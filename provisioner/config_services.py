"""The [dns] and [prometheus] tables of provisioner.toml: the services beside the boot path
(the cluster zone's DNS responder, Prometheus's service discovery). Pure, as config.py is:
a :class:`ConfigReader` in, validated values out, each failure naming its key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address

from provisioner.config_reader import ConfigReader


@dataclass(frozen=True)
class DnsConfig:
    """The cluster zone's DNS responder (provisioner/dns): off unless enabled."""

    enabled: bool = False
    zone: str = "cluster.lan"
    port: int = 53
    upstream: tuple[tuple[IPv4Address, int], ...] = ()  # other names go there; none: REFUSED
    ttl: int = 60


@dataclass(frozen=True)
class PrometheusConfig:
    node_exporter_port: int = 9100  # where the nodes' exporters listen (http_sd targets)


_ZONE = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
)


def parse_dns(r: ConfigReader) -> DnsConfig:
    zone = (r.text("dns", "zone", DnsConfig.zone) or "").lower().rstrip(".")
    if not _ZONE.match(zone):
        raise r.fail("dns.zone", zone, "must be a domain name such as cluster.lan")
    raw = r.get("dns", "upstream", [])
    if not isinstance(raw, list):
        raise r.fail("dns.upstream", raw, 'must be a list of servers: ["10.0.0.53", "1.1.1.1:53"]')
    upstream: list[tuple[IPv4Address, int]] = []
    for item in raw:
        host, _, port = str(item).partition(":")
        try:
            number = int(port) if port else 53
            if not 0 < number < 65536:
                raise ValueError(port)
            upstream.append((IPv4Address(host), number))
        except ValueError as exc:
            raise r.fail("dns.upstream", item, "not an IPv4 address[:port]") from exc
    ttl = r.number("dns", "ttl", DnsConfig.ttl, 0, 86400, "must be seconds between 0 and 86400")
    return DnsConfig(
        enabled=r.flag("dns", "enabled", False),
        zone=zone,
        port=r.port("dns", "port", 53),
        upstream=tuple(upstream),
        ttl=int(ttl),
    )


def parse_prometheus(r: ConfigReader) -> PrometheusConfig:
    return PrometheusConfig(r.port("prometheus", "node_exporter_port", 9100))

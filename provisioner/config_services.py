"""The [dns], [prometheus], [gateway], [dashboard] and [console] tables of provisioner.toml:
the services beside the boot path (the cluster zone's DNS responder, Prometheus's service
discovery, the front door, the web dashboard, the nodes' netconsole receiver). Pure, as
config.py is: a :class:`ConfigReader` in, validated values out, each failure naming its key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address

import tomlkit
from tomlkit.items import Table

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
    # Prometheus servers on other hosts: the nodes' firewalls let them reach the exporter
    # port (post-install renders it), as the control node does; nobody else.
    hosts: tuple[str, ...] = ()


DASHBOARD_READS = ("cluster", "open", "login")  # who reads the dashboard without logging in


@dataclass(frozen=True)
class DashboardConfig:
    """The web dashboard at ``/`` (provisioner/web). ``reads``: "cluster" (default) lets
    browsers on the cluster network (and this machine) read without a login, "open" lets
    anyone who reaches the port read, "login" asks everyone to log in. Actions always need
    a login (the API token) whatever ``reads`` says."""

    enabled: bool = True
    reads: str = "cluster"
    session_hours: float = 8.0  # a login's cookie lasts this long


@dataclass(frozen=True)
class ConsoleConfig:
    """The nodes' kernel messages (netconsole, UDP) received on the cluster address and
    kept per node (provisioner/console): on unless ``enabled = false``, which also takes
    ``provisioner.netconsole=`` off the boot scripts (the nodes send nothing)."""

    enabled: bool = True
    port: int = 6666  # netconsole's customary port
    max_bytes_per_node: int = 1024 * 1024  # on disk, the older half rotated out


ROUTINGS = ("least-outstanding", "prefix")  # provisioner.gateway.balance.Routing


@dataclass(frozen=True)
class GatewayConfig:
    """The front door (provisioner/gateway): ``/v1`` on the HTTP port, and ``provisioner
    gateway serve`` on ``listen``."""

    open: bool = False  # no API key needed: only on a network where everyone is trusted
    routing: str = "least-outstanding"
    max_attempts: int = 3  # replicas one request may be sent to before the first byte
    probe_interval: float = 1.0  # seconds between health probes of each replica
    listen: str = "0.0.0.0:8090"  # `provisioner gateway serve`'s address
    # Addresses of gateways on other hosts: the nodes' firewalls let them reach the
    # servers' API ports too (post-install renders it), as the control node does.
    hosts: tuple[str, ...] = ()


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
    return PrometheusConfig(
        r.port("prometheus", "node_exporter_port", 9100), _ipv4_list(r, "prometheus", "hosts")
    )


def _ipv4_list(r: ConfigReader, table: str, key: str) -> tuple[str, ...]:
    raw = r.get(table, key, [])
    if not isinstance(raw, list):
        raise r.fail(f"{table}.{key}", raw, 'must be a list of IPv4 addresses: ["10.0.0.7"]')
    hosts = []
    for item in raw:
        try:
            hosts.append(str(IPv4Address(str(item))))
        except ValueError:
            raise r.fail(f"{table}.{key}", item, "not an IPv4 address") from None
    return tuple(hosts)


def parse_gateway(r: ConfigReader) -> GatewayConfig:
    routing = r.text("gateway", "routing", GatewayConfig.routing)
    if routing not in ROUTINGS:
        raise r.fail("gateway.routing", routing, "must be one of " + ", ".join(ROUTINGS))
    listen = r.text("gateway", "listen", GatewayConfig.listen) or ""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise r.fail("gateway.listen", listen, 'must be "ADDRESS:PORT", e.g. "0.0.0.0:8090"')
    return GatewayConfig(
        hosts=_ipv4_list(r, "gateway", "hosts"),
        open=r.flag("gateway", "open", False),
        routing=routing,
        max_attempts=int(r.number("gateway", "max_attempts", 3, 1, 10, "must be 1-10")),
        probe_interval=float(
            r.number(
                "gateway", "probe_interval", 1.0, 0.1, 60, "must be 0.1-60 seconds", whole=False
            )
        ),
        listen=listen,
    )


def dashboard_table() -> Table:
    """The [dashboard] table `config init` writes."""
    table = tomlkit.table()
    table.add(tomlkit.comment("The web dashboard at http://<this node>:<port>/. Reading it:"))
    table.add(tomlkit.comment('"cluster" (no login from the cluster network or this node),'))
    table.add(tomlkit.comment('"open" (no login from anywhere) or "login" (always a login).'))
    table.add(tomlkit.comment("Actions (power, enroll, boot, smoke) always need a login with"))
    table.add(tomlkit.comment("the API token."))
    table.add("enabled", True)
    table.add("reads", DashboardConfig.reads)
    return table


def parse_dashboard(r: ConfigReader) -> DashboardConfig:
    reads = r.text("dashboard", "reads", DashboardConfig.reads) or ""
    if reads not in DASHBOARD_READS:
        raise r.fail("dashboard.reads", reads, "must be one of " + ", ".join(DASHBOARD_READS))
    hours = r.number("dashboard", "session_hours", 8.0, 0.05, 24 * 30, "must be 0.05-720 hours",
                     whole=False)  # fmt: skip
    return DashboardConfig(r.flag("dashboard", "enabled", True), reads, hours)


def parse_console(r: ConfigReader) -> ConsoleConfig:
    cap = r.number(
        "console", "max_bytes_per_node", ConsoleConfig.max_bytes_per_node,
        64 * 1024, 1 << 30, "must be bytes between 65536 and 1073741824",
    )  # fmt: skip
    return ConsoleConfig(
        enabled=r.flag("console", "enabled", True),
        port=r.port("console", "port", ConsoleConfig.port),
        max_bytes_per_node=int(cap),
    )


def console_table() -> Table:
    """The [console] table `config init` writes."""
    table = tomlkit.table()
    table.add(tomlkit.comment("Nodes send their kernel messages here (netconsole, UDP): kept per"))
    table.add(tomlkit.comment("node, read with `provisioner node console NODE`; a boot, panic or"))
    table.add(tomlkit.comment("Oops goes on its timeline. false: the boot scripts stop asking."))
    table.add("enabled", True)
    table.add("port", ConsoleConfig.port)
    table.add(tomlkit.comment("Bytes kept on disk per node (the older half is let go)."))
    table.add("max_bytes_per_node", ConsoleConfig.max_bytes_per_node)
    return table


def parse_registry_url(r: ConfigReader) -> str | None:
    """``[registry] url``: a PostgreSQL registry shared by every ``serve`` of a site
    (issue 23); unset, the SQLite file in the state folder. A password belongs in
    ``~/.pgpass`` or ``PGPASSWORD``, not in this file."""
    url = r.text("registry", "url", None)
    if url is None:
        return None
    if not url.startswith(("postgresql://", "postgres://")):
        raise r.fail("registry.url", url, 'must be a PostgreSQL URL: "postgresql://user@host/db"')
    if re.search(r"://[^/@]*:[^/@]*@", url):
        raise r.fail("registry.url", "(hidden)", "holds a password: put it in ~/.pgpass instead")
    return url

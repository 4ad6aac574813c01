"""provisioner.toml: the appliance's configuration.

The file is read and written with tomlkit so that edits made by the tool keep the user's
comments. Values become frozen dataclasses; a bad value is refused at load time with the
key, the value and the reason (:class:`~provisioner.errors.ConfigError`).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import tomlkit
from tomlkit.exceptions import ParseError
from tomlkit.items import Table

from provisioner import names
from provisioner.config_reader import ConfigReader
from provisioner.config_services import (
    ConsoleConfig,
    DashboardConfig,
    DnsConfig,
    GatewayConfig,
    PrometheusConfig,
    console_table,
    dashboard_table,
    parse_console,
    parse_dashboard,
    parse_dns,
    parse_gateway,
    parse_prometheus,
    parse_registry_url,
)
from provisioner.data import HWPROFILES
from provisioner.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/provisioner/provisioner.toml")
DEFAULT_STATE_DIR = Path("/var/lib/provisioner")
DEFAULT_IPXE_DIR = Path("/usr/lib/ipxe")
DEFAULT_HTTP_PORT = 8080
DEFAULT_LEASE_SECONDS = 3600
DEFAULT_KERNEL_ARGS = "console=tty0 console=ttyS0,115200n8"
API_TOKEN_FILE = "api-token"
EFI_BINARIES = ("ipxe.efi", "snponly.efi")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class Mode(StrEnum):
    PROXY = "proxy"
    FULL = "full"


@dataclass(frozen=True)
class NetworkConfig:
    interface: str
    address: IPv4Interface  # the control node's address on the cluster network, with prefix
    mode: Mode

    @property
    def server_ip(self) -> IPv4Address:
        return self.address.ip

    @property
    def subnet(self) -> IPv4Network:
        return self.address.network


@dataclass(frozen=True)
class DhcpConfig:
    port: int = 67
    pxe_port: int = 4011
    range_start: IPv4Address | None = None
    range_end: IPv4Address | None = None
    lease_seconds: int = DEFAULT_LEASE_SECONDS
    router: IPv4Address | None = None
    dns: tuple[IPv4Address, ...] = ()
    domain: str | None = None
    reservations: Mapping[str, IPv4Address] = field(default_factory=dict)
    router_advertisements: bool = False  # answer IPv6 RS with a lifetime-0 RA (boot/ra.py)


@dataclass(frozen=True)
class TftpConfig:
    port: int = 69
    root: Path | None = None  # None: <state_dir>/tftp, filled from ipxe_dir
    ipxe_dir: Path = DEFAULT_IPXE_DIR


@dataclass(frozen=True)
class HttpConfig:
    """``bind``: the address HTTP listens on; unset in the file, the cluster address
    (``[network] address``); "0.0.0.0" only when written. ``open_reads``: the read-only
    API (``GET /api/v1/nodes...``, ``/api/docs``, ``/openapi.json``) without the API
    token, for a trusted network; ``open_metrics``: ``/metrics`` without it."""

    bind: str  # no default: every Config says where HTTP listens (never "all" by accident)
    port: int = DEFAULT_HTTP_PORT
    open_reads: bool = False
    open_metrics: bool = True


DEFAULT_IMAGE = "debian-trixie"
_IMAGE_REF = re.compile(r"^[a-z0-9][a-z0-9-]*(@[1-9][0-9]*)?$")


@dataclass(frozen=True)
class BootConfig:
    bios_binary: str = "undionly.kpxe"
    efi_binary: str = "ipxe.efi"
    arm64_binary: str = "arm64/ipxe.efi"
    kernel_args: str = DEFAULT_KERNEL_ARGS
    image: str = DEFAULT_IMAGE  # what enrolled nodes boot when neither registry nor profile say


DEFAULT_HOSTNAME_PATTERN = "node{n}"
DEFAULT_HWPROFILES = HWPROFILES


@dataclass(frozen=True)
class ClusterConfig:
    hostname_pattern: str = DEFAULT_HOSTNAME_PATTERN  # {n}: 0, 1, 2, ... first free
    profiles_dir: Path = DEFAULT_HWPROFILES
    auto_enroll: bool = False  # a matched node is enrolled (boots its image) at once
    watch_interval: float = 30.0  # s between the watchdog's probes of serving clusters; 0: off


@dataclass(frozen=True)
class Config:
    network: NetworkConfig
    http: HttpConfig
    dhcp: DhcpConfig = DhcpConfig()
    dns: DnsConfig = field(default_factory=DnsConfig)
    prometheus: PrometheusConfig = field(default_factory=PrometheusConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    tftp: TftpConfig = TftpConfig()
    boot: BootConfig = BootConfig()
    cluster: ClusterConfig = ClusterConfig()
    state_dir: Path = DEFAULT_STATE_DIR
    source: Path | None = None
    registry_url: str | None = None  # [registry] url: PostgreSQL; None: the SQLite file

    @property
    def tftp_root(self) -> Path:
        return self.tftp.root if self.tftp.root is not None else self.state_dir / "tftp"

    @property
    def image_dir(self) -> Path:
        return self.state_dir / "images"

    @property
    def registry_path(self) -> Path:
        return self.state_dir / "registry.sqlite3"

    @property
    def registry_location(self) -> Path | str:
        """What :class:`~provisioner.registry.Registry` opens: the PostgreSQL URL of
        ``[registry] url``, else the SQLite file in the state folder."""
        return self.registry_url or self.registry_path

    @property
    def api_token_path(self) -> Path:
        return self.state_dir / API_TOKEN_FILE

    @property
    def http_base(self) -> str:
        return f"http://{self.network.server_ip}:{self.http.port}"


# ---------------------------------------------------------------- parsing and validation


def parse_config(text: str, source: str | None = None) -> Config:
    """Parse and validate provisioner.toml text; raises ConfigError naming key, value, why."""
    try:
        doc = tomlkit.parse(text).unwrap()
    except ParseError as exc:
        raise ConfigError("(file)", text[:0], f"not valid TOML: {exc}", source=source) from exc
    r = ConfigReader(doc, source)
    network = _parse_network(r)
    dhcp = _parse_dhcp(r, network)
    tftp = TftpConfig(
        port=r.port("tftp", "port", 69),
        root=_opt_path(r.text("tftp", "root", "")),
        ipxe_dir=Path(r.text("tftp", "ipxe_dir", str(DEFAULT_IPXE_DIR)) or DEFAULT_IPXE_DIR),
    )
    http = _parse_http(r, network)
    efi = r.text("boot", "efi_binary", "ipxe.efi") or "ipxe.efi"
    if efi not in EFI_BINARIES:
        raise r.fail("boot.efi_binary", efi, f"must be one of {', '.join(EFI_BINARIES)}")
    boot = BootConfig(
        bios_binary=r.text("boot", "bios_binary", "undionly.kpxe") or "undionly.kpxe",
        efi_binary=efi,
        arm64_binary=r.text("boot", "arm64_binary", "arm64/ipxe.efi") or "arm64/ipxe.efi",
        kernel_args=r.text("boot", "kernel_args", DEFAULT_KERNEL_ARGS) or "",
        image=r.text("boot", "image", DEFAULT_IMAGE) or DEFAULT_IMAGE,
    )
    if not _IMAGE_REF.match(boot.image):
        raise r.fail("boot.image", boot.image, "must be an image name: name or name@version")
    for word in boot.kernel_args.split():
        try:
            names.check_kernel_arg(word)
        except names.UnsafeValue as exc:
            raise r.fail("boot.kernel_args", boot.kernel_args, str(exc)) from exc
    cluster = _parse_cluster(r)
    dns_cfg = parse_dns(r)
    prometheus = parse_prometheus(r)
    gateway = parse_gateway(r)
    dashboard = parse_dashboard(r)
    console = parse_console(r)
    state_dir = Path(r.text("paths", "state_dir", str(DEFAULT_STATE_DIR)) or DEFAULT_STATE_DIR)
    if not state_dir.is_absolute():
        raise r.fail("paths.state_dir", str(state_dir), "must be an absolute path")
    registry_url = parse_registry_url(r)
    r.refuse_unknown()
    ports = {"dhcp.port": dhcp.port, "dhcp.pxe_port": dhcp.pxe_port, "tftp.port": tftp.port}
    if console.enabled:
        ports["console.port"] = console.port
    if len(set(ports.values())) != len(ports):
        raise r.fail("dhcp.pxe_port", dhcp.pxe_port, "UDP ports must differ: " + str(ports))
    return Config(
        network=network,
        dhcp=dhcp,
        tftp=tftp,
        http=http,
        boot=boot,
        cluster=cluster,
        dns=dns_cfg,
        prometheus=prometheus,
        gateway=gateway,
        dashboard=dashboard,
        console=console,
        state_dir=state_dir,
        source=Path(source) if source else None,
        registry_url=registry_url,
    )


def _parse_cluster(r: ConfigReader) -> ClusterConfig:
    pattern = r.text("cluster", "hostname_pattern", DEFAULT_HOSTNAME_PATTERN) or ""
    try:
        samples = [pattern.format(n=n) for n in (0, 99999)]
    except (KeyError, IndexError, ValueError) as exc:
        raise r.fail("cluster.hostname_pattern", pattern, "only {n} may be used") from exc
    if "{n}" not in pattern or not all(names.is_hostname(s) for s in samples):
        raise r.fail(
            "cluster.hostname_pattern", pattern, "must contain {n} and give hostnames like node0"
        )
    env = os.environ.get("PROVISIONER_HWPROFILES")
    default = Path(env) if env else DEFAULT_HWPROFILES
    profiles = Path(r.text("cluster", "profiles", str(default)) or default)
    auto_enroll = r.flag("cluster", "auto_enroll", False)
    interval = r.number(
        "cluster", "watch_interval", ClusterConfig.watch_interval, 0, 86400,
        "must be seconds between 0 (off) and 86400", whole=False,
    )  # fmt: skip
    return ClusterConfig(
        hostname_pattern=pattern,
        profiles_dir=profiles,
        auto_enroll=auto_enroll,
        watch_interval=float(interval),
    )


def _parse_http(r: ConfigReader, net: NetworkConfig) -> HttpConfig:
    bind = r.text("http", "bind", "") or str(net.server_ip)
    try:
        IPv4Address(bind)
    except ValueError as exc:
        raise r.fail(
            "http.bind", bind, 'not an IPv4 address (empty: the network address; "0.0.0.0": all)'
        ) from exc
    return HttpConfig(
        bind=bind,
        port=r.port("http", "port", DEFAULT_HTTP_PORT),
        open_reads=r.flag("http", "open_reads", False),
        open_metrics=r.flag("http", "open_metrics", True),
    )


def _opt_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _parse_network(r: ConfigReader) -> NetworkConfig:
    interface = r.text("network", "interface", None)
    if not interface or len(interface) > 15 or "/" in interface or " " in interface:
        raise r.fail("network.interface", interface, "must be a network interface name")
    raw = r.text("network", "address", None)
    if not raw:
        raise r.fail("network.address", raw, "required: this node's address, e.g. 10.10.0.1/24")
    try:
        address = IPv4Interface(raw if "/" in raw else raw + "/24")
    except ValueError as exc:
        raise r.fail("network.address", raw, "not an IPv4 address with prefix") from exc
    if address.ip == address.network.network_address or address.network.prefixlen > 30:
        raise r.fail("network.address", raw, "must be a host address in a subnet of /30 or more")
    mode_raw = r.text("network", "mode", None)
    try:
        mode = Mode(mode_raw or "")
    except ValueError as exc:
        raise r.fail("network.mode", mode_raw, "must be 'proxy' or 'full'") from exc
    return NetworkConfig(interface=interface, address=address, mode=mode)


def _parse_dhcp(r: ConfigReader, net: NetworkConfig) -> DhcpConfig:
    start, end = _parse_range(r, net)
    lease = int(
        r.number("dhcp", "lease_seconds", DEFAULT_LEASE_SECONDS, 60, 2**31,
                 "must be an integer number of seconds >= 60")
    )  # fmt: skip
    router = r.ip("dhcp", "router")
    if router is not None and router not in net.subnet:
        raise r.fail("dhcp.router", str(router), f"not in the cluster subnet {net.subnet}")
    dns_raw = r.get("dhcp", "dns", [])
    if not isinstance(dns_raw, list):
        raise r.fail("dhcp.dns", dns_raw, "must be a list of IPv4 addresses")
    dns: list[IPv4Address] = []
    for item in dns_raw:
        try:
            dns.append(IPv4Address(str(item)))
        except ValueError as exc:
            raise r.fail("dhcp.dns", item, "not an IPv4 address") from exc
    reservations: dict[str, IPv4Address] = {}
    raw_res = r.get("dhcp", "reservations", {})
    if not isinstance(raw_res, Mapping):
        raise r.fail("dhcp.reservations", raw_res, "must be a table of MAC = address")
    for mac, ip in raw_res.items():
        key = f"dhcp.reservations.{mac}"
        norm = normalize_mac(str(mac))
        if norm is None:
            raise r.fail(key, mac, "not a MAC address (aa:bb:cc:dd:ee:ff)")
        try:
            addr = IPv4Address(str(ip))
        except ValueError as exc:
            raise r.fail(key, ip, "not an IPv4 address") from exc
        if addr not in net.subnet or addr == net.server_ip:
            raise r.fail(key, ip, f"must be a free host address in {net.subnet}")
        if addr in reservations.values():
            raise r.fail(key, ip, "reserved twice")
        reservations[norm] = addr
    ra = r.flag("dhcp", "router_advertisements", net.mode is Mode.FULL)
    return DhcpConfig(
        router_advertisements=ra,
        port=r.port("dhcp", "port", 67),
        pxe_port=r.port("dhcp", "pxe_port", 4011),
        range_start=start,
        range_end=end,
        lease_seconds=lease,
        router=router,
        dns=tuple(dns),
        domain=r.text("dhcp", "domain", None) or None,
        reservations=reservations,
    )


def _parse_range(
    r: ConfigReader, net: NetworkConfig
) -> tuple[IPv4Address | None, IPv4Address | None]:
    raw = r.text("dhcp", "range", "")
    if not raw:
        if net.mode is Mode.FULL:
            raise r.fail("dhcp.range", raw, "full mode needs an address range FIRST-LAST")
        return None, None
    try:
        first, last = (IPv4Address(p.strip()) for p in raw.split("-", 1))
    except ValueError as exc:
        raise r.fail("dhcp.range", raw, "must be FIRST-LAST, two IPv4 addresses") from exc
    if first > last:
        raise r.fail("dhcp.range", raw, "first address is after the last")
    for addr in (first, last):
        if addr not in net.subnet or addr in (
            net.subnet.network_address,
            net.subnet.broadcast_address,
        ):
            raise r.fail("dhcp.range", raw, f"{addr} is not a host address in {net.subnet}")
    if first <= net.server_ip <= last:
        raise r.fail("dhcp.range", raw, f"contains this node's own address {net.server_ip}")
    return first, last


def normalize_mac(text: str) -> str | None:
    """'AA-BB-CC-DD-EE-FF', 'aabb.ccdd.eeff' or 'aa:bb:..' -> 'aa:bb:cc:dd:ee:ff'; None if bad."""
    hexdigits = re.sub(r"[:\-.]", "", text.strip().lower())
    if len(hexdigits) != 12 or not re.fullmatch(r"[0-9a-f]{12}", hexdigits):
        return None
    return ":".join(hexdigits[i : i + 2] for i in range(0, 12, 2))


def load_config(path: Path) -> Config:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError("(file)", str(path), f"cannot read: {exc.strerror}") from exc
    return parse_config(text, source=str(path))


def summary(cfg: Config) -> dict[str, object]:
    """What ``config show`` prints: the values in effect, defaults filled in."""
    dhcp_range = f"{cfg.dhcp.range_start}-{cfg.dhcp.range_end}" if cfg.dhcp.range_start else None
    return {
        "source": str(cfg.source),
        "interface": cfg.network.interface,
        "address": str(cfg.network.address),
        "mode": cfg.network.mode.value,
        "range": dhcp_range,
        "ports": {
            "dhcp": cfg.dhcp.port,
            "pxe": cfg.dhcp.pxe_port,
            "tftp": cfg.tftp.port,
            "http": cfg.http.port,
        },
        "http": {
            "bind": cfg.http.bind,
            "open_reads": cfg.http.open_reads,
            "open_metrics": cfg.http.open_metrics,
        },
        "state_dir": str(cfg.state_dir),
        "tftp_root": str(cfg.tftp_root),
        "dns": {
            "enabled": cfg.dns.enabled,
            "zone": cfg.dns.zone,
            "port": cfg.dns.port,
            "upstream": [f"{host}:{port}" for host, port in cfg.dns.upstream],
        },
        "dashboard": {"enabled": cfg.dashboard.enabled, "reads": cfg.dashboard.reads},
        "gateway": {
            "open": cfg.gateway.open,
            "routing": cfg.gateway.routing,
            "listen": cfg.gateway.listen,
        },
    }


# ---------------------------------------------------------------- writing


def render_config(
    *,
    interface: str,
    address: str,
    mode: Mode,
    dhcp_range: str | None,
    state_dir: Path = DEFAULT_STATE_DIR,
    http_port: int = DEFAULT_HTTP_PORT,
) -> str:
    """A commented provisioner.toml; validated before it is returned."""
    doc = tomlkit.document()
    doc.add(tomlkit.comment("provisioner.toml: written by `provisioner config init`."))
    doc.add(tomlkit.comment("Edit freely: the tool keeps your comments when it changes a value."))
    doc.add(tomlkit.nl())

    net = tomlkit.table()
    net.add(tomlkit.comment("The cluster-facing interface and this node's address on it."))
    net.add("interface", interface)
    net.add("address", address if "/" in address else address + "/24")
    net.add(tomlkit.comment('"full": we are the only DHCP server (isolated cluster network);'))
    net.add(tomlkit.comment('"proxy": a site DHCP server gives addresses, we add boot files.'))
    net.add("mode", str(mode))
    doc.add("network", net)

    dhcp = tomlkit.table()
    dhcp.add("port", 67)
    dhcp.add(tomlkit.comment("PXE boot server port (firmware asks here after the offer)."))
    dhcp.add("pxe_port", 4011)
    dhcp.add(tomlkit.comment("Address pool for full mode, FIRST-LAST; unused in proxy mode."))
    dhcp.add("range", dhcp_range or "")
    dhcp.add("lease_seconds", DEFAULT_LEASE_SECONDS)
    dhcp.add(tomlkit.comment("Answer IPv6 router solicitations with 'no router here' so iPXE"))
    dhcp.add(tomlkit.comment("does not wait ~12 s for IPv6 (default: on in full mode only)."))
    dhcp.add("router_advertisements", mode is Mode.FULL)
    dhcp.add(tomlkit.comment('Optional: router = "10.10.0.254", dns = ["10.10.0.1"],'))
    dhcp.add(tomlkit.comment('domain = "cluster".'))
    res = tomlkit.table()
    res.add(tomlkit.comment('Static addresses: "aa:bb:cc:dd:ee:01" = "10.10.0.11"'))
    dhcp.add("reservations", res)
    doc.add("dhcp", dhcp)

    tftp = tomlkit.table()
    tftp.add("port", 69)
    tftp.add(tomlkit.comment("Empty root: <state_dir>/tftp, filled with iPXE from ipxe_dir."))
    tftp.add("root", "")
    tftp.add("ipxe_dir", str(DEFAULT_IPXE_DIR))
    doc.add("tftp", tftp)

    http = tomlkit.table()
    http.add("port", http_port)
    http.add(tomlkit.comment("Empty: listen on this node's [network] address only (the cluster"))
    http.add(tomlkit.comment('network); "0.0.0.0" listens on every interface.'))
    http.add("bind", "")
    http.add(tomlkit.comment("The read API (GET /api/v1/nodes..., /api/docs, /openapi.json)"))
    http.add(tomlkit.comment("needs the API token, as writes do; true opens it to anyone who"))
    http.add(tomlkit.comment("reaches the port: node inventories, timelines, MACs (trusted"))
    http.add(tomlkit.comment("networks only)."))
    http.add("open_reads", False)
    http.add(tomlkit.comment("/metrics without the token (false: scrape it with the API token)."))
    http.add("open_metrics", True)
    doc.add("http", http)

    dns_table = tomlkit.table()
    dns_table.add(tomlkit.comment("DNS for the cluster zone on this node's address: every node's"))
    dns_table.add(
        tomlkit.comment("name, each cluster's head, 'provisioner' and 'gateway'; PTR too.")
    )
    dns_table.add(
        tomlkit.comment("On, full-mode DHCP hands this node out as the nodes' DNS server.")
    )
    dns_table.add("enabled", False)
    dns_table.add("zone", DnsConfig.zone)
    dns_table.add("port", 53)
    dns_table.add(tomlkit.comment("Other names are asked here; none: they are refused (isolated)."))
    dns_table.add("upstream", tomlkit.array())
    doc.add("dns", dns_table)

    gateway = tomlkit.table()
    gateway.add(tomlkit.comment("The front door: one OpenAI URL, http://<this node>/v1, for every"))
    gateway.add(tomlkit.comment("served model, balanced over the clusters that serve it. Clients"))
    gateway.add(tomlkit.comment("need a key (provisioner gateway key add NAME) unless open ="))
    gateway.add(tomlkit.comment("true, which lets anyone who reaches this node use every model."))
    gateway.add("open", False)
    gateway.add(tomlkit.comment('"least-outstanding" (weighted by each replica\'s tokens/s) or'))
    gateway.add(tomlkit.comment('"prefix" (requests sharing a prompt start meet the same server).'))
    gateway.add("routing", GatewayConfig.routing)
    doc.add("gateway", gateway)
    doc.add("console", console_table())

    doc.add("dashboard", dashboard_table())

    boot = tomlkit.table()
    boot.add("bios_binary", "undionly.kpxe")
    boot.add(
        tomlkit.comment('x86-64 UEFI: "ipxe.efi" (own drivers) or "snponly.efi" (firmware\'s).')
    )
    boot.add("efi_binary", "ipxe.efi")
    boot.add("arm64_binary", "arm64/ipxe.efi")
    boot.add("kernel_args", DEFAULT_KERNEL_ARGS)
    boot.add(tomlkit.comment("Image enrolled nodes boot unless their profile or `image use` says"))
    boot.add(tomlkit.comment("otherwise: name (its newest version) or name@version."))
    boot.add("image", DEFAULT_IMAGE)
    doc.add("boot", boot)

    cluster = tomlkit.table()
    cluster.add(tomlkit.comment("Names given to nodes as they are discovered: node0, node1, ..."))
    cluster.add("hostname_pattern", DEFAULT_HOSTNAME_PATTERN)
    cluster.add(tomlkit.comment("Hardware profiles (YAML) nodes are fingerprinted against."))
    cluster.add("profiles", str(DEFAULT_HWPROFILES))
    cluster.add(tomlkit.comment("Enroll a node as soon as its profile matches: it boots its"))
    cluster.add(tomlkit.comment("image next time (false: wait for `provisioner node enroll`)."))
    cluster.add("auto_enroll", False)
    cluster.add(tomlkit.comment("Seconds between the watchdog's checks that serving clusters'"))
    cluster.add(tomlkit.comment("units are up (one down: converged back); 0 turns it off."))
    cluster.add("watch_interval", 30)
    doc.add("cluster", cluster)

    paths = tomlkit.table()
    paths.add("state_dir", str(state_dir))
    doc.add("paths", paths)

    text = tomlkit.dumps(doc)
    parse_config(text, source="(generated)")
    return text


def set_value(path: Path, dotted_key: str, value: str | int) -> Config:
    """Change one key in place, keeping comments; refuses (and writes nothing) if invalid."""
    doc = tomlkit.parse(path.read_text())
    *tables, last = dotted_key.split(".")
    node: Table | tomlkit.TOMLDocument = doc
    for name in tables:
        child = node.get(name)
        if not isinstance(child, Table):
            child = tomlkit.table()
            node.add(name, child)
        node = child
    node[last] = value
    text = tomlkit.dumps(doc)
    cfg = parse_config(text, source=str(path))
    _atomic_write(path, text, mode=0o644)
    return cfg


def ensure_api_token(state_dir: Path) -> str:
    """The bearer token for mutating API calls: made once, mode 0600."""
    path = state_dir / API_TOKEN_FILE
    if path.exists():
        return path.read_text().strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    _atomic_write(path, token + "\n", mode=0o600)
    return token


def _atomic_write(path: Path, text: str, *, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_config(path: Path, text: str) -> None:
    _atomic_write(path, text, mode=0o644)

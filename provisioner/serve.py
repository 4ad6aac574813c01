"""`provisioner serve`: DHCP, TFTP and HTTP in one process, around one registry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import shutil
import signal
import socket
import sys
from collections.abc import Iterator

import uvicorn

from provisioner.boot import http_files
from provisioner.boot.dhcp_server import DhcpService
from provisioner.boot.http import create_app
from provisioner.boot.http_context import AppContext
from provisioner.boot.http_files import FileAreas, FileServed, FrontProtocol
from provisioner.boot.ipxe import ScriptRenderer
from provisioner.boot.ra import RouterAdvertiser
from provisioner.boot.routes_files import record_file
from provisioner.boot.tftp import TftpService, TftpTransfer
from provisioner.clusters.converge import Converger, site_runner
from provisioner.clusters.site import Site
from provisioner.clusters.watchdog import Watchdog
from provisioner.config import Config, ensure_api_token
from provisioner.console.service import ConsoleReceiver, ConsoleService
from provisioner.console.store import ConsoleStore
from provisioner.dns import registry_zone
from provisioner.dns.server import DnsService, Responder
from provisioner.enroll.matching import Enroller
from provisioner.errors import BootServiceError
from provisioner.instance import InstanceConflict, InstanceLock
from provisioner.metrics import DNS_QUERY_KINDS, Metrics
from provisioner.node_image import image_kernel
from provisioner.profiles import ProfileError
from provisioner.records import EventKind
from provisioner.registry import Registry
from provisioner.service import Notifier, use_journal_format
from provisioner.sshkeys import ensure_keypair

log = logging.getLogger(__name__)

# Open files serve asks for (connections, sessions): systemd's default soft limit is 1024,
# which a thousand slow HTTP clients would use up (accept() then fails for everyone).
WANTED_FILES = 65536
PROFILE_FOLLOW_SECONDS = (
    2.0  # a shared registry: how soon another serve's profile reload is followed
)


def raise_file_limit(wanted: int = WANTED_FILES) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (never past the hard limit, never
    down); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


# What goes into the TFTP root from the iPXE directory (Debian's ipxe package by default).
IPXE_FILES = ("undionly.kpxe", "undionly.kkpxe", "ipxe.efi", "snponly.efi", "ipxe.pxe")


def prepare_tftp_root(cfg: Config) -> list[str]:
    """Copy the iPXE binaries into the TFTP root (copies, not symlinks: the root is a jail).

    A file the user put there is never overwritten. Returns the names copied.
    """
    root = cfg.tftp_root
    root.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in IPXE_FILES:
        src, dst = cfg.tftp.ipxe_dir / name, root / name
        if src.is_file() and not dst.exists():
            shutil.copy2(src, dst)
            copied.append(name)
    wanted = (cfg.boot.bios_binary, cfg.boot.efi_binary)
    missing = [n for n in wanted if not (root / n).is_file()]
    if missing:
        log.warning(
            "TFTP root %s lacks %s: install Debian's ipxe package or copy your own build there",
            root,
            ", ".join(missing),
        )
    return copied


class BootServices:
    """The running appliance: start() binds everything or raises; stop() undoes it."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        # Registry, API token, SSH key: nobody else's to read (an older install made it 0755).
        cfg.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        cfg.state_dir.chmod(0o700)
        cfg.image_dir.mkdir(parents=True, exist_ok=True)
        self.registry = Registry(cfg.registry_location)
        self.metrics = Metrics()
        self.metrics.watch(self.registry)  # nodes by state, boot step timings
        self.api_token = ensure_api_token(cfg.state_dir)
        prepare_tftp_root(cfg)
        self.tftp = TftpService(
            cfg.tftp_root,
            host=str(cfg.network.server_ip),
            port=cfg.tftp.port,
            on_transfer=self._on_tftp,
        )
        self.metrics.watch_tftp(lambda: (self.tftp.stats.requests, self.tftp.stats.dropped()))
        self.dhcp = DhcpService(cfg, self.registry, self.metrics)
        self.enroller = Enroller(
            self.registry,
            cfg.cluster.profiles_dir,
            cfg.cluster.hostname_pattern,
            auto_enroll=cfg.cluster.auto_enroll,
            image_kernel=image_kernel(self.registry, cfg.image_dir, cfg.boot.image),
        )
        self.keypair = ensure_keypair(cfg.state_dir)  # made at first start
        # Day two: members back on their image bring their clusters back to serving.
        site = Site.open(cfg, self.registry)
        self.converger = Converger(
            self.registry,
            site_runner(site, site.connect, lambda line: log.info("converge: %s", line)),
        )
        # ... and a cluster whose units stop while its nodes stay up, too.
        self.watchdog = Watchdog(
            self.registry, self.converger, site.connect, interval=cfg.cluster.watch_interval
        )
        self.app_ctx = AppContext(
            cfg,
            self.registry,
            self.api_token,
            self.metrics,
            ScriptRenderer(),
            self.enroller,
            authorized_keys=self.keypair.public_line,
            on_image_report=self.converger.kick,
        )
        self.app = create_app(self.app_ctx)
        self.areas = FileAreas(
            {
                "images": cfg.image_dir,
                "tftp": cfg.tftp_root,
                "artifacts": cfg.state_dir / "artifacts",
                "models": cfg.state_dir / "models",
            }
        )
        self.dns: DnsService | None = None
        if cfg.dns.enabled:
            counted = {
                kind: self.metrics.counter("provisioner_dns_queries_total", kind=kind)
                for kind in DNS_QUERY_KINDS
            }
            responder = Responder(
                lambda: registry_zone(cfg, self.registry),
                cfg.dns.upstream,
                lambda kind: counted[kind](),
            )
            self.dns = DnsService(responder, str(cfg.network.server_ip), cfg.dns.port)
        self.console: ConsoleService | None = None
        if cfg.console.enabled:
            store = ConsoleStore(cfg.state_dir, cfg.console.max_bytes_per_node)
            receiver = ConsoleReceiver(self.registry, store, self.metrics)
            self.console = ConsoleService(cfg.console, str(cfg.network.server_ip), receiver)
        self.http: uvicorn.Server | None = None
        self._follower: asyncio.Task[None] | None = None
        self._front: asyncio.Server | None = None
        self.ra: RouterAdvertiser | None = None

    def _on_tftp(self, t: TftpTransfer) -> None:
        self.metrics.inc("provisioner_tftp_events_total", kind="sent" if t.ok else "failed")
        node = self.registry.node_by_ip(t.remote_ip)
        if node is None:
            log.info("tftp %s to %s (no known node at that address)", t.filename, t.remote_ip)
            return
        self.registry.add_event(
            node.mac,
            EventKind.TFTP,
            {
                "file": t.filename,
                "size": t.size,
                "seconds": round(t.seconds, 4),
                "ok": t.ok,
                "error": t.error,
            },
        )

    async def start(self) -> None:
        self.tftp.start()
        try:
            await self.dhcp.start()
            if self.dns is not None:
                await self.dns.start()
            self._http_socket = _listen_tcp(self.cfg.http.bind, self.cfg.http.port)
            config = uvicorn.Config(
                self.app,
                log_level="warning",
                lifespan="off",
                access_log=False,
                timeout_keep_alive=30,
            )
            self.http = _QuietServer(config)
            # uvicorn gets no listener of its own: the front protocol takes every
            # connection, sends files with sendfile(2) and hands the rest to uvicorn.
            self._http_task = asyncio.create_task(self.http.serve(sockets=[]))
            while not self.http.started:
                if self._http_task.done():
                    self._http_task.result()
                    raise BootServiceError("the HTTP service stopped while starting")
                await asyncio.sleep(0.01)
            await self.app.state.front_door.start()
            if self.app.state.dashboard is not None:
                self.app.state.dashboard.feed.start()
            self._front = await asyncio.get_running_loop().create_server(
                self._front_protocol, sock=self._http_socket
            )
            if self.cfg.dhcp.router_advertisements:
                self._start_ra()
            await self._start_console()
        except BaseException:
            if self.app.state.dashboard is not None:
                await self.app.state.dashboard.feed.stop()
            await self.app.state.front_door.stop()
            self.tftp.stop()
            self.dhcp.stop()
            if self.dns is not None:
                self.dns.stop()
            raise
        self.watchdog.start()
        if self.cfg.registry_url is not None:  # other serves share the registry
            self._follower = asyncio.create_task(self._follow_profiles(), name="profiles")
        log.info("%s", self.summary())

    def summary(self) -> str:
        """One line for the log and for ``systemctl status`` (STATUS=)."""
        return (
            f"serving: {self.cfg.network.mode.value} mode on {self.cfg.network.interface} "
            f"({self.cfg.network.address}), TFTP :{self.cfg.tftp.port}, "
            f"HTTP {self.cfg.http_base}"
            + (f", DNS :{self.cfg.dns.port} ({self.cfg.dns.zone})" if self.dns else "")
            + (f", dashboard {self.cfg.http_base}/" if self.cfg.dashboard.enabled else "")
            + (f", console :{self.cfg.console.port}/udp" if self.console else "")
        )

    async def _start_console(self) -> None:
        if self.console is None:
            return
        try:
            await self.console.start()
        except BootServiceError as exc:  # nodes boot without it: their consoles go unheard
            log.warning("%s; node consoles are not kept", exc)
            self.console = None

    def _start_ra(self) -> None:
        advertiser = RouterAdvertiser(self.cfg.network.interface, self.metrics)
        try:
            advertiser.start()
        except BootServiceError as exc:  # an optimisation: boots still work, only slower
            log.warning("%s; iPXE will wait for IPv6 on every boot", exc)
            return
        self.ra = advertiser

    def _front_protocol(self) -> FrontProtocol:
        assert self.http is not None
        server, config = self.http, self.http.config
        loop = asyncio.get_running_loop()

        def uvicorn_protocol() -> asyncio.Protocol:
            proto: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config,
                server_state=server.server_state,
                app_state=server.lifespan.state,
                _loop=loop,
            )
            return proto

        return FrontProtocol(self.areas, uvicorn_protocol, self._on_file)

    def _on_file(self, served: FileServed) -> None:
        record_file(self.app_ctx, served)

    async def _follow_profiles(self) -> None:
        """A profile reload on another serve sharing the registry (its API or SIGHUP)
        reloads this one's profiles too, within PROFILE_FOLLOW_SECONDS (polling: one
        read of a registry value; PostgreSQL's LISTEN would need a connection of its own
        kept open, and polling also catches a reload made while this serve was down)."""
        while True:
            await asyncio.sleep(PROFILE_FOLLOW_SECONDS)
            try:
                changes = await asyncio.to_thread(self.enroller.follow)
            except ProfileError as exc:
                for problem in exc.problems:
                    log.error("profile reload (from another serve) refused: %s", problem)
                continue
            except Exception:  # the database away for a moment: next round
                log.warning("profile reload check failed", exc_info=True)
                continue
            if changes is not None:
                log.info("profiles reloaded: another serve reloaded them; %d nodes changed",
                         len(changes))  # fmt: skip

    def reload_profiles(self) -> None:
        """SIGHUP: re-read the profiles; a bad set is logged and the old one kept."""
        try:
            changes = self.enroller.reload()
        except ProfileError as exc:
            for problem in exc.problems:
                log.error("profile reload refused: %s", problem)
            return
        for c in changes:
            log.info("profile of %s (%s): %s -> %s", c.mac, c.hostname, c.before, c.after)

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
        if self._front is not None:
            self._front.close()
            http_files.SENDERS.close()  # the big bodies in flight stop within a second
        if self.ra is not None:
            self.ra.stop()
        if self.app.state.dashboard is not None:  # first: it ends the browsers' streams
            await self.app.state.dashboard.feed.stop()
        if self.console is not None:
            self.console.stop()
        if self.http is not None:
            self.http.should_exit = True
            await self._http_task
        await self.app.state.front_door.stop()
        self.dhcp.stop()
        if self.dns is not None:
            self.dns.stop()
        self.tftp.stop()
        self.watchdog.close()
        self.converger.close()
        self.registry.close()


class _QuietServer(uvicorn.Server):
    """uvicorn's server without its signal handlers: the appliance owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen_tcp(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise BootServiceError(f"HTTP cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock


async def serve(
    cfg: Config, stop: asyncio.Event | None = None, notifier: Notifier | None = None
) -> None:
    """Lock the state folder, bind every port, tell systemd (READY=1), serve until stopped.

    The lock comes before the registry is opened or a port bound: a second serve on the
    same state folder raises InstanceConflict having touched nothing.
    """
    notifier = notifier or Notifier(None)
    log.debug("open files: up to %d", raise_file_limit())
    with InstanceLock(cfg.state_dir):
        notifier.status("starting: binding DHCP, TFTP and HTTP")
        services = BootServices(cfg)
        await services.start()
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def reload() -> None:
            log.info("SIGHUP: reloading profiles")
            notifier.reloading()
            try:
                services.reload_profiles()
            finally:
                notifier.ready(services.summary())

        loop.add_signal_handler(signal.SIGHUP, reload)
        notifier.ready(services.summary())  # every port is bound: systemd may go on
        try:
            await stop.wait()
        finally:
            log.info("stopping")
            notifier.stopping()
            await services.stop()


def run_forever(cfg: Config) -> None:
    """``provisioner serve``: exits 1 when another serve holds the state folder or a
    DHCP port (the message names the PID or the port)."""
    use_journal_format()  # under systemd: no timestamps of our own, journal priorities
    notifier = Notifier.from_environ()
    try:
        asyncio.run(serve(cfg, notifier=notifier))
    except InstanceConflict as exc:
        notifier.status(f"refused: {exc}")
        print(f"provisioner: {exc}", file=sys.stderr)
        raise SystemExit(1) from None

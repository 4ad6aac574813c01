"""The netconsole receiver of ``provisioner serve``: UDP on the cluster address.

A thin adapter: a datagram's source address is mapped to a node through the registry
(its address, or the one its PXE request named: :meth:`Registry.node_by_ip`), decoded
by that node's :class:`~provisioner.console.protocol.Decoder`, kept by the
:class:`~provisioner.console.store.ConsoleStore`, and what
:class:`~provisioner.console.watch.ConsoleWatch` picks goes on the timeline. A datagram
from an address no node has is dropped and counted (``unknown-source``): no file is
made for whoever can send a UDP packet. UDP's source address can be forged by anyone on
the cluster network; what a forger gets is lines in a known node's bounded log.

Lines are written in batches (:data:`FLUSH_SECONDS`), not one write per datagram.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Protocol

from provisioner.config_services import ConsoleConfig
from provisioner.console.protocol import Decoder, Dropped
from provisioner.console.store import ConsoleStore, Record
from provisioner.console.watch import ConsoleWatch, Notice, marked_since_script
from provisioner.errors import BootServiceError
from provisioner.metrics import CONSOLE_RESULTS, Metrics
from provisioner.records import Detail, Event, EventKind, Node

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.2
KNOWN_TTL = 10.0  # seconds an address -> node answer is reused
UNKNOWN_TTL = 2.0  # ... and an address -> nobody answer (a node may just have got it)
MAX_ADDRESSES = 4096  # answers cached at once
MAX_PENDING = 20_000  # lines waiting for a flush (more: dropped, counted "overload")
RECEIVE_BUFFER = 1 << 20  # a boot's replayed log arrives in one burst


class NodeSource(Protocol):
    """What the receiver reads of the registry (the Registry, or a fake)."""

    def node_by_ip(self, ip: str) -> Node | None: ...

    def events(self, mac: str, *, limit: int = ...) -> list[Event]: ...

    def add_event(
        self, mac: str, kind: EventKind, detail: Detail, *, ts: float | None = None
    ) -> None: ...


class AddressBook:
    """Source address -> node MAC, asked of the registry at most once per TTL."""

    def __init__(self, lookup: Callable[[str], Node | None], clock: Callable[[], float]):
        self.lookup = lookup
        self.clock = clock
        self._cache: dict[str, tuple[float, str | None]] = {}

    def mac(self, ip: str) -> str | None:
        now = self.clock()
        hit = self._cache.get(ip)
        if hit is not None and hit[0] > now:
            return hit[1]
        node = self.lookup(ip)
        mac = node.mac if node is not None else None
        if len(self._cache) >= MAX_ADDRESSES:
            self._cache.clear()
        self._cache[ip] = (now + (KNOWN_TTL if mac else UNKNOWN_TTL), mac)
        return mac


class ConsoleReceiver:
    """Datagrams in (:meth:`receive`), lines and events out (:meth:`flush`). No socket:
    :class:`ConsoleService` feeds it; tests may too."""

    def __init__(
        self,
        registry: NodeSource,
        store: ConsoleStore,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ):
        self.registry = registry
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.addresses = AddressBook(registry.node_by_ip, clock)
        self.watch = ConsoleWatch()
        self._decoders: dict[str, Decoder] = {}
        self._pending: dict[str, list[Record]] = {}
        self._notices: list[tuple[str, Notice]] = []
        self._waiting = 0
        self._count = {r: metrics.counter("provisioner_console_datagrams_total", result=r)
                       for r in CONSOLE_RESULTS}  # fmt: skip

    def receive(self, data: bytes, ip: str) -> None:
        mac = self.addresses.mac(ip)
        if mac is None:
            self._count["unknown-source"]()
            log.debug("console datagram from %s dropped: no node has that address", ip)
            return
        if self._waiting >= MAX_PENDING:
            self._count["overload"]()
            return
        decoder = self._decoders.setdefault(mac, Decoder())
        try:
            lines = decoder.feed(data)
        except Dropped as exc:
            self._count[exc.reason]()
            log.debug("console datagram from mac=%s ip=%s dropped: %s", mac, ip, exc)
            return
        self._count["accepted"]()
        now = self.clock()
        self._pending.setdefault(mac, []).extend(Record(now, line) for line in lines)
        self._waiting += len(lines)
        for line in lines:
            notice, held = self.watch.feed(mac, line, now)
            if held:
                self.metrics.inc("provisioner_events_dropped_total", kind="console")
            if notice is not None:
                self._notices.append((mac, notice))

    def flush(self) -> None:
        pending, self._pending, self._waiting = self._pending, {}, 0
        notices, self._notices = self._notices, []
        for mac, records in pending.items():
            try:
                self.store.append(mac, records)
            except OSError as exc:  # a full disk must not stop the boot service
                log.error("console lines of mac=%s not kept: %s", mac, exc)
                continue
            self.metrics.inc("provisioner_console_lines_total", len(records))
        for mac, notice in notices:
            if notice.first_sight and marked_since_script(self.registry.events(mac, limit=200)):
                continue  # this boot is on the timeline already (the appliance restarted)
            self.registry.add_event(mac, EventKind.CONSOLE, notice.detail())
            log.info("console mac=%s %s: %s", mac, notice.what, notice.line.text)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, service: ConsoleService):
        self.service = service

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.service.received(data, addr[0])

    def error_received(self, exc: Exception) -> None:
        log.debug("console socket: %s", exc)


class ConsoleService:
    """The UDP socket; :meth:`start` raises BootServiceError when it cannot bind."""

    def __init__(self, cfg: ConsoleConfig, host: str, receiver: ConsoleReceiver):
        self.cfg = cfg
        self.host = host
        self.receiver = receiver
        self._transport: asyncio.DatagramTransport | None = None
        self._flush: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind((self.host, self.cfg.port))
        except OSError as exc:
            sock.close()
            raise BootServiceError(
                f"console (netconsole) cannot listen on {self.host}:{self.cfg.port}/udp: "
                f"{exc.strerror}"
            ) from exc
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self), sock=sock
        )

    def received(self, data: bytes, ip: str) -> None:
        self.receiver.receive(data, ip)
        if self._flush is None:
            loop = asyncio.get_running_loop()
            self._flush = loop.call_later(FLUSH_SECONDS, self._flush_now)

    def _flush_now(self) -> None:
        self._flush = None
        self.receiver.flush()

    def stop(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self.receiver.flush()

"""The asyncio adapter of the DHCP service: it moves bytes and counts; it decides nothing.

Listens on UDP port 67 (DHCP; proxy-DHCP in proxy mode) and 4011 (PXE boot server),
bound to the cluster interface. Each datagram goes through the sans-IO codec and the pure
policy; the adapter applies the policy's lease action to the registry, records what the
node did on its timeline, and sends the reply where the policy says. A malformed or
foreign datagram is counted, logged at debug level and dropped; only a failed bind is fatal.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

from provisioner.boot.dhcp_codec import DhcpPacket, MessageType, decode, encode
from provisioner.boot.dhcp_policy import (
    Decision,
    Destination,
    DhcpMode,
    LeaseAction,
    LeaseActionKind,
    PolicyConfig,
    decide,
    with_lease_time,
)
from provisioner.boot.leases import LeaseTable
from provisioner.config import Config, Mode
from provisioner.errors import BootServiceError, DhcpDecodeError, DhcpReplyTooLarge
from provisioner.instance import InstanceConflict
from provisioner.metrics import Metrics
from provisioner.records import Event, EventKind, LeaseKind, Sighting
from provisioner.registry import Registry, declined_owner

log = logging.getLogger(__name__)

BOOTP_CLIENT_PORT = 68
_NO_ADDRESS = IPv4Address(0)
DECLINE_HOLD_SECONDS = 600
FLUSH_SECONDS = 0.02
# Lease replies held for one batch at most: they leave together when it commits, and a
# relay's (or perfdhcp's) socket took 80 at once badly at 4,000 DISCOVERs/s (its receive
# buffer overflowed); a full batch commits at once, before its 20 ms.
HELD_MAX = 32
# A registry shared with other serves (PostgreSQL, issue 23): how often the lease table
# learns the leases they gave (a survivor of a failover renews them).
LEASE_SYNC_SECONDS = 2.0
QUIET_OUTCOMES = frozenset({"release", "decline"})  # no reply by design: not drops
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
RECEIVE_BUFFER = 4 * 1024 * 1024
RECEIVE_SIZE = 65535  # the largest UDP payload: a longer datagram would be cut, not refused
DRAIN_MAX = 64  # datagrams read at one wakeup before the loop runs its other work
# A renewal answered while the registry cannot be written gets what it still holds, if at
# least this long (a shorter lease would only bring the client back at once).
MIN_UNRECORDED_LEASE = 60
FAILURE_LOG_SECONDS = 60.0  # while writes keep failing, one log line per minute


def policy_config(cfg: Config) -> PolicyConfig:
    return PolicyConfig(
        mode=DhcpMode.FULL if cfg.network.mode is Mode.FULL else DhcpMode.PROXY,
        server_ip=cfg.network.server_ip,
        http_port=cfg.http.port,
        pxe_port=cfg.dhcp.pxe_port,
        subnet=cfg.network.subnet,
        pool_start=cfg.dhcp.range_start,
        pool_end=cfg.dhcp.range_end,
        router=cfg.dhcp.router,
        # with the appliance's DNS on, nodes are told to use it (and its zone), unless the
        # configuration names other servers
        dns_servers=cfg.dhcp.dns or ((cfg.network.server_ip,) if cfg.dns.enabled else ()),
        domain=cfg.dhcp.domain or (cfg.dns.zone if cfg.dns.enabled else None),
        lease_seconds=cfg.dhcp.lease_seconds,
        reservations=dict(cfg.dhcp.reservations),
        bios_file=cfg.boot.bios_binary,
        efi_x64_file=cfg.boot.efi_binary,
        efi_arm64_file=cfg.boot.arm64_binary,
    )


def open_socket(interface: str, port: int) -> socket.socket:
    """A UDP socket on 0.0.0.0:port that sees only ``interface`` (broadcasts included).

    No SO_REUSEADDR (nor SO_REUSEPORT): two DHCP servers on one segment answer the same
    DISCOVER, so the kernel's refusal (EADDRINUSE) when another process already has the
    port on this interface (or on all of them) is what we want. A socket bound to another
    interface does not conflict: one serve per cluster interface stays possible.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode() + b"\0")
        _grow_receive_buffer(sock)
        sock.bind(("0.0.0.0", port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise InstanceConflict(
                f"DHCP port {port} on {interface} is already bound by another process "
                f"(another provisioner serve, or a DHCP server such as dnsmasq): "
                f"`ss -ulpn 'sport = :{port}'` names it"
            ) from exc
        raise BootServiceError(
            f"DHCP cannot listen on {interface} port {port}: {exc.strerror}"
        ) from exc
    sock.setblocking(False)
    return sock


def _grow_receive_buffer(sock: socket.socket) -> None:
    """Room for a burst (a rack powered on at once) while the loop writes the registry."""
    try:  # SO_RCVBUFFORCE (root) passes net.core.rmem_max; SO_RCVBUF is capped by it
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)


class DhcpService:
    def __init__(self, cfg: Config, registry: Registry, metrics: Metrics):
        self.cfg = cfg
        self.policy = policy_config(cfg)
        self.registry = registry
        self.metrics = metrics
        self.receivers: list[_Receiver] = []
        self._pending: list[Callable[[], object]] = []
        self._sightings: list[Sighting] = []  # the nodes seen, written before _pending
        self._events: list[Event] = []  # the timeline's events, written after _pending
        # per-packet counters, their labels looked up once
        self._packets = {p: metrics.counter("provisioner_dhcp_packets_total", port=str(p))
                         for p in (cfg.dhcp.port, cfg.dhcp.pxe_port)}  # fmt: skip
        self._replies: dict[MessageType | None, Callable[[], None]] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        # Replies whose lease is in the batch being gathered: sent once it is committed,
        # unless that commit found the address given by another serve (shared registry).
        self._held: list[_Held] = []
        self._commit: _Commit | None = None  # the lease commit of the datagram at hand
        self._sync: asyncio.Task[None] | None = None
        self._lease_writes = 0  # lease changes queued so far (receive() compares)
        self._fallback: bytes | None = None  # handle()'s reply should its lease not be written
        rows = registry.leases()
        self.leases = LeaseTable.from_rows(((r.ip, r.mac, r.expires) for r in rows), time.time())
        # The bound leases as the registry has them (MAC -> address, expiry), and the
        # changes to them waiting in the batch: what a renewal may be told on a full disk.
        self._recorded = {r.mac: (r.ip, r.expires) for r in rows if r.kind is LeaseKind.BOUND}
        self._unflushed: list[tuple[str, IPv4Address | None, float]] = []
        self._failing_since: float | None = None  # monotonic time of the first failed batch
        self._failure_logged = 0.0
        self._failed_batches = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for port in (self.cfg.dhcp.port, self.cfg.dhcp.pxe_port):
            receiver = _Receiver(self, port, open_socket(self.cfg.network.interface, port))
            receiver.start(loop)
            self.receivers.append(receiver)
        if self.cfg.registry_url is not None:
            self._sync = loop.create_task(self._sync_leases(), name="dhcp-lease-sync")
        log.info(
            "DHCP (%s mode) on %s ports %d and %d",
            self.cfg.network.mode.value,
            self.cfg.network.interface,
            self.cfg.dhcp.port,
            self.cfg.dhcp.pxe_port,
        )

    def stop(self) -> None:
        if self._sync is not None:
            self._sync.cancel()
        self.flush()  # the held replies go out, their leases recorded, before the sockets close
        for receiver in self.receivers:
            receiver.close()
        self.receivers.clear()

    # ------------------------------------------------------------------ group commit

    def receive(
        self,
        data: bytes,
        source: tuple[str, int],
        port: int,
        send: Callable[[bytes, tuple[str, int]], None],
    ) -> None:
        """Handle one datagram and send its reply: at once, or (group commit) when the
        reply hands out, changes or frees a lease, only after the batch that records the
        lease is committed. A client never holds an address the registry does not (a
        ``kill -9`` between the two used to forget leases clients held, and a restarted
        service could give the address to another node); one transaction per 20 ms keeps
        the rate. If the write fails (a full disk), the reply is not sent (the client asks
        again), except a renewal of a lease the registry holds: it is ACKed for the time
        the registry already records, never longer."""
        before = self._lease_writes
        self._commit = None
        result = self.handle(data, source, port)
        if result is None:
            return
        reply, dest = result
        if self._lease_writes == before:
            send(reply, dest)
            return
        fallback = self._fallback
        self._held.append(
            _Held(
                lambda: send(reply, dest),
                None if fallback is None else lambda: send(fallback, dest),
                self._commit,
            )
        )
        if len(self._held) >= HELD_MAX:
            self.flush()
        else:
            self._schedule()

    def _later(self, op: Callable[[], object]) -> None:
        """Queue a registry write; queued writes go in one transaction every 20 ms.

        Answering waits for the disk only where a lease is at stake (:meth:`receive`): the
        in-memory lease table holds the decision, and at 2,000 packets/s one transaction
        per write would be the bottleneck.
        """
        self._pending.append(op)
        self._schedule()

    def _schedule(self) -> None:
        if self._flush_handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # called outside the event loop (tests): write now
                self.flush()
                return
            self._flush_handle = loop.call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        """Commit the queued writes in one transaction, then send the replies held for it."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._flush_handle = None
        pending, self._pending = self._pending, []
        sightings, self._sightings = self._sightings, []
        events, self._events = self._events, []
        held, self._held = self._held, []
        changes, self._unflushed = self._unflushed, []
        try:
            if pending or sightings or events:
                with self.registry.batch():
                    self.registry.seen_many(sightings)  # first: a bound lease names its node
                    for op in pending:
                        op()
                    self.registry.add_events(events)
        except Exception as exc:
            self._not_recorded(exc, len(pending) + len(sightings) + len(events), held)
            return
        for mac, ip, expires in changes:
            if ip is None:
                self._recorded.pop(mac, None)
            else:
                self._recorded[mac] = (ip, expires)
        if self._failing_since is not None:
            log.warning(
                "dhcp: the registry records leases again, after %d failed writes in %.0f s",
                self._failed_batches,
                time.monotonic() - self._failing_since,
            )
            self._failing_since, self._failed_batches = None, 0
        for reply in held:
            if reply.commit is not None and reply.commit.taken is False:
                self._lost(reply.commit)
                continue
            reply.send()

    def _lost(self, commit: _Commit) -> None:
        """Another serve sharing the registry gave the address first: no reply (the
        client asks again), and the lease table learns who holds it."""
        self.metrics.inc("provisioner_dhcp_dropped_total", reason="lease-taken")
        if self._recorded.get(commit.mac, (None,))[0] == commit.ip:
            del self._recorded[commit.mac]  # never written: not ours to renew on a full disk
        held = self.registry.lease_of(commit.ip)
        if held is not None:
            self.leases.put(held.ip, held.mac, held.expires)
        log.debug("dhcp: %s for %s: another serve gave it first", commit.ip, commit.mac)

    async def _sync_leases(self) -> None:
        """Learn the leases other serves gave, every LEASE_SYNC_SECONDS."""
        while True:
            await asyncio.sleep(LEASE_SYNC_SECONDS)
            try:
                rows = await asyncio.to_thread(self.registry.leases)
            except Exception:  # the database away for a moment: next round
                log.warning("dhcp: reading the shared leases failed", exc_info=True)
                continue
            now = time.time()
            for lease in rows:
                if lease.expires > now and self.leases.owner(lease.ip) != lease.mac:
                    self.leases.put(lease.ip, lease.mac, lease.expires)

    def _not_recorded(self, exc: Exception, writes: int, held: list[_Held]) -> None:
        """A batch failed (a full disk, an I/O error): none of its changes are in the
        registry. New leases are refused (not sent, counted); renewals of recorded leases
        go out for their recorded time. One log line at the first failure, then one a
        minute while it lasts (the clients retry every few seconds)."""
        renewed = [h for h in held if h.fallback is not None]
        for reply in renewed:
            assert reply.fallback is not None
            reply.fallback()
        refused = len(held) - len(renewed)
        self.metrics.inc("provisioner_dhcp_dropped_total", refused, reason="not-recorded")
        self.metrics.inc("provisioner_dhcp_unrecorded_renewals_total", len(renewed))
        self.metrics.inc("provisioner_dhcp_registry_failures_total")
        self._failed_batches += 1
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failure_logged < FAILURE_LOG_SECONDS:
            log.debug("dhcp: registry write failed again: %s", exc)
            return
        self._failure_logged = now
        log.error(
            "dhcp: cannot record leases in the registry %s (%s): %d writes lost, %d new "
            "leases refused, %d renewals answered for their recorded time only; "
            "%d failed writes so far",
            self.registry.where,
            exc,
            writes,
            refused,
            len(renewed),
            self._failed_batches,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )

    # ------------------------------------------------------------------ one datagram

    def handle(
        self, data: bytes, source: tuple[str, int], port: int
    ) -> tuple[bytes, tuple[str, int]] | None:
        """Decode, decide, apply; returns the reply and where to send it (or None)."""
        counted = self._packets.get(port)
        if counted is None:  # a port of its own (tests)
            self.metrics.inc("provisioner_dhcp_packets_total", port=str(port))
        else:
            counted()
        self._fallback = None
        try:
            packet = decode(data)
        except DhcpDecodeError as exc:
            self._drop("malformed", source, str(exc))
            return None
        now = time.time()
        self.leases.expire(now)
        decision = decide(packet, self.policy, port=port, leases=self.leases, now=now)
        reply = decision.reply
        try:  # before any lease changes: a reply that cannot go out leaves no trace
            wire = b"" if reply is None else encode(reply, max_size=packet.max_message_size)
        except DhcpReplyTooLarge as exc:
            self._drop("reply-too-large", source, f"{packet.mac or '-'}: {exc}")
            return None
        if packet.mac is not None:
            self._record(packet.mac, packet, decision, port, now)
        if decision.lease is not None:
            self._apply(decision.lease, packet)
        if decision.reply is None:
            if decision.reason in QUIET_OUTCOMES:
                self.metrics.inc("provisioner_dhcp_quiet_total", kind=decision.reason)
            else:
                self._drop(decision.reason, source, packet.mac or "-")
            return None
        dest = _destination(decision, packet, source)
        kind = decision.reply.message_type
        replied = self._replies.get(kind)
        if replied is None:
            replied = self._replies[kind] = self.metrics.counter(
                "provisioner_dhcp_replies_total", type=_type_name(kind)
            )
        replied()
        self._fallback = self._unrecorded_renewal(decision, packet, now)
        return wire, dest

    def _unrecorded_renewal(
        self, decision: Decision, packet: DhcpPacket, now: float
    ) -> bytes | None:
        """What to send instead of this ACK if its new expiry cannot be written: the same
        lease for the time the registry already records, or None (the reply is refused)."""
        action, reply = decision.lease, decision.reply
        if (
            reply is None
            or reply.message_type is not MessageType.ACK
            or action is None
            or action.kind is not LeaseActionKind.COMMIT
        ):
            return None
        recorded = self._recorded.get(action.mac)
        if recorded is None or recorded[0] != action.ip:
            return None
        remaining = int(recorded[1] - now)
        if remaining < MIN_UNRECORDED_LEASE:
            return None
        return encode(with_lease_time(reply, remaining), max_size=packet.max_message_size)

    def _drop(self, reason: str, source: tuple[str, int], what: str) -> None:
        self.metrics.inc("provisioner_dhcp_dropped_total", reason=reason)
        log.debug("dhcp drop reason=%s from=%s:%d %s", reason, source[0], source[1], what)

    def _record(
        self, mac: str, packet: DhcpPacket, decision: Decision, port: int, now: float
    ) -> None:
        client = decision.client
        if client is None or not (client.is_pxe or client.is_ipxe or client.is_http_client):
            return  # not a network-booting node: no registry entry
        # Never the node's ip: anyone can send a DHCP packet with any MAC. Its address comes
        # from a bound lease (full mode, _apply) or its token-checked report (proxy mode).
        # What a proxy-mode REQUEST names only says who may fetch its boot token.
        self._sightings.append(
            Sighting(mac, now, client.firmware.value, client.arch, client.is_ipxe,
                     self._named_address(packet))
        )  # fmt: skip
        msg = _type_name(packet.message_type)
        detail: dict[str, str | int | None] = {
            "msg": msg,
            "port": port,
            "arch": client.arch,
            "client": "ipxe" if client.is_ipxe else client.firmware.value,
        }
        self._events.append(Event(mac, now, EventKind.DHCP, detail))
        reply = decision.reply
        if reply is not None:
            answer = {
                "msg": _type_name(reply.message_type),
                "address": str(reply.yiaddr) if reply.yiaddr != _NO_ADDRESS else None,
                "boot": reply.file or None,
            }
            self._events.append(Event(mac, now, EventKind.DHCP_REPLY, answer))
        self._schedule()
        if log.isEnabledFor(logging.INFO):
            log.info(
                "dhcp %s mac=%s port=%d -> %s",
                msg,
                mac,
                port,
                _type_name(reply.message_type) if reply else decision.reason,
            )

    def _named_address(self, packet: DhcpPacket) -> str | None:
        """Proxy mode: the address a REQUEST names (option 50, else ciaddr); else None."""
        if self.policy.mode is not DhcpMode.PROXY or packet.message_type is not MessageType.REQUEST:
            return None
        named = packet.requested_address or (
            packet.ciaddr if packet.ciaddr != IPv4Address(0) else None
        )
        return str(named) if named is not None else None

    def _apply(self, action: LeaseAction, packet: DhcpPacket) -> None:
        """Mirror a lease decision into the lease table now and the registry soon."""
        self._lease_writes += 1
        if action.kind is LeaseActionKind.COMMIT:
            assert action.ip is not None and action.expires_at is not None
            bound = packet.message_type is MessageType.REQUEST
            kind = LeaseKind.BOUND if bound else LeaseKind.OFFERED
            self.leases.put(action.ip, action.mac, action.expires_at)
            # an offer replaces the MAC's bound lease in the registry (one address per MAC)
            self._unflushed.append((action.mac, action.ip if bound else None, action.expires_at))
            commit = self._commit = _Commit(action.mac, action.ip)
            self._later(functools.partial(commit.run, self.registry, action.expires_at, kind))
        elif action.kind is LeaseActionKind.WITHDRAW:
            # Our offer lost to another server's. Alone, our registry rows are ours to
            # drop; sharing it (PostgreSQL), the MAC's row is now the winner's: leave it.
            self.leases.drop_mac(action.mac)
            if self.cfg.registry_url is None:
                self._unflushed.append((action.mac, None, 0.0))
                self._later(functools.partial(self.registry.release_lease, action.mac))
        elif action.kind is LeaseActionKind.RELEASE:
            self.leases.drop_mac(action.mac)
            self._unflushed.append((action.mac, None, 0.0))
            self._later(functools.partial(self.registry.release_lease, action.mac))
        elif action.kind is LeaseActionKind.DECLINE and action.ip is not None:
            until = time.time() + DECLINE_HOLD_SECONDS
            self.leases.put(action.ip, declined_owner(action.mac), until)
            self._unflushed += [(mac, None, 0.0) for mac, held in self._recorded.items()
                                if held[0] == action.ip]  # fmt: skip
            self._later(functools.partial(self.registry.decline, action.ip, action.mac, until))


@dataclass(frozen=True)
class _Held:
    """A lease reply waiting for its batch: ``send`` once it is committed, else
    ``fallback`` (a renewal for its recorded time), if any; not at all when its
    ``commit`` found the address another serve's."""

    send: Callable[[], None]
    fallback: Callable[[], None] | None
    commit: _Commit | None = None


class _Commit:
    """One lease write of a batch, and whether the registry let it be made."""

    def __init__(self, mac: str, ip: IPv4Address):
        self.mac = mac
        self.ip = ip
        self.taken: bool | None = None  # None: not written yet

    def run(self, registry: Registry, expires: float, kind: LeaseKind) -> None:
        self.taken = registry.commit_lease(self.mac, self.ip, expires, kind)


def _type_name(message_type: MessageType | None) -> str:
    return message_type.name.lower() if message_type is not None else "bootp"


def _destination(
    decision: Decision, packet: DhcpPacket, source: tuple[str, int]
) -> tuple[str, int]:
    match decision.destination:
        case Destination.RELAY:
            return str(packet.giaddr), 67
        case Destination.SOURCE:
            return source
        case Destination.CLIENT:
            return str(packet.ciaddr), BOOTP_CLIENT_PORT
        case _:
            return "255.255.255.255", BOOTP_CLIENT_PORT


class _Receiver:
    """One port's socket, read dry at each wakeup of the loop (up to :data:`DRAIN_MAX`
    datagrams): one epoll round trip per burst, where asyncio's datagram transport made
    one per datagram. Replies go straight to the socket: a UDP send does not wait, and
    one that fails (a full send buffer, no route to a relay) is counted and dropped; the
    client asks again, as after any lost datagram."""

    def __init__(self, service: DhcpService, port: int, sock: socket.socket):
        self.service = service
        self.port = port
        self.sock = sock
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._ready)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        self.sock.close()

    def _ready(self) -> None:
        for _ in range(DRAIN_MAX):
            try:
                data, addr = self.sock.recvfrom(RECEIVE_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error queued on the socket: nothing to read
                log.debug("dhcp socket error on port %d: %s", self.port, exc)
                return
            try:
                self.service.receive(data, addr, self.port, self._send)
            except Exception:  # a bug must not stop serving; count it and go on
                log.exception("dhcp: error handling a datagram from %s", addr[0])
                self.service.metrics.inc("provisioner_dhcp_dropped_total", reason="internal-error")

    def _send(self, reply: bytes, dest: tuple[str, int]) -> None:
        if self.sock.fileno() < 0:  # closed: serve is stopping
            return
        try:
            self.sock.sendto(reply, dest)
        except OSError as exc:
            self.service.metrics.inc("provisioner_dhcp_dropped_total", reason="send-failed")
            log.debug("dhcp: sending to %s:%d failed: %s", dest[0], dest[1], exc)

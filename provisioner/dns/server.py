"""The cluster's DNS responder: a thin asyncio adapter (UDP and TCP) around
:func:`provisioner.dns.zone.answer`.

The zone is made again from the registry when it is older than a second (a node that just
got its name answers at once, and a flood of queries reads the registry once a second); it
is kept, serial and all, when its records did not change. Answers from the zone are pure
functions of the query's bytes and the zone, so they are remembered: a query whose bytes
after its ID were answered before gets the same reply with its own ID, with no parsing;
over UDP straight from the thread that reads the socket (the cache is emptied when the
zone changes, and held to :data:`CACHE_ENTRIES`).
Names outside the zone go to the upstream servers (``dns.upstream``), tried in order over
UDP, then TCP when the upstream's answer was truncated; the client gets the upstream's
reply with its own query id. With no upstream, they are REFUSED. Every query is counted
by what it got (``provisioner_dns_queries_total{kind}``); a packet that is no query is
dropped and counted as ``dropped``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode

from provisioner.dns.zone import Forward, Reply, Zone, answer, limit_for, same_records

log = logging.getLogger(__name__)

ZoneSource = Callable[[], Zone]
Count = Callable[[str], None]
TCP_IDLE_S = 10.0  # a TCP client that sends nothing this long is closed
CACHE_ENTRIES = 20000
UDP_POLL_S = 0.5  # how often the UDP thread looks whether it should stop
UPSTREAM_TIMEOUT_S = 2.0


@dataclass
class Responder:
    """Turns one query into one reply (shared by the UDP and TCP sides)."""

    zone_source: ZoneSource
    upstream: tuple[tuple[IPv4Address, int], ...] = ()
    count: Count = lambda kind: None
    max_age_s: float = 1.0

    def __post_init__(self) -> None:
        self._zone: Zone | None = None
        self._made = 0.0
        # (tcp, query bytes after the ID) -> (kind, reply bytes after the ID)
        self._cache: dict[tuple[bool, bytes], tuple[str, bytes]] = {}

    def zone(self) -> Zone:
        now = time.monotonic()
        if self._zone is None or now - self._made > self.max_age_s:
            fresh = self.zone_source()
            if self._zone is None or not same_records(fresh, self._zone):
                self._zone = fresh
                self._cache.clear()
            self._made = now
        return self._zone

    def cached(self, wire: bytes, *, tcp: bool) -> bytes | None:
        """The remembered reply to these query bytes, with their ID; None if not known."""
        self.zone()  # (empties the cache when the zone changed)
        hit = self._cache.get((tcp, wire[2:]))
        if hit is None:
            return None
        self.count(hit[0])
        return wire[:2] + hit[1]

    async def reply(self, wire: bytes, *, tcp: bool) -> bytes | None:
        known = self.cached(wire, tcp=tcp)
        if known is not None:
            return known
        try:
            decided = answer(wire, self.zone(), upstream=bool(self.upstream), tcp=tcp)
        except Exception:  # a bug must not take the service down: drop, count, log
            log.exception("DNS query not answered")
            decided = None
        if decided is None:
            self.count("dropped")
            return None
        if isinstance(decided, Reply):
            self.count(decided.kind)
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            self._cache[(tcp, wire[2:])] = (decided.kind, decided.wire[2:])
            return decided.wire
        return await self._forward(decided, tcp=tcp)

    async def _forward(self, forward: Forward, *, tcp: bool) -> bytes:
        query = forward.query
        for host, port in self.upstream:
            try:
                got = await dns.asyncquery.udp(
                    query, str(host), port=port, timeout=UPSTREAM_TIMEOUT_S, ignore_trailing=True
                )
                if got.flags & dns.flags.TC and tcp:
                    got = await dns.asyncquery.tcp(
                        query, str(host), port=port, timeout=UPSTREAM_TIMEOUT_S
                    )
            except (dns.exception.DNSException, OSError) as exc:
                log.info("DNS upstream %s:%d: %s", host, port, exc)
                continue
            got.id = query.id
            self.count("forwarded")
            limit = 65535 if tcp else limit_for(query)
            try:
                return got.to_wire(max_size=limit)
            except dns.exception.TooBig:
                cut = dns.message.make_response(query)
                cut.flags |= dns.flags.TC
                return cut.to_wire()
        self.count("servfail")
        failed = dns.message.make_response(query)
        failed.set_rcode(dns.rcode.SERVFAIL)
        return failed.to_wire()


async def _tcp_client(
    responder: Responder, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """RFC 7766: length-prefixed messages, several per connection, closed when idle."""
    try:
        while True:
            try:
                head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_S)
                (size,) = struct.unpack("!H", head)
                data = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE_S)
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                return
            out = await responder.reply(data, tcp=True)
            if out is None:
                return  # not DNS: the stream cannot be trusted to be in step any more
            writer.write(struct.pack("!H", len(out)) + out)
            await writer.drain()
    finally:
        writer.close()


class DnsService:
    """UDP and TCP on ``host:port``; start() binds both or raises, stop() closes them.

    UDP is read by a thread of its own: a remembered answer goes straight back from it (a
    system call in, one out, no event loop in between); the others are answered on the
    event loop (parsing, forwarding) and sent from there. TCP is served on the loop.
    """

    def __init__(self, responder: Responder, host: str, port: int) -> None:
        self.responder, self.host, self.port = responder, host, port
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._tcp: asyncio.Server | None = None
        self._stopping = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self.host, self.port))
            sock.settimeout(UDP_POLL_S)
            self._tcp = await asyncio.start_server(
                lambda r, w: _tcp_client(self.responder, r, w), self.host, self.port
            )
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._thread = threading.Thread(
            target=self._udp_loop, args=(sock, loop), name="dns-udp", daemon=True
        )
        self._thread.start()

    def _udp_loop(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        while not self._stopping:
            try:
                data, addr = sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return  # closed: stop() was called
            try:
                known = self.responder.cached(data, tcp=False)
            except Exception:  # a bug must not end the thread: drop, count, log
                log.exception("DNS query not answered")
                self.responder.count("dropped")
                continue
            if known is not None:
                _send(sock, known, addr)
                continue
            asyncio.run_coroutine_threadsafe(self._answer(sock, data, addr), loop)

    async def _answer(self, sock: socket.socket, data: bytes, addr: tuple[str, int]) -> None:
        out = await self.responder.reply(data, tcp=False)
        if out is not None:
            _send(sock, out, addr)

    def stop(self) -> None:
        self._stopping = True
        if self._sock is not None:
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=2 * UDP_POLL_S)
        if self._tcp is not None:
            self._tcp.close()


def _send(sock: socket.socket, data: bytes, addr: tuple[str, int]) -> None:
    try:
        sock.sendto(data, addr)
    except OSError as exc:  # a full buffer or a closed socket: the client asks again
        log.debug("DNS reply to %s not sent: %s", addr[0], exc)

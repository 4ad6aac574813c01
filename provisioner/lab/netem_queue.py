"""netem in userspace, for kernels without ``sch_netem``: an NFQUEUE listener that drops
a share of the frames it is given and lets the others go after a delay.

Run in a lab's switch namespace (``python -m provisioner.lab.netem_queue --queue 0
--delay-ms 50 --loss 10``) behind the iptables rule of :func:`.netem.queue_rules`: the
kernel holds each queued frame and tells us its id; we answer each id with a verdict
(``NF_DROP`` at once for a lost frame, ``NF_ACCEPT`` when its delay is up, in the order
they fall due). The frames themselves are not copied here (``NFQNL_COPY_META``).

The netlink messages (nfnetlink_queue) are built and read by pure functions
(:func:`config_message`, :func:`verdict_message`, :func:`packet_ids`), tested without a
socket; :func:`serve` is the loop. SIGTERM ends it; the kernel lets the queued frames
pass once no process holds the queue (the rule's ``--queue-bypass``).
"""

from __future__ import annotations

import argparse
import heapq
import logging
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator, Sequence

log = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQNL_CFG_CMD_BIND = 1
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQNL_COPY_META = 1
NF_DROP, NF_ACCEPT = 0, 1
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
QUEUE_MAXLEN = 8192  # frames the kernel holds for us (64 KiB in flight at 50 ms: ~2,000)

_NLMSG = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_NFGEN = struct.Struct("!BBH")  # family, version, resource id (the queue: big-endian)
_NLATTR = struct.Struct("=HH")  # length, type


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    size = _NLATTR.size + len(payload)
    return _NLATTR.pack(size, kind) + payload + b"\0" * (_align(size) - size)


def _message(msg: int, queue: int, attrs: bytes, seq: int = 0) -> bytes:
    body = _NFGEN.pack(socket.AF_UNSPEC, 0, queue) + attrs
    kind = (NFNL_SUBSYS_QUEUE << 8) | msg
    return _NLMSG.pack(_NLMSG.size + len(body), kind, NLM_F_REQUEST, seq, 0) + body


def config_message(queue: int, maxlen: int = QUEUE_MAXLEN) -> bytes:
    """Bind ``queue``, ids only (no frame bytes copied), room for ``maxlen`` frames."""
    attrs = (
        _attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_UNSPEC))
        + _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
        + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen))
    )
    return _message(NFQNL_MSG_CONFIG, queue, attrs)


def verdict_message(queue: int, packet_id: int, verdict: int) -> bytes:
    return _message(
        NFQNL_MSG_VERDICT, queue, _attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id))
    )


def _messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each netlink message in ``data``."""
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _, _, _ = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size or offset + length > len(data):
            return
        yield kind, data[offset + _NLMSG.size : offset + length]
        offset += _align(length)


def _attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + _NLATTR.size <= len(data):
        length, kind = _NLATTR.unpack_from(data, offset)
        if length < _NLATTR.size or offset + length > len(data):
            return
        yield kind & 0x3FFF, data[offset + _NLATTR.size : offset + length]
        offset += _align(length)


class QueueError(Exception):
    """The kernel refused a request (a netlink error reply), e.g. the queue is taken."""


def packet_ids(data: bytes) -> list[int]:
    """The ids of the frames queued in one ``recv``; a netlink error raises QueueError."""
    ids = []
    for kind, payload in _messages(data):
        if kind == NLMSG_ERROR:
            (error,) = struct.unpack_from("=i", payload)
            if error:
                raise QueueError(f"nfnetlink_queue: error {-error} ({os.strerror(-error)})")
            continue
        if kind != (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            continue
        for attr, value in _attrs(payload[_NFGEN.size :]):
            if attr == NFQA_PACKET_HDR and len(value) >= 4:
                ids.append(struct.unpack_from("!I", value)[0])
    return ids


class Schedule:
    """Which verdict each frame gets, and when: pure, the clock and the dice are given."""

    def __init__(self, delay: float, jitter: float, loss: float, roll: Callable[[], float]) -> None:
        self.delay, self.jitter, self.loss, self.roll = delay, jitter, loss, roll
        self._due: list[tuple[float, int]] = []
        self.dropped = self.passed = 0

    def arrive(self, packet_id: int, now: float) -> int | None:
        """NF_DROP for a lost frame (answered now); else None: held until it falls due."""
        if self.loss and self.roll() * 100 < self.loss:
            self.dropped += 1
            return NF_DROP
        hold = self.delay + (self.roll() * 2 - 1) * self.jitter if self.jitter else self.delay
        heapq.heappush(self._due, (now + max(0.0, hold), packet_id))
        return None

    def due(self, now: float) -> list[int]:
        """The held frames whose time has come, oldest first."""
        ids = []
        while self._due and self._due[0][0] <= now:
            ids.append(heapq.heappop(self._due)[1])
        self.passed += len(ids)
        return ids

    def wait(self, now: float) -> float | None:
        """Seconds until the next frame falls due (None: none is held)."""
        return max(0.0, self._due[0][0] - now) if self._due else None


def serve(queue: int, schedule: Schedule) -> None:
    """Answer the frames of ``queue`` as ``schedule`` says, until SIGTERM (SystemExit)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind((0, 0))
        sock.send(config_message(queue))
        while True:
            readable, _, _ = select.select([sock], [], [], schedule.wait(time.monotonic()))
            now = time.monotonic()
            out = []
            if readable:
                try:
                    data = sock.recv(1 << 16)
                except OSError as exc:  # ENOBUFS: the kernel dropped some of our messages
                    log.warning("netem queue: %s", exc)
                    data = b""
                for packet_id in packet_ids(data):
                    verdict = schedule.arrive(packet_id, now)
                    if verdict is not None:
                        out.append(verdict_message(queue, packet_id, verdict))
            out += [verdict_message(queue, i, NF_ACCEPT) for i in schedule.due(now)]
            if out:
                sock.send(b"".join(out))
    finally:
        sock.close()
        log.info("netem queue: %d frames passed, %d dropped", schedule.passed, schedule.dropped)


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="netem_queue", description=__doc__.split("\n")[0])
    parser.add_argument("--queue", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--loss", type=float, default=0.0, help="percent of frames dropped")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    signal.signal(signal.SIGTERM, _exit)
    schedule = Schedule(args.delay_ms / 1000, args.jitter_ms / 1000, args.loss, random.random)
    log.info("netem queue %d: delay %g ms (+-%g), loss %g%%", args.queue, args.delay_ms,
             args.jitter_ms, args.loss)  # fmt: skip
    try:
        serve(args.queue, schedule)
    except QueueError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

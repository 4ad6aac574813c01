"""The read-only TFTP service: a pure option policy, a thin adapter over tftpy.

``normalize_options()`` is pure; the path rule, ``confine()`` (the whole traversal
defence, shared with the HTTP file routes), is in ``paths.py``. ``TftpService`` wires
them into tftpy, which owns the packets and each session's state machine; the sockets
and timers are our :class:`~provisioner.boot.tftp_sessions.SessionLoop` (tftpy's own
listen loop rebuilt its list of sockets for select(2) at every datagram: slower than
tftpd-hpa with many fetches at once, and dead past descriptor 1,024):

- Each new session gets a guarded packet factory that turns any parse failure into a
  counted TftpException ending that session alone, and checks and normalizes each
  request (tftpy alone died on a non-ASCII name, ``blksize=abc`` or a 3-byte ACK).
- The guard hands tftpy a token (one quoted path component) instead of the file name, so
  tftpy's own path check and ``os.path.exists`` shortcut, made against an empty private
  root, never decide anything: ``dyn_file_func`` unquotes it and asks ``confine()``.
- Uploads go to ``upload_open``, which returns None: tftpy answers Access violation.
- A session whose handling raises anything else ends alone (counted as ``errors``); a
  failure of a loop itself is logged and counted (``restarts``), and the loop goes on.
- Every datagram on the listening port is counted once (:class:`TftpStats`): a request,
  malformed, busy, or stray (from the address and port of a session in progress).
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import tftpy
from tftpy.TftpContexts import TftpContextServer
from tftpy.TftpPacketFactory import TftpPacketFactory
from tftpy.TftpPacketTypes import TftpPacketRRQ, TftpPacketWRQ

from provisioner.boot.paths import confine
from provisioner.boot.tftp_sessions import SessionKeys, SessionLoop
from provisioner.errors import BootServiceError, TftpPathError

log = logging.getLogger(__name__)

READ_AHEAD = 256 * 1024
MIN_BLKSIZE = 8
MAX_BLKSIZE = 65464  # RFC 2348; tftpy accepts up to 65536, which no UDP datagram can carry
MODES = frozenset({"octet", "netascii"})  # tftpy sends netascii files unconverted
DEFAULT_TIMEOUT = 2.0  # seconds per retransmission; also how long tftpy's select() sleeps
DEFAULT_RETRIES = 5
# Threads serving sessions (tftp_sessions.py): the sends spread over the cores.
LOOPS = max(1, min(4, os.cpu_count() or 1))
MAX_SESSIONS = 256  # sessions at once, all loops together: more requests are dropped (busy)
TFTPY_LOG_LEVEL = logging.WARNING  # tftpy logs several INFO lines per packet
_TOKEN_PREFIX = "t"  # never "", "." or "..": a token is always one plain path component


def normalize_options(options: Mapping[str, str]) -> dict[str, str]:
    """The options of a request tftpy may act on: names case-insensitive, blksize clamped
    to [8, 65464]; the rest, and non-numeric values (a ValueError in tftpy), dropped.

    A blksize of more digits than ``int()`` reads (4,300: a ValueError) is clamped too."""
    accepted: dict[str, str] = {}
    for name, value in options.items():
        key, number = name.lower(), value.strip()
        if not (number.isascii() and number.isdigit()):
            continue
        if key == "blksize":
            digits = number.lstrip("0")
            size = MAX_BLKSIZE if len(digits) > len(str(MAX_BLKSIZE)) else int(digits or "0")
            accepted[key] = str(min(max(size, MIN_BLKSIZE), MAX_BLKSIZE))
        elif key == "tsize":
            accepted[key] = number
    return accepted


@dataclass(frozen=True)
class TftpTransfer:
    """One finished read: ``size`` is the bytes sent (the whole file when ``ok``)."""

    remote_ip: str
    remote_port: int
    filename: str
    path: Path
    size: int
    seconds: float
    ok: bool
    error: str | None


@dataclass
class TftpStats:
    """Counters, updated by the service thread."""

    requests: int = 0  # well-formed RRQs and WRQs
    files_sent: int = 0
    bytes_sent: int = 0
    refused: int = 0  # confine() said no: traversal, not found, not a regular file
    write_refused: int = 0
    malformed: int = 0  # datagrams tftpy could not parse, bad modes, stray first packets
    busy: int = 0  # requests dropped because MAX_SESSIONS were in progress
    stray: int = 0  # datagrams on the listening port from a session's own address and port
    restarts: int = 0  # times a session loop failed itself (logged; it went on)
    errors: int = 0  # sessions ended by an unexpected exception in the adapter (a bug)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, counter: str, amount: int = 1) -> None:
        """Add to one counter: the session loops' threads count at once (a bare ``+=``
        from two threads can lose one)."""
        with self._lock:
            setattr(self, counter, getattr(self, counter) + amount)

    def dropped(self) -> dict[str, int]:
        """What started no transfer, by reason: datagrams (malformed, busy, stray; with
        ``requests`` they add up to every datagram the port received) and requests
        refused (refused, write-refused: a part of ``requests``)."""
        return {"malformed": self.malformed, "busy": self.busy, "stray": self.stray,
                "refused": self.refused, "write-refused": self.write_refused}  # fmt: skip


class _ServedFile(io.FileIO):
    """One RRQ's file; reports once on close, which tftpy's ``end()`` does on every path.

    A real file: tftpy's ``end()`` flock-unlocks it (``fileno()``, ``name``), tsize seeks.
    """

    def __init__(self, path: Path, on_close: Callable[[_ServedFile], None]) -> None:
        super().__init__(str(path), "rb")
        self.size = os.fstat(self.fileno()).st_size
        self.sent = 0
        self.opened = time.monotonic()
        self._ahead = b""
        self._at = 0
        self._on_close: Callable[[_ServedFile], None] | None = on_close

    def read(self, size: int | None = -1, /) -> bytes:
        """Reads ahead READ_AHEAD bytes at a time: one syscall per block cost ~10%."""
        want = -1 if size is None else size
        try:
            if want < 0:
                data = self._ahead[self._at :] + (super().read() or b"")
                self._ahead, self._at = b"", 0
            else:
                if len(self._ahead) - self._at < want:
                    more = super().read(max(want, READ_AHEAD)) or b""
                    self._ahead, self._at = self._ahead[self._at :] + more, 0
                data = self._ahead[self._at : self._at + want]
                self._at += len(data)
        except OSError as exc:
            raise tftpy.TftpException(f"cannot read {self.name}: {exc}") from exc
        self.sent += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET, /) -> int:
        self._ahead, self._at = b"", 0  # tsize seeks to the end and back before reading
        return super().seek(offset, whence)

    def close(self) -> None:
        super().close()
        report, self._on_close = self._on_close, None
        if report is not None:
            report(self)


class _GuardedFactory:
    """Parses one session's datagrams; whatever tftpy cannot parse ends only that session."""

    def __init__(self, service: TftpService, *, busy: bool) -> None:
        self._service = service
        self._inner = TftpPacketFactory()
        self._first = True
        self._busy = busy

    def parse(self, buffer: bytes) -> Any:
        first, self._first = self._first, False
        stats = self._service.stats
        if first and self._busy:
            stats.add("busy")
            raise tftpy.TftpException("too many TFTP sessions")
        try:
            packet = self._inner.parse(buffer)
            if first:
                self._admit(packet)
        except Exception as exc:  # any parse error: the datagram is hostile or broken
            stats.add("malformed")
            log.debug("dropped malformed TFTP datagram %r: %s", buffer[:64], exc)
            raise tftpy.TftpException(f"malformed datagram: {exc}") from exc
        return packet

    def _admit(self, packet: Any) -> None:
        if not isinstance(packet, TftpPacketRRQ | TftpPacketWRQ):
            raise tftpy.TftpException(f"not a request: {type(packet).__name__}")
        if packet.mode not in MODES:
            raise tftpy.TftpException(f"unsupported mode {packet.mode!r}")
        packet.options = normalize_options(packet.options)
        packet.filename = _TOKEN_PREFIX + quote(packet.filename, safe="")
        self._service.stats.add("requests")  # last: a datagram is a request or malformed, once


class TftpService:
    """Serves the files under ``root`` over TFTP on ``host:port`` (read-only)."""

    def __init__(
        self,
        root: Path,
        host: str,
        port: int,
        on_transfer: Callable[[TftpTransfer], None] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        self.root = root
        self.host = host
        self.port = port  # 0 picks a free port; the bound one is here after start()
        self.stats = TftpStats()
        self._on_transfer = on_transfer
        self._timeout = timeout
        self._retries = retries
        self._loops: list[SessionLoop] = []
        self._threads: list[threading.Thread] = []
        self._private: str | None = None

    def start(self) -> None:
        """Bind now (BootServiceError if that fails), then serve in daemon threads."""
        if not self.root.is_dir():
            raise BootServiceError(f"TFTP root {self.root} is not a directory")
        logging.getLogger("tftpy").setLevel(TFTPY_LOG_LEVEL)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise BootServiceError(f"TFTP cannot listen on {self.host}:{self.port}: {exc}") from exc
        self.port = sock.getsockname()[1]
        self._private = tempfile.mkdtemp(prefix="provisioner-tftpy-")
        keys = SessionKeys()
        loops = [
            SessionLoop(
                sock if n == 0 else None,
                keys,
                self._new_session,
                max_sessions=lambda: MAX_SESSIONS,
                on_stray=self._stray,
                on_error=self._error,
                on_failure=self._failure,
            )
            for n in range(LOOPS)
        ]
        loops[0].peers = loops
        self._loops = loops
        self._threads = [
            threading.Thread(target=loop.run, name=f"tftp-{n}", daemon=True)
            for n, loop in enumerate(loops)
        ]
        for thread in self._threads:
            thread.start()
        log.info("TFTP serving %s on %s:%d", self.root, self.host, self.port)

    def stop(self) -> None:
        """End every session and the service threads; safe to call twice or before start."""
        loops, threads = self._loops, self._threads
        if not threads:
            return
        for loop, thread in zip(loops, threads, strict=True):  # the first loop first: it
            loop.stop()  # hands sessions to the others, which end what they were handed
            thread.join(self._timeout + 5)
            if thread.is_alive():
                log.warning("TFTP thread did not stop within %.0f s", self._timeout + 5)
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)
        self._loops, self._threads, self._private = [], [], None

    def _new_session(self, ip: str, port: int, busy: bool) -> Any:
        """A tftpy server context for a request from ``ip:port``, its datagrams parsed by
        the guard (``busy``: MAX_SESSIONS are in progress, the request is dropped)."""
        assert self._private is not None
        context = TftpContextServer(
            ip, port, self._timeout, self._private,
            dyn_file_func=self._open, upload_open=self._refuse_upload, retries=self._retries,
        )  # fmt: skip
        context.factory = _GuardedFactory(self, busy=busy)
        return context

    def _stray(self) -> None:
        self.stats.add("stray")

    def _error(self) -> None:
        self.stats.add("errors")

    def _failure(self) -> None:
        self.stats.add("restarts")

    def _open(self, token: str, raddress: str, rport: int) -> _ServedFile | None:
        """tftpy's dyn_file_func: every RRQ lands here, with its name as a token."""
        name = unquote(token.removeprefix(_TOKEN_PREFIX))
        try:
            path = confine(self.root, name)  # the one refusal: confine raises no OSError
        except TftpPathError as exc:
            self.stats.add("refused")
            log.info("TFTP refused %r to remote=%s:%d: %s", name, raddress, rport, exc)
            return None
        try:
            return _ServedFile(path, lambda f: self._finished(f, name, raddress, rport))
        except OSError as exc:  # confined, then gone or unreadable: ours, not the client's
            self.stats.add("refused")
            log.warning("TFTP cannot open %s for remote=%s:%d: %s", path, raddress, rport, exc)
            return None

    def _refuse_upload(self, path: str, context: Any) -> None:
        """tftpy's upload_open: None makes tftpy answer Access violation."""
        self.stats.add("write_refused")
        name = unquote(os.path.basename(path).removeprefix(_TOKEN_PREFIX))
        log.info("TFTP refused to write %r from remote=%s:%s", name, context.host, context.port)

    def _finished(self, served: _ServedFile, name: str, raddress: str, rport: int) -> None:
        sent, ok = served.sent, served.sent == served.size
        self.stats.add("bytes_sent", sent)
        self.stats.add("files_sent", int(ok))
        error = None if ok else f"ended after {sent} of {served.size} bytes"
        seconds = time.monotonic() - served.opened
        event = TftpTransfer(raddress, rport, name, Path(served.name), sent, seconds, ok, error)
        log.debug("TFTP %s to remote=%s:%d: %d bytes ok=%s", name, raddress, rport, sent, ok)
        if self._on_transfer is not None:
            try:
                self._on_transfer(event)
            except Exception:  # a broken callback must not kill tftpy's loop
                log.exception("TFTP on_transfer callback failed")

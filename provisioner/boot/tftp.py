"""The read-only TFTP service: a pure option policy, a thin adapter over tftpy.

``normalize_options()`` is pure; the path rule, ``confine()`` (the whole traversal
defence, shared with the HTTP file routes), is in ``paths.py``. ``TftpService`` wires
them into tftpy, which owns the sockets and the state machine:

- tftpy's listen loop catches only TftpException: a non-ASCII name, ``blksize=abc`` or a
  3-byte ACK killed its thread. A dict subclass installed as ``TftpServer.sessions`` gives
  each new session a guarded packet factory that turns any parse failure into a counted
  TftpException ending that session alone, and checks and normalizes each request.
- The guard hands tftpy a token (one quoted path component) instead of the file name, so
  tftpy's own path check and ``os.path.exists`` shortcut, made against an empty private
  root, never decide anything: ``dyn_file_func`` unquotes it and asks ``confine()``.
- Uploads go to ``upload_open``, which returns None: tftpy answers Access violation.
- Should tftpy's loop die anyway (a failed ``sendto``), it is restarted on the same port.
- tftpy waits on its sockets with select(2), which refuses a descriptor >= FD_SETSIZE
  (1024): with a thousand HTTP connections open in serve, each new session's socket got
  one and tftpy's loop died at once, restart after restart (no node could fetch iPXE).
  Its module's ``select`` is replaced by :class:`_PollSelect` (poll(2): no such limit).
- Every datagram on the listening port is counted once (:class:`TftpStats`): a request,
  malformed, busy, or stray (from the address and port of a session in progress, which
  tftpy ignores: counted through its log record, which :class:`_TftpyLog` takes). tftpy's
  ERROR line per ended session is left out: the reason is counted, and logged at debug.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import select
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
from tftpy.TftpPacketFactory import TftpPacketFactory
from tftpy.TftpPacketTypes import TftpPacketRRQ, TftpPacketWRQ

from provisioner.boot.paths import confine
from provisioner.errors import BootServiceError, TftpPathError

log = logging.getLogger(__name__)

READ_AHEAD = 256 * 1024
MIN_BLKSIZE = 8
MAX_BLKSIZE = 65464  # RFC 2348; tftpy accepts up to 65536, which no UDP datagram can carry
MODES = frozenset({"octet", "netascii"})  # tftpy sends netascii files unconverted
DEFAULT_TIMEOUT = 2.0  # seconds per retransmission; also how long tftpy's select() sleeps
DEFAULT_RETRIES = 5
MAX_SESSIONS = 256  # tftpy polls every session socket on each turn of its loop
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
    restarts: int = 0  # times tftpy's loop died and was started again

    def dropped(self) -> dict[str, int]:
        """What started no transfer, by reason: datagrams (malformed, busy, stray; with
        ``requests`` they add up to every datagram the port received) and requests
        refused (refused, write-refused: a part of ``requests``)."""
        return {"malformed": self.malformed, "busy": self.busy, "stray": self.stray,
                "refused": self.refused, "write-refused": self.write_refused}  # fmt: skip


class _PollSelect:
    """Stands in for the ``select`` module inside tftpy's server: its one call,
    ``select.select(sockets, [], [], timeout)``, made with poll(2)."""

    @staticmethod
    def select(
        rlist: list[Any], wlist: list[Any], xlist: list[Any], timeout: float | None = None
    ) -> tuple[list[Any], list[Any], list[Any]]:
        if wlist or xlist:
            raise NotImplementedError("tftpy waits only for sockets to read")
        poller = select.poll()
        by_fd = {sock.fileno(): sock for sock in rlist}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        wait = None if timeout is None else max(0, int(timeout * 1000))
        ready = poller.poll(wait)
        return [by_fd[fd] for fd, _ in ready if fd in by_fd], [], []


def use_poll_in_tftpy() -> None:
    """Make tftpy's server loop wait with poll(2) (see the module docstring)."""
    setattr(importlib.import_module("tftpy.TftpServer"), "select", _PollSelect)  # noqa: B010


class _TftpyLog(logging.Filter):
    """On tftpy's server logger: counts the datagrams tftpy drops with only a log line
    (stray), and leaves out its ERROR lines per session ended and per retransmission
    (counted: the drop reasons, ``provisioner_tftp_events_total{kind="failed"}``)."""

    STRAY = "received traffic on main socket for existing session"
    ENDED = ("Fatal exception thrown from session", "Timeout waiting for traffic")

    def __init__(self, stats: Callable[[], TftpStats]) -> None:
        super().__init__()
        self._stats = stats

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith(self.STRAY):
            self._stats().stray += 1
            return False
        return not message.startswith(self.ENDED)


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
            stats.busy += 1
            raise tftpy.TftpException("too many TFTP sessions")
        try:
            packet = self._inner.parse(buffer)
            if first:
                self._admit(packet)
        except Exception as exc:  # any parse error: the datagram is hostile or broken
            stats.malformed += 1
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
        self._service.stats.requests += 1  # last: a datagram is a request or malformed, once


class _SessionTable(dict[str, Any]):
    """Installed as ``TftpServer.sessions``: guards each session tftpy creates."""

    def __init__(self, service: TftpService) -> None:
        super().__init__()
        self._service = service

    def __setitem__(self, key: str, context: Any) -> None:
        context.factory = _GuardedFactory(self._service, busy=len(self) >= MAX_SESSIONS)
        super().__setitem__(key, context)


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
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._private: str | None = None
        self._failure: BaseException | None = None
        self._stopping = threading.Event()
        self._log_filter = _TftpyLog(lambda: self.stats)

    def start(self) -> None:
        """Bind now (BootServiceError if that fails), then serve in a daemon thread."""
        if not self.root.is_dir():
            raise BootServiceError(f"TFTP root {self.root} is not a directory")
        logging.getLogger("tftpy").setLevel(TFTPY_LOG_LEVEL)
        use_poll_in_tftpy()
        logging.getLogger("tftpy.TftpServer").addFilter(self._log_filter)
        self._private = tempfile.mkdtemp(prefix="provisioner-tftpy-")
        self._stopping.clear()
        self._failure = None
        self._server = tftpy.TftpServer(
            self._private, dyn_file_func=self._open, upload_open=self._refuse_upload
        )
        self._thread = threading.Thread(target=self._serve, name="tftp", daemon=True)
        self._thread.start()
        while not self._server.is_running.wait(0.01):
            if not self._thread.is_alive():
                self._cleanup()
                raise BootServiceError(
                    f"TFTP cannot listen on {self.host}:{self.port}: {self._failure}"
                ) from self._failure
        self.port = self._server.listenport
        log.info("TFTP serving %s on %s:%d", self.root, self.host, self.port)

    def stop(self) -> None:
        """End every session and the service thread; safe to call twice or before start."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        server.shutdown_gracefully = True  # ignore new requests, and
        server.shutdown_immediately = True  # end all sessions at the top of the next loop
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as wake:  # end select() now
            host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
            with contextlib.suppress(OSError):
                wake.sendto(b"", (host, self.port))
        thread.join(self._timeout + 5)
        if thread.is_alive():
            log.warning("TFTP thread did not stop within %.0f s", self._timeout + 5)
        self._cleanup()

    def _cleanup(self) -> None:
        logging.getLogger("tftpy.TftpServer").removeFilter(self._log_filter)
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)
        self._server = self._thread = self._private = None

    def _serve(self) -> None:
        server = self._server
        while not self._stopping.is_set():
            server.sessions = _SessionTable(self)
            try:
                server.listen(self.host, self.port, timeout=self._timeout, retries=self._retries)
                return
            except Exception as exc:  # tftpy raised past its loop: log, clean up, go on
                with contextlib.suppress(OSError, AttributeError):
                    server.sock.close()
                if not server.is_running.is_set():  # the bind failed
                    self._failure = exc
                    log.error("TFTP cannot listen on %s:%d: %s", self.host, self.port, exc)
                    return
                log.exception("TFTP loop died; restarting it")
                self.stats.restarts += 1
                server.is_running.clear()
                for context in list(server.sessions.values()):
                    with contextlib.suppress(Exception):
                        context.end()
                self._stopping.wait(0.1)

    def _open(self, token: str, raddress: str, rport: int) -> _ServedFile | None:
        """tftpy's dyn_file_func: every RRQ lands here, with its name as a token."""
        name = unquote(token.removeprefix(_TOKEN_PREFIX))
        try:
            path = confine(self.root, name)  # the one refusal: confine raises no OSError
        except TftpPathError as exc:
            self.stats.refused += 1
            log.info("TFTP refused %r to remote=%s:%d: %s", name, raddress, rport, exc)
            return None
        try:
            return _ServedFile(path, lambda f: self._finished(f, name, raddress, rport))
        except OSError as exc:  # confined, then gone or unreadable: ours, not the client's
            self.stats.refused += 1
            log.warning("TFTP cannot open %s for remote=%s:%d: %s", path, raddress, rport, exc)
            return None

    def _refuse_upload(self, path: str, context: Any) -> None:
        """tftpy's upload_open: None makes tftpy answer Access violation."""
        self.stats.write_refused += 1
        name = unquote(os.path.basename(path).removeprefix(_TOKEN_PREFIX))
        log.info("TFTP refused to write %r from remote=%s:%s", name, context.host, context.port)

    def _finished(self, served: _ServedFile, name: str, raddress: str, rport: int) -> None:
        sent, ok = served.sent, served.sent == served.size
        self.stats.bytes_sent += sent
        self.stats.files_sent += int(ok)
        error = None if ok else f"ended after {sent} of {served.size} bytes"
        seconds = time.monotonic() - served.opened
        event = TftpTransfer(raddress, rport, name, Path(served.name), sent, seconds, ok, error)
        log.debug("TFTP %s to remote=%s:%d: %d bytes ok=%s", name, raddress, rport, sent, ok)
        if self._on_transfer is not None:
            try:
                self._on_transfer(event)
            except Exception:  # a broken callback must not kill tftpy's loop
                log.exception("TFTP on_transfer callback failed")

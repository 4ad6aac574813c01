"""Zero-copy file serving in front of the HTTP app.

Kernels, initrds and root images are the bulk of what a booting node fetches, and iPXE
is slow without a Content-Length. The app (FastAPI on uvicorn) can serve them, but it
reads files through a thread 64 KiB at a time; here they go out with ``sendfile(2)``.

:class:`FrontProtocol` sits on the listening socket. It parses each request head with
h11; a GET/HEAD for an existing file under a file area (``/images/``, ``/tftp/``) is
answered here, everything else hands the connection, with the bytes read so far, to
uvicorn's own protocol, which runs the FastAPI app for the rest of the connection.

The response decision (status, headers, byte range) is the pure :func:`plan_response`.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import IO, cast

import h11

from provisioner.boot.paths import confine
from provisioner.boot.sendfile_pool import THREAD_MIN_BYTES, SendfilePool
from provisioner.errors import TftpPathError

log = logging.getLogger(__name__)

IDLE_SECONDS = 30.0
SENDERS = SendfilePool()  # big bodies are sent by its threads (sendfile_pool.py)
MAX_HEAD_BYTES = 16 * 1024


class RangeNotSatisfiable(Exception):
    pass


@dataclass(frozen=True)
class FilePlan:
    status: int
    headers: list[tuple[str, str]]
    offset: int
    count: int  # body bytes to send (0 for HEAD and 416)


@dataclass(frozen=True)
class FileServed:
    """One file handed to a client: what the registry puts on the node's timeline."""

    area: str
    rel: str
    size: int
    sent: int
    range: str | None
    seconds: float
    client: str
    mac_hint: str | None  # the ?mac= query parameter our boot scripts add


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """A single ``bytes=`` range -> (offset, count); None means serve the whole file.

    Several ranges, or a unit other than bytes, are answered with the whole file (a
    server may ignore Range, RFC 9110 14.2). Unsatisfiable ranges raise.
    """
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":  # suffix: the last N bytes
            n = int(last)
            if n <= 0:
                raise RangeNotSatisfiable
            start = max(0, size - n)
            return start, size - start
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size:
        raise RangeNotSatisfiable
    if start < 0 or end < start:
        return None
    end = min(end, size - 1)
    return start, end - start + 1


TEXT_TYPES = {".html": "text/html", ".txt": "text/plain", ".json": "application/json"}


def media_type(name: str) -> str:
    """What a served file is: pages and text as such (pip reads a wheelhouse's index.html
    only as text/html: --find-links skips it otherwise), everything else as bytes."""
    return TEXT_TYPES.get(Path(name).suffix, "application/octet-stream")


def plan_response(
    method: str,
    size: int,
    mtime: float,
    range_header: str | None,
    if_range: str | None = None,
    content_type: str = "application/octet-stream",
) -> FilePlan:
    etag = f'"{int(mtime):x}-{size:x}"'
    base = [
        ("Content-Type", content_type),
        ("Accept-Ranges", "bytes"),
        ("Last-Modified", email.utils.formatdate(mtime, usegmt=True)),
        ("ETag", etag),
    ]
    head = method == "HEAD"
    use_range = range_header is not None and (if_range is None or if_range == etag)
    if use_range:
        assert range_header is not None
        try:
            rng = parse_range(range_header, size)
        except RangeNotSatisfiable:
            headers = [("Content-Range", f"bytes */{size}"), ("Content-Length", "0")]
            return FilePlan(416, headers, 0, 0)
        if rng is not None:
            offset, count = rng
            headers = [
                *base,
                ("Content-Range", f"bytes {offset}-{offset + count - 1}/{size}"),
                ("Content-Length", str(count)),
            ]
            return FilePlan(206, headers, offset, 0 if head else count)
    return FilePlan(200, [*base, ("Content-Length", str(size))], 0, 0 if head else size)


class FileAreas:
    """URL prefixes served from directories, each a jail (see paths.confine)."""

    def __init__(self, areas: Mapping[str, Path]):
        self.areas = dict(areas)  # "images" -> /var/lib/provisioner/images

    def locate(self, target: str) -> tuple[str, str, Path, str | None] | None:
        """(area, relative path, file, ?mac=) for an existing file, else None."""
        parsed = urllib.parse.urlsplit(target)
        parts = urllib.parse.unquote(parsed.path).lstrip("/").split("/", 1)
        if len(parts) != 2 or parts[0] not in self.areas:
            return None
        area, rel = parts
        try:
            path = confine(self.areas[area], rel)
        except TftpPathError:
            return None
        mac = urllib.parse.parse_qs(parsed.query).get("mac", [None])[0]
        return area, rel, path, mac


class _Segment:
    """A stand-in for body bytes that h11 passes through untouched (its sendfile support)."""

    def __init__(self, count: int):
        self.count = count

    def __len__(self) -> int:
        return self.count


OnFile = Callable[[FileServed], None]


class FrontProtocol(asyncio.Protocol):
    def __init__(self, areas: FileAreas, fallback: Callable[[], asyncio.Protocol], on_file: OnFile):
        self.areas = areas
        self.fallback = fallback
        self.on_file = on_file
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.raw = bytearray()  # every byte of the current request cycle, for a hand-over
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()

    def data_received(self, data: bytes) -> None:
        self.raw += data
        self.conn.receive_data(data)
        if not self.busy:
            self._next()

    def _arm_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        loop = asyncio.get_running_loop()
        self.idle = loop.call_later(IDLE_SECONDS, self._close)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _next(self) -> None:
        try:
            event = self.conn.next_event()
        except h11.RemoteProtocolError:
            self._hand_over()  # let uvicorn answer the malformed request properly
            return
        if event is h11.NEED_DATA:
            return
        if isinstance(event, h11.Request):
            found = self._static(event)
            if found is None or not isinstance(self._event(), h11.EndOfMessage):
                self._hand_over()
                return
            self.busy = True
            if self.idle is not None:  # idle means between requests: a long send is not idle
                self.idle.cancel()
                self.idle = None
            assert self.transport is not None
            self.transport.pause_reading()
            asyncio.get_running_loop().create_task(self._send(event, *found))
            return
        if isinstance(event, h11.ConnectionClosed):
            self._close()
            return
        self._hand_over()

    def _event(self) -> object:
        try:
            return self.conn.next_event()
        except h11.RemoteProtocolError:
            return None

    def _static(self, request: h11.Request) -> tuple[str, str, Path, str | None] | None:
        if request.method not in (b"GET", b"HEAD"):
            return None
        headers = dict(request.headers)
        if b"content-length" in headers or b"transfer-encoding" in headers:
            return None  # a body on a GET: not ours to handle
        return self.areas.locate(request.target.decode("latin-1"))

    def _hand_over(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        assert self.transport is not None
        proto = self.fallback()
        self.transport.set_protocol(proto)
        proto.connection_made(self.transport)
        if self.raw:
            proto.data_received(bytes(self.raw))
        self.raw.clear()

    async def _send(
        self, request: h11.Request, area: str, rel: str, path: Path, mac: str | None
    ) -> None:
        assert self.transport is not None
        transport = self.transport
        started = time.monotonic()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                plan = plan_response(
                    request.method.decode(),
                    st.st_size,
                    st.st_mtime,
                    headers.get("range"),
                    headers.get("if-range"),
                    media_type(path.name),
                )
                transport.write(
                    self.conn.send(
                        h11.Response(
                            status_code=plan.status,
                            headers=plan.headers,
                            reason=HTTPStatus(plan.status).phrase.encode(),
                        )
                    )
                    or b""
                )
                if plan.count:
                    await self._body(transport, fh, plan)
                transport.write(self.conn.send(h11.EndOfMessage()) or b"")
        except (OSError, h11.LocalProtocolError, ConnectionError) as exc:
            log.debug("file %s/%s: %s", area, rel, exc)
            self._close()
            return
        peer = transport.get_extra_info("peername")
        self.on_file(
            FileServed(
                area=area,
                rel=rel,
                size=st.st_size,
                sent=plan.count,
                range=headers.get("range"),
                seconds=time.monotonic() - started,
                client=peer[0] if peer else "?",
                mac_hint=mac,
            )
        )
        if self.conn.our_state is h11.MUST_CLOSE or transport.is_closing():
            self._close()
            return
        self.conn.start_next_cycle()
        self.raw = bytearray(self.conn.trailing_data[0])
        self.busy = False
        self._arm_idle()
        transport.resume_reading()
        if self.raw:
            self._next()

    async def _body(self, transport: asyncio.Transport, fh: IO[bytes], plan: FilePlan) -> None:
        pieces = self.conn.send_with_data_passthrough(h11.Data(data=_Segment(plan.count)))  # type: ignore[arg-type]
        for piece in pieces or []:
            if isinstance(piece, _Segment):
                sock = transport.get_extra_info("socket")
                if (
                    plan.count >= THREAD_MIN_BYTES
                    and sock is not None
                    and transport.get_write_buffer_size() == 0  # the head went out
                    and SENDERS.take()
                ):
                    await SENDERS.send(sock.fileno(), fh.fileno(), plan.offset, plan.count,
                                       transport.is_closing)  # fmt: skip
                    continue
                loop = asyncio.get_running_loop()
                await loop.sendfile(transport, fh, plan.offset, plan.count)
            else:
                transport.write(piece)

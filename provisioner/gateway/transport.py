"""The front door's connections to the replicas: an httpx transport with a plain pool.

httpx's own pool (httpcore) walks every connection for every queued request: with 64
requests in flight that was 2.6 ms of CPU per request, and the gateway topped out at 252
requests/s (bench/gateway_bench.py, profiled). Here each replica has a stack of idle
keep-alive connections: a request takes the newest one (or opens one), gives it back when
its answer has been read to the end, and closes it when the answer is abandoned (the
client left: the server sees the connection close and stops generating). HTTP/1.1 is
spoken by h11, as httpcore does.

A pooled connection the server has closed meanwhile (llama-server closes idle ones after
5 s) is found before use (its socket reads as ready: EOF) and dropped; one that fails
before any byte of an answer is replaced by a new connection once, so a stale connection
never looks like a dead replica. What else goes wrong is raised as httpx's exceptions:
ConnectError/ConnectTimeout (nothing sent), RemoteProtocolError/ReadError (the connection
ended), ReadTimeout, WriteError.
"""

from __future__ import annotations

import asyncio
import select
import socket
from collections.abc import AsyncIterator

import h11
import httpx

READ_SIZE = 65536
MAX_IDLE_PER_REPLICA = 128
NO_RESPONSE = "Server disconnected without sending a response."  # httpcore's words


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(h11.CLIENT)
        self.sock: socket.socket | None = writer.get_extra_info("socket")

    def stale(self) -> bool:
        """An idle connection whose socket is readable has been closed by the server."""
        if self.writer.is_closing() or self.sock is None:
            return True
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def close(self) -> None:
        self.writer.close()

    async def event(self, timeout: float | None) -> object:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                async with asyncio.timeout(timeout):
                    data = await self.reader.read(READ_SIZE)
            except TimeoutError:
                raise httpx.ReadTimeout("no answer within the read timeout") from None
            except OSError as exc:
                raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
            self.h11.receive_data(data)


class PoolTransport(httpx.AsyncBaseTransport):
    def __init__(self, max_idle: int = MAX_IDLE_PER_REPLICA):
        self.max_idle = max_idle
        self._idle: dict[tuple[str, int], list[_Conn]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        key = (request.url.host, request.url.port or 80)
        body = await request.aread()
        conn, reused = await self._checkout(key, timeouts.get("connect"))
        try:
            head = await self._exchange(conn, request, body, timeouts.get("read"))
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            conn.close()
            if not reused:
                raise
            conn, _ = await self._checkout(key, timeouts.get("connect"), fresh=True)
            try:
                head = await self._exchange(conn, request, body, timeouts.get("read"))
            except BaseException:
                conn.close()
                raise
        except BaseException:
            conn.close()
            raise
        return httpx.Response(
            head.status_code,
            headers=[(k, v) for k, v in head.headers],
            stream=_Body(self, key, conn, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": head.reason},
        )

    async def _checkout(
        self, key: tuple[str, int], timeout: float | None, *, fresh: bool = False
    ) -> tuple[_Conn, bool]:
        idle = self._idle.get(key, [])
        while idle and not fresh:
            conn = idle.pop()
            if not conn.stale():
                return conn, True
            conn.close()
        host, port = key
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port, limit=READ_SIZE)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} in time") from None
        except OSError as exc:
            raise httpx.ConnectError(f"{host}:{port}: {exc.strerror or exc}") from exc
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Conn(reader, writer), False

    async def _exchange(
        self, conn: _Conn, request: httpx.Request, body: bytes, timeout: float | None
    ) -> h11.Response:
        target = request.url.raw_path
        headers = list(request.headers.raw)
        try:
            data = conn.h11.send(h11.Request(method=request.method, target=target, headers=headers))
            if body:
                data += conn.h11.send(h11.Data(data=body))
            data += conn.h11.send(h11.EndOfMessage())
            conn.writer.write(data)
            await conn.writer.drain()
        except OSError as exc:
            raise httpx.WriteError(str(exc) or type(exc).__name__) from exc
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc)) from exc
        while True:
            try:
                event = await conn.event(timeout)
            except h11.RemoteProtocolError as exc:  # before the answer's status line
                raise httpx.RemoteProtocolError(f"{NO_RESPONSE} ({exc})") from exc
            if isinstance(event, h11.Response):
                return event
            if isinstance(event, h11.ConnectionClosed):
                raise httpx.RemoteProtocolError(NO_RESPONSE)
            # h11.InformationalResponse (100 Continue ...): read on

    def give_back(self, key: tuple[str, int], conn: _Conn) -> None:
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            try:
                conn.h11.start_next_cycle()
            except h11.LocalProtocolError:
                conn.close()
                return
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.max_idle:
                idle.append(conn)
                return
        conn.close()

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


class _Body(httpx.AsyncByteStream):
    def __init__(self, pool: PoolTransport, key: tuple[str, int], conn: _Conn,
                 timeout: float | None):  # fmt: skip
        self.pool, self.key, self.conn, self.timeout = pool, key, conn, timeout
        self.done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                event = await self.conn.event(self.timeout)
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc)) from exc
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.done = True
                return
            elif isinstance(event, h11.ConnectionClosed):
                raise httpx.RemoteProtocolError("the server closed the connection mid-answer")

    async def aclose(self) -> None:
        conn, self.conn = self.conn, None  # type: ignore[assignment]
        if conn is None:
            return
        if self.done:
            self.pool.give_back(self.key, conn)
        else:
            conn.close()  # an answer left unread: the server sees the close and stops

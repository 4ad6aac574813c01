"""The front door's pool (gateway/transport.py) against a real asyncio HTTP server on
loopback: connections kept and reused, a connection the server closed while idle is
replaced without an error, an abandoned answer closes its connection (the server sees
it), and failures come out as httpx's exceptions."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from provisioner.gateway.transport import PoolTransport


class Server:
    def __init__(self, close_after_answer: bool = False, slow_body: bool = False) -> None:
        self.connections = 0
        self.closed = asyncio.Event()  # a connection ended from the client's side
        self.close_after_answer = close_after_answer
        self.slow_body = slow_body
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)  # fmt: skip
                await reader.readexactly(length)
                if self.slow_body:
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    for _ in range(100):
                        writer.write(b"5\r\nhello\r\n")
                        await writer.drain()
                        await asyncio.sleep(0.05)
                    continue
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                if self.close_after_answer:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed.set()
        finally:
            writer.close()


async def serve(server: Server) -> tuple[asyncio.Server, str]:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    return listener, f"http://127.0.0.1:{port}"


def test_connections_are_kept_and_reused() -> None:
    async def main() -> None:
        server = Server()
        listener, url = await serve(server)
        async with httpx.AsyncClient(transport=PoolTransport()) as client:
            for _ in range(5):
                r = await client.post(f"{url}/v1/x", content=b"{}")
                assert (r.status_code, r.text) == (200, "ok")
            await asyncio.gather(*(client.post(f"{url}/v1/x", content=b"{}") for _ in range(4)))
        assert server.connections <= 4
        listener.close()
        await listener.wait_closed()

    asyncio.run(main())


def test_a_connection_the_server_closed_while_idle_is_replaced_without_an_error() -> None:
    async def main() -> None:
        server = Server(close_after_answer=True)
        listener, url = await serve(server)
        async with httpx.AsyncClient(transport=PoolTransport()) as client:
            for _ in range(3):
                await asyncio.sleep(0.05)  # the server's close has arrived
                r = await client.get(f"{url}/health")
                assert r.status_code == 200
        assert server.connections == 3
        listener.close()
        await listener.wait_closed()

    asyncio.run(main())


def test_an_abandoned_answer_closes_its_connection() -> None:
    async def main() -> None:
        server = Server(slow_body=True)
        listener, url = await serve(server)
        async with httpx.AsyncClient(transport=PoolTransport()) as client:
            async with client.stream("POST", f"{url}/v1/x", content=b"{}") as r:
                async for chunk in r.aiter_bytes():
                    assert b"hello" in chunk
                    break
            await asyncio.wait_for(server.closed.wait(), 5)
        listener.close()
        await listener.wait_closed()

    asyncio.run(main())


def test_failures_are_httpx_exceptions() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there

    async def main() -> None:
        async with httpx.AsyncClient(transport=PoolTransport()) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{port}/health")

            async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                finally:
                    writer.close()

            listener = await asyncio.start_server(hang_up, "127.0.0.1", 0)
            url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
            with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
                await client.get(f"{url}/health")
            listener.close()
            await listener.wait_closed()

            async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                try:
                    await asyncio.sleep(5)
                finally:
                    writer.close()

            listener = await asyncio.start_server(silent, "127.0.0.1", 0)
            url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
            with pytest.raises(httpx.ReadTimeout):
                await client.get(f"{url}/health", timeout=httpx.Timeout(5, read=0.2))
            listener.close()
            await listener.wait_closed()

    asyncio.run(main())

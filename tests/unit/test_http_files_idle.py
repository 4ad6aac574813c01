"""The front's idle timeout counts only between requests: a file sent to a slow client
for longer than it (a 158 MB root to a TCG VM, a big root over a slow link) is sent
whole. Seen in CI: the root was cut at 54 % after 30 s and live-boot failed. Loopback
only, a real socket and a real sendfile(2)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from provisioner.boot import http_files
from provisioner.boot.http_files import FileAreas, FrontProtocol


def test_a_send_longer_than_the_idle_timeout_is_not_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_files, "IDLE_SECONDS", 0.3)
    (tmp_path / "images").mkdir()
    data = bytes(range(256)) * 16384  # 4 MiB: more than the sockets buffer
    (tmp_path / "images" / "root.squashfs").write_bytes(data)
    areas = FileAreas({"images": tmp_path / "images"})

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: FrontProtocol(areas, asyncio.Protocol, lambda served: None), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        client.setblocking(False)
        await loop.sock_connect(client, ("127.0.0.1", port))
        await loop.sock_sendall(client, b"GET /images/root.squashfs HTTP/1.1\r\nHost: x\r\n\r\n")
        got = bytearray()
        try:
            started = loop.time()
            while True:  # a second or so: slower than the idle timeout, twice over at least
                chunk = await asyncio.wait_for(loop.sock_recv(client, 65536), 5)
                if not chunk:
                    break
                got += chunk
                _, _, body = bytes(got).partition(b"\r\n\r\n")
                if len(body) >= len(data):
                    break
                await asyncio.sleep(0.005)
            assert loop.time() - started > 0.6
        finally:
            client.close()
            server.close()
            await server.wait_closed()
        return bytes(got)

    response = asyncio.run(main())
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert len(body) == len(data) and body == data

"""sendfile_pool: big bodies sent by threads on a duplicate of the loop's non-blocking
socket, with real sockets and files: every byte, in order; a closed connection and a
client that takes nothing end the send; a busy pool says so instead of queueing."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from provisioner.boot.sendfile_pool import SendfilePool, send_all


def _file(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "root.squashfs"
    path.write_bytes(os.urandom(size))
    return path


def _drain(sock: socket.socket, into: list[bytes], pause: float = 0.0) -> threading.Thread:
    def read() -> None:
        while chunk := sock.recv(1 << 16):
            into.append(chunk)
            time.sleep(pause)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_a_slow_reader_gets_every_byte_of_the_range(tmp_path: Path) -> None:
    path = _file(tmp_path, 3 << 20)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)  # as the event loop keeps it
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)  # many waits for room
    got: list[bytes] = []
    reader = _drain(theirs, got, pause=0.0005)
    with path.open("rb") as fh:
        send_all(ours.fileno(), fh.fileno(), 1000, (2 << 20) + 7)
    ours.close()
    reader.join(10)
    assert (
        hashlib.sha256(b"".join(got)).digest()
        == hashlib.sha256(path.read_bytes()[1000 : 1000 + (2 << 20) + 7]).digest()
    )
    theirs.close()


def test_a_closed_connection_and_a_silent_client_end_the_send(tmp_path: Path) -> None:
    path = _file(tmp_path, 4 << 20)
    ours, theirs = socket.socketpair()  # nobody reads theirs: the buffer fills
    ours.setblocking(False)
    closed = threading.Event()
    with path.open("rb") as fh:
        threading.Timer(0.3, closed.set).start()
        started = time.monotonic()
        with pytest.raises(ConnectionError, match="closed"):
            send_all(ours.fileno(), fh.fileno(), 0, 4 << 20, closed.is_set)
        assert time.monotonic() - started < 3  # noticed within a poll slice
        with pytest.raises(TimeoutError, match="took nothing for 2 s"):
            send_all(ours.fileno(), fh.fileno(), 0, 4 << 20, idle_s=2)
    ours.close()
    theirs.close()


def test_the_pool_sends_from_its_threads_and_says_when_all_are_busy(tmp_path: Path) -> None:
    path = _file(tmp_path, 2 << 20)

    async def scenario() -> None:
        pool = SendfilePool(threads=1)
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        got: list[bytes] = []
        reader = _drain(theirs, got)
        assert pool.take()
        assert not pool.take()  # one thread, taken: the caller sends on the loop
        with path.open("rb") as fh:
            await pool.send(ours.fileno(), fh.fileno(), 0, 2 << 20, lambda: False)
        assert pool.take()  # given back
        ours.close()
        reader.join(10)
        assert b"".join(got) == path.read_bytes()
        silent, _peer = socket.socketpair()
        silent.setblocking(False)
        with path.open("rb") as fh:
            sending = asyncio.ensure_future(
                pool.send(silent.fileno(), fh.fileno(), 0, 2 << 20, lambda: False)
            )
            await asyncio.sleep(0.3)
            pool.close()  # serve stops: the send in progress ends within a second
            with pytest.raises(ConnectionError):
                await asyncio.wait_for(sending, 3)
        silent.close()
        _peer.close()
        theirs.close()

    asyncio.run(scenario())

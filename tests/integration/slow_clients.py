"""Slow HTTP clients and stalled TFTP transfers, for the starvation check (issue 20, item 4).

Run inside a lab namespace: ``python -m tests.integration.slow_clients SERVER HTTP_PORT
HTTP_CLIENTS TFTP_STALLS SECONDS``. Keeps HTTP_CLIENTS connections open to the server,
each sending a request head one byte every BYTE_EVERY seconds and never finishing it
(slowloris); one the server closes is opened again. Keeps TFTP_STALLS read requests for
the iPXE binary in progress that never ACK a block (each is asked again, from a new port,
before the server gives it up). Prints ``ready`` once all are open, then after SECONDS
(or SIGTERM) one JSON line: connections opened, closed by the server, refused, requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys

BYTE_EVERY = 1.0
STALL_RENEW = 6.0  # seconds; the server gives a silent transfer up after ~10 s
HEAD = b"GET /boot/02:00:00:00:00:01.ipxe HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 4096
RRQ = b"\x00\x01undionly.kpxe\x00octet\x00"


class Counts:
    def __init__(self) -> None:
        self.opened = self.closed_by_server = self.refused = self.open_now = 0
        self.max_open = self.stalled_requests = 0


async def slow_client(server: str, port: int, counts: Counts, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(server, port)
        except OSError:
            counts.refused += 1
            await asyncio.sleep(0.5)
            continue
        counts.opened += 1
        counts.open_now += 1
        counts.max_open = max(counts.max_open, counts.open_now)
        try:
            for i in range(len(HEAD)):
                if stop.is_set():
                    return
                writer.write(HEAD[i : i + 1])
                await writer.drain()
                try:
                    if await asyncio.wait_for(reader.read(4096), BYTE_EVERY) == b"":
                        counts.closed_by_server += 1
                        break
                except TimeoutError:
                    continue
        except OSError:
            counts.closed_by_server += 1
        finally:
            counts.open_now -= 1
            writer.close()


async def stalled_transfers(server: str, count: int, counts: Counts, stop: asyncio.Event) -> None:
    held: list[socket.socket] = []
    try:
        while not stop.is_set():
            fresh = []
            for _ in range(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.setblocking(False)
                sock.sendto(RRQ, (server, 69))  # then never an ACK
                fresh.append(sock)
                counts.stalled_requests += 1
            for sock in held:
                sock.close()
            held = fresh
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STALL_RENEW)
    finally:
        for sock in held:
            sock.close()


async def run(server: str, port: int, clients: int, stalls: int, seconds: float) -> Counts:
    counts, stop = Counts(), asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tasks = [asyncio.create_task(slow_client(server, port, counts, stop)) for _ in range(clients)]
    tasks.append(asyncio.create_task(stalled_transfers(server, stalls, counts, stop)))
    for _ in range(600):
        if counts.open_now >= clients and counts.stalled_requests >= stalls:
            break
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return counts


def main(server: str, port: int, clients: int, stalls: int, seconds: float) -> int:
    counts = asyncio.run(run(server, port, clients, stalls, seconds))
    print(json.dumps(vars(counts)), flush=True)
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(args[0], int(args[1]), int(args[2]), int(args[3]), float(args[4])))

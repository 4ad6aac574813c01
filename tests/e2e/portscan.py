"""A TCP connect scan of every port of some hosts, for the port-scan check (issue 20,
item 7). Run inside a namespace: ``python -m tests.e2e.portscan HOST...``; prints
``{host: [open ports]}`` as JSON. A port is open when the connection is accepted;
refused (closed) and silent (dropped by a firewall) ports are not listed."""

from __future__ import annotations

import asyncio
import json
import sys

CONCURRENCY = 1000
TIMEOUT_S = 1.5


async def _probe(host: str, port: int, gate: asyncio.Semaphore) -> int | None:
    async with gate:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TIMEOUT_S)
        except (OSError, TimeoutError):
            return None
        writer.close()
        return port


async def scan(hosts: list[str]) -> dict[str, list[int]]:
    gate = asyncio.Semaphore(CONCURRENCY)
    found: dict[str, list[int]] = {}
    for host in hosts:
        results = await asyncio.gather(*(_probe(host, p, gate) for p in range(1, 65536)))
        found[host] = sorted(p for p in results if p is not None)
    return found


if __name__ == "__main__":
    print(json.dumps(asyncio.run(scan(sys.argv[1:]))))

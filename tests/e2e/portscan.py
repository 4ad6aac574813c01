"""A TCP connect scan of every port of some hosts, for the port-scan check (issue 20,
item 7). Run inside a namespace: ``python -m tests.e2e.portscan HOST... [--confirm
P,P...]``; prints ``{host: [open ports]}`` as JSON. A port is open when the connection
is accepted; refused (closed) and silent (dropped by a firewall) ports are not listed.

Every port of every host is tried at once, a few thousand at a time, with a short timeout
(a firewall drops most of them: each waits the whole timeout). The ports in ``--confirm``
(the services the test cares about) are then tried again, one by one, with a long one: a
port open but slow to answer under load is not missed there.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys

CONCURRENCY = 4096
FAST_TIMEOUT_S = 0.8
SLOW_TIMEOUT_S = 5.0


async def _probe(host: str, port: int, gate: asyncio.Semaphore, timeout: float) -> bool:
    async with gate:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True


async def scan(hosts: list[str], confirm: list[int]) -> dict[str, list[int]]:
    gate = asyncio.Semaphore(CONCURRENCY)
    targets = [(h, p) for h in hosts for p in range(1, 65536)]
    fast = await asyncio.gather(*(_probe(h, p, gate, FAST_TIMEOUT_S) for h, p in targets))
    found = {h: {p for (h2, p), up in zip(targets, fast, strict=True) if up and h2 == h}
             for h in hosts}  # fmt: skip
    one = asyncio.Semaphore(1)
    for host in hosts:
        for port in confirm:
            if await _probe(host, port, one, SLOW_TIMEOUT_S):
                found[host].add(port)
    return {h: sorted(ports) for h, ports in found.items()}


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    args = sys.argv[1:]
    ports: list[int] = []
    if "--confirm" in args:
        at = args.index("--confirm")
        ports = [int(p) for p in args[at + 1].split(",") if p]
        args = args[:at] + args[at + 2 :]
    print(json.dumps(asyncio.run(scan(args, ports))))

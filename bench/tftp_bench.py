"""Benchmark TftpService against tftpd-hpa on loopback (run on demand, not a test).

Both servers serve the same temporary root. Measured, in the same run:
  (a) one ~70 KiB file (iPXE's undionly.kpxe) fetched by N concurrent curl clients
      (--tftp-blksize 1468): wall time and files/s;
  (b) one 32 MiB file fetched by one curl client with blksize 1468: MB/s (10^6 bytes/s).
Both run at once and are measured alternately, round by round (--repeat rounds);
the median is reported. Ratios are ours / tftpd-hpa's throughput (for wall time:
theirs / ours), so below 1 means slower than tftpd-hpa.

    .venv/bin/python bench/tftp_bench.py [--clients 64] [--repeat 5] [--json]

Needs Debian's tftpd-hpa (its in.tftpd, started here) and curl. Installing it also enables
its own service: `update-rc.d tftpd-hpa disable`, or it holds port 69 wherever this
machine's root boots (tests/e2e/test_service_systemd.py's container saw serve refused).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from provisioner.boot.tftp import TftpService

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Figure, free_port, report, stop

HOST = "127.0.0.1"
IPXE = Path("/usr/lib/ipxe/undionly.kpxe")
TFTPD = "/usr/sbin/in.tftpd"
BLKSIZE = "1468"
SMALL, LARGE = "undionly.kpxe", "large.bin"


def curl_argv(port: int, name: str) -> list[str]:
    return [
        "curl", "-s", "--max-time", "120", "-o", "/dev/null", "-w", "%{size_download}",
        "--tftp-blksize", BLKSIZE, f"tftp://{HOST}:{port}/{name}",
    ]  # fmt: skip


def fetch_concurrently(port: int, name: str, size: int, clients: int) -> tuple[float, int]:
    """Seconds until all clients are done, and how many got less than ``size`` bytes."""
    started = time.perf_counter()
    procs = [
        subprocess.Popen(curl_argv(port, name), stdout=subprocess.PIPE, text=True)
        for _ in range(clients)
    ]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    elapsed = time.perf_counter() - started
    failures = sum(
        1 for p, out in zip(procs, outputs, strict=True) if p.returncode or out != str(size)
    )
    return elapsed, failures


def measure(ports: dict[str, int], root: Path, clients: int, repeat: int) -> dict[str, Any]:
    """Alternate the servers round by round, so load from elsewhere hits both alike."""
    small, large = (root / SMALL).stat().st_size, (root / LARGE).stat().st_size
    walls: dict[str, list[float]] = {name: [] for name in ports}
    rates: dict[str, list[float]] = {name: [] for name in ports}
    failures = dict.fromkeys(ports, 0)
    for round_ in range(repeat):
        order = list(ports) if round_ % 2 == 0 else list(reversed(ports))
        for name in order:
            wall, failed = fetch_concurrently(ports[name], SMALL, small, clients)
            walls[name].append(wall)
            failures[name] += failed
            wall, failed = fetch_concurrently(ports[name], LARGE, large, 1)
            rates[name].append(large / wall / 1e6)
            failures[name] += failed
    return {
        name: {
            "concurrent_seconds": round(statistics.median(walls[name]), 4),
            "files_per_s": round(clients / statistics.median(walls[name]), 1),
            "single_mb_per_s": round(statistics.median(rates[name]), 2),
            "failures": failures[name],
        }
        for name in ports
    }


def wait_until_serving(port: int, name: str, size: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if fetch_concurrently(port, name, size, 1)[1] == 0:
            return
        time.sleep(0.1)
    raise SystemExit(f"nothing serves TFTP on {HOST}:{port}")


@contextmanager
def ours(root: Path) -> Iterator[int]:
    service = TftpService(root, HOST, 0)
    service.start()
    try:
        yield service.port
    finally:
        service.stop()


@contextmanager
def tftpd_hpa(root: Path) -> Iterator[int]:
    port = free_port(socket.SOCK_DGRAM)
    argv = [TFTPD, "--foreground", "--listen", "--address", f"{HOST}:{port}", "--secure", str(root)]
    proc = subprocess.Popen(argv)
    try:
        wait_until_serving(port, SMALL, (root / SMALL).stat().st_size)
        yield port
    finally:
        stop(proc)  # by PID: only the process this script started


def make_root(large_mib: int) -> Path:
    root = Path(tempfile.mkdtemp(prefix="tftp-bench-"))
    root.chmod(0o755)  # tftpd-hpa chroots there and drops to nobody
    if IPXE.is_file():
        shutil.copyfile(IPXE, root / SMALL)  # a copy: tftpd-hpa's chroot cuts symlinks
    else:
        (root / SMALL).write_bytes(os.urandom(72 * 1024))
    (root / LARGE).write_bytes(os.urandom(large_mib * 1024 * 1024))
    for path in root.iterdir():
        path.chmod(0o644)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--large-mib", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    for tool in ("curl", TFTPD):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")

    root = make_root(args.large_mib)
    try:
        with ours(root) as our_port, tftpd_hpa(root) as their_port:
            results = measure(
                {"ours": our_port, "tftpd_hpa": their_port}, root, args.clients, args.repeat
            )
        mine, theirs = results["ours"], results["tftpd_hpa"]
        small = (root / SMALL).stat().st_size
        large = (root / LARGE).stat().st_size
    finally:
        shutil.rmtree(root, ignore_errors=True)

    peer = "tftpd-hpa"
    figures = [
        Figure(
            f"(a) {args.clients} concurrent curl fetches of a {small} B file, wall time",
            "ms", 1000 * mine["concurrent_seconds"], 1000 * theirs["concurrent_seconds"], peer,
            higher_is_better=False,
        ),
        Figure(
            f"(a) {args.clients} concurrent curl fetches of a {small} B file",
            "files/s", mine["files_per_s"], theirs["files_per_s"], peer,
        ),
        Figure(
            f"(b) one curl fetch of a {large} B file, blksize {BLKSIZE}",
            "MB/s", mine["single_mb_per_s"], theirs["single_mb_per_s"], peer,
        ),
    ]  # fmt: skip
    report(figures, args.json)
    if mine["failures"] or theirs["failures"]:
        raise SystemExit(f"failed fetches: ours {mine['failures']}, {peer} {theirs['failures']}")


if __name__ == "__main__":
    main()

"""HTTP image serving: our boot service against nginx (sendfile on), same file, same run.

32 concurrent `curl` clients each fetch a 256 MiB file; the figure is the aggregate
throughput in MiB/s. Run as: .venv/bin/python bench/http_bench.py [--json]
With ``--file PATH`` the clients fetch that file instead (a built image's root.squashfs:
``--file /var/lib/provisioner/images/debian-bookworm/root.squashfs --clients 16``).
Needs Debian's nginx-light (or any nginx) and curl.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Figure, free_port, report, stop, wait_port

ROOT = Path(__file__).resolve().parents[1]

NGINX_CONF = """
user root;
worker_processes 2;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {work}/tmp;
    proxy_temp_path {work}/tmp;
    fastcgi_temp_path {work}/tmp;
    uwsgi_temp_path {work}/tmp;
    scgi_temp_path {work}/tmp;
    server {{
        listen 127.0.0.1:{port};
        location /images/ {{ alias {images}/; }}
    }}
}}
"""


def fetch_all(url: str, clients: int, size: int) -> float:
    """Start `clients` curls at once; return aggregate MiB/s (checks every byte count)."""
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download}", url],
            stdout=subprocess.PIPE,
        )
        for _ in range(clients)
    ]
    sizes = [int(p.communicate()[0] or 0) for p in procs]
    elapsed = time.monotonic() - started
    if any(s != size for s in sizes):
        raise SystemExit(f"short download from {url}: {sizes}")
    return clients * size / (1024 * 1024) / elapsed


def run_ours(work: Path, clients: int, size: int) -> float:
    port = free_port()
    state = work / "state"
    (state / "images" / "bench").mkdir(parents=True, exist_ok=True)
    os.link(work / "images" / "blob", state / "images" / "bench" / "blob")
    conf = work / "provisioner.toml"
    udp = [free_port(2) for _ in range(3)]
    conf.write_text(
        '[network]\ninterface = "lo"\naddress = "127.0.0.1/8"\nmode = "proxy"\n'
        f"[dhcp]\nport = {udp[0]}\npxe_port = {udp[1]}\n[tftp]\nport = {udp[2]}\n"
        f'[http]\nport = {port}\nbind = "127.0.0.1"\n[paths]\nstate_dir = "{state}"\n'
    )
    proc = subprocess.Popen(
        [
            str(ROOT / ".venv/bin/provisioner"),
            "--config",
            str(conf),
            "--log-level",
            "WARNING",
            "serve",
        ],
    )
    try:
        wait_port(port)
        return fetch_all(f"http://127.0.0.1:{port}/images/bench/blob", clients, size)
    finally:
        stop(proc)


def run_nginx(work: Path, clients: int, size: int) -> float:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    (work / "tmp").mkdir(exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work, port=port, images=work / "images"))
    proc = subprocess.Popen([nginx, "-c", str(conf), "-e", str(work / "nginx-error.log")])
    try:
        wait_port(port)
        return fetch_all(f"http://127.0.0.1:{port}/images/blob", clients, size)
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--file", help="serve this file (e.g. a root.squashfs) instead")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = args.mib * 1024 * 1024
    what = f"{args.mib} MiB"
    with tempfile.TemporaryDirectory(prefix="pv-httpbench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        (work / "images").mkdir()
        blob = work / "images" / "blob"
        if args.file:
            shutil.copyfile(args.file, blob)  # same filesystem as the hard link below
            size = blob.stat().st_size
            what = f"{Path(args.file).name} ({size / 2**20:.0f} MiB)"
        else:
            with open(blob, "wb") as fh:
                fh.write(os.urandom(size))
        ours = run_ours(work, args.clients, size)
        peer = run_nginx(work, args.clients, size)
    report(
        [Figure(f"HTTP {what} x {args.clients} clients", "MiB/s", ours, peer, "nginx")],
        args.json,
    )


if __name__ == "__main__":
    main()

"""Shared fixtures for tests that run `provisioner serve` as a real process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisioner.image.store import ImageStore
from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parents[2]


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on loopback.

    Each socket stays bound until all are picked: one free_port() after another may be
    handed the same port twice (a CI run once gave Ray's object manager and its agent one
    port, and Ray refused to start).
    """
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def need(*tools: str) -> None:
    """Skip without these tools (fail under CI=true: scripts/setup installs them)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        unavailable(f"needs {', '.join(missing)} (scripts/setup installs them)")


def need_root() -> None:
    if os.geteuid() != 0:
        unavailable("needs root (network namespaces, raw sockets)")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process this test started, by PID: TERM, then KILL."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


@dataclass
class Appliance:
    """`provisioner serve` running as a real process on a config we wrote."""

    config: Path
    state: Path
    http_port: int
    tftp_port: int
    dhcp_port: int
    pxe_port: int
    host: str
    log: Path
    prefix: Sequence[str] = ()
    proc: subprocess.Popen[bytes] | None = None
    console_port: int = 6666  # netconsole's UDP port ([console])

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def start(self, timeout: float = 20.0) -> None:
        argv = [
            *self.prefix,
            sys.executable,
            "-m",
            "provisioner.cli",
            "--config",
            str(self.config),
            "--log-level",
            "DEBUG",
            "serve",
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        probe = [*self.prefix, "curl", "-sf", "-o", "/dev/null", f"{self.base}/healthz"]
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"serve exited {self.proc.returncode}:\n{self.log.read_text()}"
                )
            if subprocess.run(probe, check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError(f"serve did not come up:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "provisioner.cli", "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            check=False,
        )

    @property
    def api_token(self) -> str:
        return (self.state / "api-token").read_text().strip()


def write_config(
    path: Path,
    *,
    interface: str,
    address: str,
    mode: str,
    state: Path,
    http_port: int,
    tftp_port: int = 69,
    dhcp_port: int = 67,
    pxe_port: int = 4011,
    dhcp_range: str = "",
    bind: str = "0.0.0.0",
    console_port: int = 6666,
) -> None:
    path.write_text(
        f'[network]\ninterface = "{interface}"\naddress = "{address}"\nmode = "{mode}"\n'
        f'[dhcp]\nport = {dhcp_port}\npxe_port = {pxe_port}\nrange = "{dhcp_range}"\n'
        f"[tftp]\nport = {tftp_port}\n"
        f'[http]\nport = {http_port}\nbind = "{bind}"\n'
        f'[paths]\nstate_dir = "{state}"\n'
        f"[console]\nport = {console_port}\n"
    )


def make_image(state: Path, name: str = "discovery", kernel_size: int = 256 * 1024) -> bytes:
    """A stand-in image (random bytes): these tests check transport, not booting."""
    kernel = os.urandom(kernel_size)
    files = {"vmlinuz": kernel, "initrd": os.urandom(4096)}
    ImageStore(state / "images").publish_files(name, files)
    return kernel


def loopback(folder: Path) -> Appliance:
    """A serve on 127.0.0.1 with high ports (DHCP bound to lo), its files in ``folder``;
    not started. Several may run side by side (each has its own ports)."""
    need_root()
    need("curl")
    state = folder / "state"
    folder.mkdir(parents=True, exist_ok=True)
    app = Appliance(
        config=folder / "provisioner.toml",
        state=state,
        http_port=free_port(),
        tftp_port=free_port(socket.SOCK_DGRAM),
        dhcp_port=free_port(socket.SOCK_DGRAM),
        pxe_port=free_port(socket.SOCK_DGRAM),
        host="127.0.0.1",
        log=folder / "serve.log",
        console_port=free_port(socket.SOCK_DGRAM),
    )
    write_config(
        app.config,
        interface="lo",
        address="127.0.0.1/8",
        mode="proxy",
        state=state,
        http_port=app.http_port,
        tftp_port=app.tftp_port,
        dhcp_port=app.dhcp_port,
        pxe_port=app.pxe_port,
        bind="127.0.0.1",
        console_port=app.console_port,
    )
    return app


@pytest.fixture
def loopback_appliance(tmp_path: Path) -> Iterator[Appliance]:
    """serve on 127.0.0.1 with high ports (DHCP bound to lo): HTTP and TFTP are real."""
    app = loopback(tmp_path)
    try:
        yield app
    finally:
        app.stop()

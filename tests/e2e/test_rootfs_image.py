"""The shared node image end to end: build it with mmdebstrap, boot it in QEMU over HTTP.

The build needs root, mmdebstrap, mksquashfs and the Debian mirror (the .debs are cached
under ``$PROVISIONER_CACHE/apt-archives``, default ``/var/cache/provisioner``: a cold
cache downloads ~126 MB). The VM (TCG, user-mode network) boots ``vmlinuz`` + ``initrd``
with ``boot=live fetch=http://10.0.2.2:PORT/root.squashfs``: live-boot in the image's
initramfs takes a DHCP lease from QEMU, fetches the squashfs from a server on 127.0.0.1,
boots systemd from it, and the agent's unit POSTs the inventory, ssh host keys included,
to the same server; sshd answers on a forwarded port.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from provisioner.image.discovery import default_cache
from provisioner.image.rootfs import Manifest, build_rootfs

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "images" / "debian-bookworm.toml"
MAC = "52:54:00:12:34:57"
BOOT_TIMEOUT_S = 600


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (mmdebstrap --mode=root)")


@dataclass(frozen=True)
class Built:
    image: Path
    manifest: Manifest
    seconds: float
    progress: tuple[str, ...]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    need_root()
    need("mmdebstrap", "mksquashfs", "dpkg-query", "qemu-system-x86_64")
    store = tmp_path_factory.mktemp("store")
    messages: list[str] = []
    started = time.monotonic()
    manifest = build_rootfs(RECIPE, store, default_cache(), messages.append)
    seconds = time.monotonic() - started
    print(f"build: {seconds:.1f} s, mmdebstrap {manifest.mmdebstrap_seconds} s")
    return Built(store / manifest.name, manifest, seconds, tuple(messages))


@pytest.mark.qemu
def test_build_publishes_the_image(built: Built) -> None:
    files = sorted(p.name for p in built.image.iterdir())
    assert files == ["initrd", "manifest.json", "root.squashfs", "vmlinuz"]
    manifest = built.manifest
    assert Manifest.from_json((built.image / "manifest.json").read_text()) == manifest
    for artifact in (manifest.vmlinuz, manifest.initrd, manifest.squashfs):
        assert (built.image / artifact.file).stat().st_size == artifact.size
    names = {line.split()[0] for line in manifest.packages}
    assert {"systemd", "openssh-server", "live-boot", "curl"} <= names
    assert f"linux-image-{manifest.kernel_release}" in names
    assert manifest.squashfs.size < manifest.root_bytes
    assert [p for p in built.progress if p.startswith("done:")]


# ------------------------------------------------------------ HTTP: files + POSTs


@dataclass
class Server:
    port: int = 0
    posts: list[tuple[str, dict[str, str], str]] = field(default_factory=list)
    gets: list[str] = field(default_factory=list)


@pytest.fixture
def server(built: Built) -> Iterator[Server]:
    state = Server()

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            state.gets.append(self.path)
            super().do_GET()

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode(errors="replace")
            state.posts.append((self.path, dict(self.headers), body))
            self.send_response(200)
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"ok\n")

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(built.image)))
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ssh_banner(port: int) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            return s.recv(256).decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.qemu
def test_image_boots_over_http_to_systemd_and_sshd(
    built: Built, server: Server, tmp_path: Path
) -> None:
    console = tmp_path / "console.log"
    ssh_port = free_port()
    token = secrets.token_hex(8)
    url = f"http://10.0.2.2:{server.port}"
    cmdline = (
        f"boot=live fetch={url}/root.squashfs console=ttyS0 "
        f"provisioner.url={url} provisioner.mac={MAC} provisioner.token={token}"
    )
    argv = [
        "qemu-system-x86_64",
        "-accel", "tcg",
        "-machine", "q35",
        "-m", "2048",
        "-nographic", "-no-reboot", "-monitor", "none",
        "-kernel", str(built.image / "vmlinuz"),
        "-initrd", str(built.image / "initrd"),
        "-append", cmdline,
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
        "-device", f"virtio-net-pci,netdev=n0,mac={MAC}",
        "-serial", f"file:{console}",
    ]  # fmt: skip
    started = time.monotonic()
    with (tmp_path / "qemu.log").open("wb") as qemu_log:
        vm = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=qemu_log)
    banner = ""
    try:
        while time.monotonic() - started < BOOT_TIMEOUT_S and vm.poll() is None:
            if server.posts and not banner:
                banner = ssh_banner(ssh_port)
            if server.posts and banner:
                break
            time.sleep(2)
        elapsed = time.monotonic() - started
    finally:
        vm.terminate()
        try:
            vm.wait(10)
        except subprocess.TimeoutExpired:
            vm.kill()
            vm.wait()
    log = console.read_text(errors="replace") if console.exists() else ""
    try:
        assert "/root.squashfs" in server.gets
        assert server.posts, f"no inventory POST within {elapsed:.0f} s"
        path, headers, body = server.posts[0]
        print(f"boot to POST and sshd banner: {elapsed:.1f} s")
        assert path == f"/api/v1/nodes/{MAC}/inventory"
        assert headers["Authorization"] == f"Bearer {token}"
        assert f"kernel={built.manifest.kernel_release}" in body
        assert "==> ssh <==" in body
        # The build host's name must not leak into the image (mmdebstrap copies it in).
        if socket.gethostname() != "localhost":
            assert f"hostname={socket.gethostname()}" not in body.splitlines()
        assert "key=ssh-ed25519 " in body
        assert banner.startswith("SSH-2.0-OpenSSH")
    except AssertionError:
        print(f"--- console ({time.monotonic() - started:.1f} s) ---\n{log[-20000:]}")
        raise

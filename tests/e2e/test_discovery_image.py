"""The discovery image end to end, and its agent under every shell it must run under.

The ``qemu`` tests build the image from Debian's packages (the .debs are cached under
``$PROVISIONER_CACHE`` or ``/var/cache/provisioner``: a cold cache downloads ~72 MB from
the Debian mirror), build it again to prove the initrd is byte-identical, then boot it
in QEMU (TCG, user-mode network) and receive the agent's POST on a loopback server.

The agent tests run ``images/agent/provisioner-agent`` against a captured-style sysfs and
procfs tree under dash, bash and busybox sh, and POST with curl and with busybox wget.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from provisioner.image.discovery import Manifest, build_discovery, default_cache
from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "images" / "discovery.toml"
AGENT = ROOT / "images" / "agent" / "provisioner-agent"
MAC = "52:54:00:12:34:56"
BOOT_TIMEOUT_S = 300


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        unavailable(f"needs {', '.join(missing)} (scripts/setup installs them)")


def need_root() -> None:
    if os.geteuid() != 0:
        unavailable("needs root (apt-get download into the package cache, QEMU)")


# ----------------------------------------------------------------- a tiny HTTP peer


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: str
    at: float


@dataclass
class Recorder:
    """A loopback HTTP server that records POSTs and answers ``status``."""

    port: int = 0
    status: int = 200
    posts: list[Post] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode()
            rec.posts.append(Post(self.path, dict(self.headers), body, time.monotonic()))
            reply = b"ok\n" if rec.status == 200 else b"refused\n"
            self.send_response(rec.status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def sections(report: str) -> dict[str, list[str]]:
    """``==> NAME <==`` headers -> {NAME: the lines that follow}."""
    out: dict[str, list[str]] = {}
    current: list[str] = []
    for line in report.splitlines():
        if line.startswith("==> ") and line.endswith(" <=="):
            current = out.setdefault(line[4:-4], [])
        else:
            current.append(line)
    return out


# ------------------------------------------------------------------- the image


@dataclass(frozen=True)
class Built:
    store: Path
    manifest: Manifest
    seconds: float
    progress: tuple[str, ...]


def build(store: Path) -> Built:
    messages: list[str] = []
    started = time.monotonic()
    manifest = build_discovery(RECIPE, store, default_cache(), messages.append)
    return Built(store, manifest, time.monotonic() - started, tuple(messages))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    need_root()
    need("qemu-system-x86_64", "apt-get", "apt-cache", "dpkg-deb")
    result = build(tmp_path_factory.mktemp("store"))
    print(f"first build: {result.seconds:.1f} s; " + "; ".join(result.progress))
    return result


@pytest.mark.root
@pytest.mark.mirror
def test_build_publishes_and_is_reproducible(built: Built, tmp_path: Path) -> None:
    image = built.store / "discovery"
    assert sorted(p.name for p in image.iterdir()) == ["initrd", "manifest.json", "vmlinuz"]
    assert Manifest.from_json((image / "manifest.json").read_text()) == built.manifest
    manifest = built.manifest
    assert manifest.kernel_package.startswith("linux-image-")
    assert manifest.kernel_release in manifest.kernel_package
    assert manifest.module_count > 20
    assert manifest.initrd.size == (image / "initrd").stat().st_size < 32 << 20
    assert [p for p in built.progress if p.startswith("done:")]

    again = build(tmp_path / "store")
    print(f"second build: {again.seconds:.1f} s")
    assert sum("from the cache" in p for p in again.progress) == 2
    assert (tmp_path / "store/discovery/initrd").read_bytes() == (image / "initrd").read_bytes()
    assert again.manifest.initrd == manifest.initrd
    assert again.manifest.vmlinuz == manifest.vmlinuz


@pytest.mark.root
@pytest.mark.mirror
@pytest.mark.qemu
def test_image_boots_and_posts_inventory(built: Built, recorder: Recorder, tmp_path: Path) -> None:
    image = built.store / "discovery"
    disk = tmp_path / "disk.img"
    with disk.open("wb") as f:
        f.truncate(64 << 20)
    console = tmp_path / "console.log"
    token = secrets.token_hex(8)
    cmdline = (
        f"console=ttyS0 provisioner.url=http://10.0.2.2:{recorder.port} "
        f"provisioner.mac={MAC} provisioner.token={token} "
        "provisioner.after=poweroff provisioner.onerror=poweroff"
    )
    argv = [
        "qemu-system-x86_64",
        "-accel", "tcg",
        "-machine", "q35",
        "-m", "512",
        "-nographic", "-no-reboot", "-monitor", "none",
        "-kernel", str(image / "vmlinuz"),
        "-initrd", str(image / "initrd"),
        "-append", cmdline,
        "-netdev", "user,id=n0",
        "-device", f"virtio-net-pci,netdev=n0,mac={MAC}",
        "-drive", f"file={disk},if=virtio,format=raw",
        "-serial", f"file:{console}",
    ]  # fmt: skip
    started = time.monotonic()
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=BOOT_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        print(console.read_text(errors="replace"))
        pytest.fail(f"the VM did not power off within {BOOT_TIMEOUT_S} s")
    elapsed = time.monotonic() - started
    log = console.read_text(errors="replace")
    try:
        assert done.returncode == 0, done.stderr.decode()
        assert "provisioner: inventory sent" in log
        assert len(recorder.posts) == 1
        post = recorder.posts[0]
        print(f"boot to POST: {post.at - started:.1f} s; VM powered off after {elapsed:.1f} s")
        assert post.path == f"/api/v1/nodes/{MAC}/inventory"
        assert post.headers["Authorization"] == f"Bearer {token}"
        assert post.headers["Content-Type"] == "text/plain; charset=utf-8"
        report = sections(post.body)
        assert report["agent"] == ["version=1"]
        assert "firmware=bios" in report["system"]
        assert "machine=x86_64" in report["system"]
        assert f"kernel={built.manifest.kernel_release}" in report["system"]
        assert any(line.startswith("processor") for line in report["file /proc/cpuinfo"])
        assert any(line.startswith("MemTotal:") for line in report["file /proc/meminfo"])
        assert "sys_vendor=QEMU" in report["dmi"]
        pci = [lines for name, lines in report.items() if name.startswith("pci ")]
        virtio = [set(lines) for lines in pci if "vendor=0x1af4" in lines]
        assert any({"device=0x1000", "device=0x1041"} & lines for lines in virtio)
        assert any({"device=0x1001", "device=0x1042"} & lines for lines in virtio)
        assert all("driver=virtio-pci" in lines for lines in virtio)
        nets = [set(lines) for name, lines in report.items() if name.startswith("net ")]
        assert any({f"address={MAC}", "driver=virtio_net", "operstate=up"} <= n for n in nets)
        assert "size=131072" in report["block vda"]
        assert "removable=0" in report["block vda"]
    except AssertionError:
        print(f"--- console ({elapsed:.1f} s) ---\n{log}")
        raise


# ------------------------------------------------------- the agent, on a fake tree


def make_tree(root: Path) -> None:
    """A small /proc and /sys like a VM's, with the awkward cases the agent must skip."""

    def write(rel: str, text: str) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def link(rel: str, target: str) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)

    write("proc/cmdline", "console=ttyS0 provisioner.mac=52-54-00-AA-BB-CC quiet\n")
    write("proc/cpuinfo", "processor\t: 0\nmodel name\t: Fake CPU @ 2.0GHz\n\n")
    write("proc/meminfo", "MemTotal:         468400 kB\n")
    write("sys/class/dmi/id/sys_vendor", "QEMU\n")
    write("sys/class/dmi/id/product_name", "Standard PC (Q35 + ICH9, 2009)\n")
    write("sys/class/dmi/id/uevent", "MODALIAS=dmi:bvnSeaBIOS:\nSECOND=line\n")
    (root / "sys/class/dmi/id/power").mkdir()
    link("sys/class/dmi/id/subsystem", "../../../nowhere")
    (root / "sys/firmware/efi").mkdir(parents=True)
    (root / "sys/bus/pci/drivers/virtio-pci").mkdir(parents=True)
    dev = "sys/devices/pci0000:00/0000:00:02.0"
    for key, value in [
        ("vendor", "0x1af4"),
        ("device", "0x1041"),
        ("subsystem_vendor", "0x1af4"),
        ("subsystem_device", "0x1100"),
        ("class", "0x020000"),
        ("numa_node", "-1"),
    ]:
        write(f"{dev}/{key}", value + "\n")
    link(f"{dev}/driver", "../../../bus/pci/drivers/virtio-pci")
    link("sys/bus/pci/devices/0000:00:02.0", "../../../devices/pci0000:00/0000:00:02.0")
    bridge = "sys/devices/pci0000:00/0000:00:00.0"
    write(f"{bridge}/vendor", "0x8086\n")
    write(f"{bridge}/device", "0x29c0\n")
    link("sys/bus/pci/devices/0000:00:00.0", "../../../devices/pci0000:00/0000:00:00.0")
    (root / "sys/bus/virtio/drivers/virtio_net").mkdir(parents=True)
    write("sys/class/net/lo/address", "00:00:00:00:00:00\n")
    write("sys/class/net/eth0/address", "52:54:00:aa:bb:cc\n")
    write("sys/class/net/eth0/operstate", "up\n")
    write("sys/class/net/eth0/mtu", "1500\n")
    link("sys/class/net/eth0/device/driver", "../../../../bus/virtio/drivers/virtio_net")
    write("sys/class/net/eth1/address", "52:54:00:aa:bb:cd\n")
    write("sys/class/net/eth1/speed", "1000\n")
    write("sys/class/net/eth1/operstate", "down\n")
    write("sys/class/net/eth1/mtu", "9000\n")
    write("sys/block/vda/size", "131072\n")
    write("sys/block/vda/removable", "0\n")
    write("sys/block/vda/queue/rotational", "1\n")
    write("sys/block/sda/size", "976773168\n")
    write("sys/block/sda/removable", "0\n")
    write("sys/block/sda/queue/rotational", "0\n")
    write("sys/block/sda/device/model", "Samsung SSD 870   \t\n")
    write("sys/block/sda/device/serial", "S5STNF0R123456  \n")  # SCSI/ATA: under device/
    write("sys/block/vda/serial", "lab-disk0\n")  # virtio: beside size
    # udev's links: two to sda, one to a partition of it (not sda's), one to vda
    write("dev/sda", "")
    write("dev/sda1", "")
    write("dev/vda", "")
    link("dev/disk/by-id/ata-Samsung_SSD_870_S5STNF0R123456", "../../sda")
    link("dev/disk/by-id/ata-Samsung_SSD_870_S5STNF0R123456-part1", "../../sda1")
    link("dev/disk/by-path/pci-0000:00:1f.2-ata-1", "../../sda")
    link("dev/disk/by-id/virtio-lab-disk0", "../../vda")
    write("sys/block/loop0/size", "0\n")
    write("sys/block/zram0/size", "0\n")


def expected_report() -> str:
    uname = os.uname()
    return f"""\
==> agent <==
version=1
==> system <==
firmware=uefi
kernel={uname.release}
machine={uname.machine}
hostname={uname.nodename}
==> file /proc/cpuinfo <==
processor\t: 0
model name\t: Fake CPU @ 2.0GHz

==> file /proc/meminfo <==
MemTotal:         468400 kB
==> dmi <==
product_name=Standard PC (Q35 + ICH9, 2009)
sys_vendor=QEMU
uevent=MODALIAS=dmi:bvnSeaBIOS:
==> pci 0000:00:00.0 <==
vendor=0x8086
device=0x29c0
driver=
==> pci 0000:00:02.0 <==
vendor=0x1af4
device=0x1041
subsystem_vendor=0x1af4
subsystem_device=0x1100
class=0x020000
numa_node=-1
driver=virtio-pci
==> net eth0 <==
address=52:54:00:aa:bb:cc
speed=
driver=virtio_net
operstate=up
mtu=1500
==> net eth1 <==
address=52:54:00:aa:bb:cd
speed=1000
driver=
operstate=down
mtu=9000
==> block sda <==
size=976773168
rotational=0
removable=0
model=Samsung SSD 870
serial=S5STNF0R123456
ids=/dev/disk/by-id/ata-Samsung_SSD_870_S5STNF0R123456 /dev/disk/by-path/pci-0000:00:1f.2-ata-1
==> block vda <==
size=131072
rotational=1
removable=0
model=
serial=lab-disk0
ids=/dev/disk/by-id/virtio-lab-disk0
"""


SHELLS = [["dash"], ["bash", "--posix"], ["busybox", "sh"]]


def shell_or_skip(shell: list[str]) -> list[str]:
    path = shutil.which(shell[0])
    if path is None:
        unavailable(f"needs {shell[0]} (scripts/setup installs busybox-static; dash, bash: Debian)")
    return [path, *shell[1:]]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    make_tree(tmp_path / "root")
    return tmp_path / "root"


def agent_env(tree: Path, **extra: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PROVISIONER_ROOT": str(tree)}
    env.update(extra)
    return env


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_agent_report_is_the_same_under_every_shell(shell: list[str], tree: Path) -> None:
    argv = [*shell_or_skip(shell), str(AGENT), "--print"]
    done = subprocess.run(argv, env=agent_env(tree), capture_output=True, text=True, check=True)
    assert done.stdout == expected_report()
    assert done.stderr == ""


@pytest.fixture
def busybox_path(tmp_path: Path) -> str:
    """A PATH with busybox applets only: the agent must make do with busybox wget."""
    busybox = shutil.which("busybox")
    if busybox is None:
        unavailable("needs busybox (scripts/setup installs busybox-static)")
    bindir = tmp_path / "bb"
    bindir.mkdir()
    for applet in ("sh", "cat", "mktemp", "rm", "sleep", "tr", "uname", "wc", "wget"):
        (bindir / applet).symlink_to(busybox)
    return str(bindir)


@pytest.mark.parametrize("client", ["busybox-wget", "curl"])
def test_agent_posts_the_report(
    client: str, tree: Path, recorder: Recorder, request: pytest.FixtureRequest
) -> None:
    if client == "curl":
        need("curl", "dash")
        argv = [shutil.which("dash") or "dash", str(AGENT)]
        path = os.environ.get("PATH", "/usr/bin:/bin")
    else:
        path = request.getfixturevalue("busybox_path")
        argv = [f"{path}/sh", str(AGENT)]
    env = agent_env(tree, PATH=path, PROVISIONER_URL=recorder.url + "/", PROVISIONER_TOKEN="s3cret")
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(recorder.posts) == 1
    post = recorder.posts[0]
    # the MAC comes from the (fake) kernel command line, normalized
    assert post.path == "/api/v1/nodes/52:54:00:aa:bb:cc/inventory"
    assert post.headers["Authorization"] == "Bearer s3cret"
    assert post.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert post.body == expected_report()
    assert "inventory accepted" in done.stderr


def test_agent_retries_then_fails(tree: Path, recorder: Recorder, busybox_path: str) -> None:
    recorder.status = 500
    env = agent_env(
        tree,
        PATH=busybox_path,
        PROVISIONER_URL=recorder.url,
        PROVISIONER_MAC="02:00:00:00:00:01",
        PROVISIONER_RETRIES="3",
        PROVISIONER_RETRY_PAUSE="0",
    )
    done = subprocess.run(
        [f"{busybox_path}/sh", str(AGENT)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert [p.path for p in recorder.posts] == ["/api/v1/nodes/02:00:00:00:00:01/inventory"] * 3
    assert "Authorization" not in recorder.posts[0].headers  # no token, no header
    assert "giving up" in done.stderr


def test_agent_without_url_exits_2(tree: Path) -> None:
    done = subprocess.run(
        ["sh", str(AGENT)], env=agent_env(tree), capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "provisioner.url" in done.stderr


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_agent_reports_ssh_host_keys_and_they_match_ssh_keygen(
    shell: list[str], tree: Path
) -> None:
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        unavailable("needs ssh-keygen (scripts/setup installs openssh-client)")
    (tree / "etc" / "ssh").mkdir(parents=True)
    key = tree / "etc" / "ssh" / "ssh_host_ed25519_key"
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    argv = [*shell_or_skip(shell), str(AGENT), "--print"]
    done = subprocess.run(argv, env=agent_env(tree), capture_output=True, text=True, check=True)
    assert "==> ssh <==\nkey=ssh-ed25519 " in done.stdout
    from provisioner.discovery.report import parse_report

    keys = parse_report(done.stdout).inventory.ssh_host_keys
    listed = subprocess.run(
        [keygen, "-lf", f"{key}.pub"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert [(k.type, k.fingerprint) for k in keys] == [("ssh-ed25519", listed[1])]

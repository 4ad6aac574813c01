"""`provisioner service install`, then systemd runs serve: start, reload, stop, for real.

A container booted with systemd (systemd-nspawn --boot, as the lab's container nodes;
provisioner/lab/containers.py) in a network namespace of its own (removed after the test),
with ``eth0`` at 10.83.0.1/24. Its root is this machine's own root, bound without its
sub-mounts and overlaid with a tmpfs (``--volatile=overlay``: nothing written inside
reaches the host): the project and its venv are there at the same paths, so no image
build and no mirror are needed. ``/etc/systemd/system`` is an empty tmpfs in it, so none
of the host's enabled services start there.

Inside: ``service install`` writes the unit (config and state paths with a space and
``%`` in them: the unit's quoting is exercised); ``systemctl start`` returns once serve
sent READY=1 and /healthz answers from that moment (serve binds DHCP 67/4011, TFTP 69 and
HTTP under the unit's hardening and capabilities); ``systemctl reload`` is logged in the
journal, without timestamps of serve's own, and the service stays active; ``systemctl
stop`` leaves it inactive with a clean exit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisioner.lab.containers import (
    SYSTEMD_BOOTED,
    Started,
    cgroup_dirs,
    cgroup_roots,
    in_cgroups_argv,
    scope_argv,
    stop_containers,
)
from tests.conftest import unavailable

pytestmark = [pytest.mark.root, pytest.mark.netns]  # nspawn in a namespace; no QEMU, no mirror

ROOT = Path(__file__).resolve().parents[2]
ADDRESS = "10.83.0.1"
HEALTHZ = f"http://{ADDRESS}:8080/healthz"
CONFIG = "/etc/provisioner/my config.toml"
STATE = "/srv/provisioner state%1"
BOOT_TIMEOUT = 60.0


CHECKOUT = "/opt/provisioner-checkout"  # this checkout, when the venv imports another one


@dataclass
class Container:
    netns: str
    leader: int  # the container's PID 1 (systemd), as the host sees it
    pythonpath: str | None  # CHECKOUT, or None: the venv imports this checkout already

    def python(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = ["env", f"PYTHONPATH={self.pythonpath}"] if self.pythonpath else []
        return self.run(*env, sys.executable, *args)

    def run(
        self, *argv: str, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the container: all its namespaces, its root and its cwd."""
        enter = ["nsenter", "-t", str(self.leader), "-a", "-r", "-w"]
        return subprocess.run(
            [*enter, *argv], input=input, capture_output=True, text=True, timeout=timeout,
            check=False,
        )  # fmt: skip

    def systemctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args)

    def show(self, prop: str) -> str:
        return self.systemctl("show", "-P", prop, "provisioner").stdout.strip()

    def healthz(self) -> bool:
        probe = ["ip", "netns", "exec", self.netns, "curl", "-sf", "--max-time", "5", HEALTHZ]
        return subprocess.run(probe, capture_output=True, check=False).returncode == 0

    def journal(self) -> str:
        return self.run("journalctl", "--no-pager", "-o", "cat", "-u", "provisioner").stdout


def _sh(argv: Sequence[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


def _leader(nspawn: int, deadline: float) -> int:
    while time.monotonic() < deadline:
        children = Path(f"/proc/{nspawn}/task/{nspawn}/children")
        try:
            pids = children.read_text().split()
        except OSError:
            pids = []
        for pid in pids:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                return int(pid)
        time.sleep(0.1)
    raise AssertionError("the container's systemd did not start")


def _other_checkout() -> bool:
    """Would the venv's interpreter, run from /, import another checkout than this one?
    (This one copied elsewhere, or a worktree: the service must run the code under test.)"""
    done = subprocess.run(
        [sys.executable, "-c", "import provisioner; print(provisioner.__file__)"],
        cwd="/", capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    found = Path(done.stdout.strip()).parent.parent if done.returncode == 0 else None
    return found != ROOT


@pytest.fixture
def container(tmp_path: Path) -> Iterator[Container]:
    if os.geteuid() != 0:
        unavailable("needs root (namespaces, mounts, systemd-nspawn)")
    for tool in ("systemd-nspawn", "nsenter", "ip", "curl"):
        if shutil.which(tool) is None:
            unavailable(f"needs {tool} (scripts/setup installs it)")
    if not Path("/usr/lib/systemd/systemd").exists():
        unavailable("needs systemd installed on this machine: the container boots its root")
    name = f"pvsvc{os.getpid() % 100000}"
    netns = Path("/run/netns") / name
    root = tmp_path / "root"
    root.mkdir()
    console = tmp_path / "console.log"
    started: Started | None = None
    other = _other_checkout()
    # Not under /tmp: the unit's PrivateTmp= would hide it from the service.
    checkout = [f"--bind-ro={ROOT}:{CHECKOUT}"] if other else []
    _sh(["ip", "netns", "add", name])
    try:
        for argv in (
            ["ip", "-n", name, "link", "set", "lo", "up"],
            ["ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
            ["ip", "-n", name, "addr", "add", f"{ADDRESS}/24", "dev", "eth0"],
            ["ip", "-n", name, "link", "set", "eth0", "up"],
            ["ip", "-n", name, "link", "set", "eth1", "up"],
            ["mount", "--bind", "/", str(root)],  # no sub-mounts: an unpopulated /dev
        ):
            _sh(argv)
        argv = [
            "nsenter", f"--net={netns}", "systemd-nspawn", "--boot", "--register=no",
            "--keep-unit", f"--network-namespace-path={netns}", "--capability=CAP_NET_ADMIN",
            "--volatile=overlay", "--link-journal=no", "--resolv-conf=off", "--timezone=off",
            "--console=read-only", f"--directory={root}", f"--bind-ro={ROOT}",
            "--tmpfs=/etc/systemd/system", f"--machine={name}", f"--hostname={name}",
            *checkout,
        ]  # fmt: skip
        cgroups: list[Path] = []
        if SYSTEMD_BOOTED.is_dir():
            argv = scope_argv(f"{name}.scope", argv)
        else:
            cgroups = cgroup_dirs(cgroup_roots(Path("/proc/self/mounts").read_text()), name)
            for path in cgroups:
                path.mkdir(exist_ok=True)
            argv = in_cgroups_argv(cgroups, argv)
        with open(console, "wb") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        started = Started(
            name, "", name, proc.pid, tuple(map(str, cgroups)), str(console), time.time()
        )
        deadline = time.monotonic() + BOOT_TIMEOUT
        box = Container(name, _leader(proc.pid, deadline), CHECKOUT if other else None)
        while (state := box.systemctl("is-system-running").stdout.strip()) not in (
            "running",
            "degraded",
        ):
            assert time.monotonic() < deadline, f"{state}:\n{console.read_text()[-3000:]}"
            time.sleep(0.2)
        print(f"container booted ({state}) in {time.time() - started.started_at:.1f} s")
        yield box
        print(box.journal()[-3000:])
    finally:
        if started is not None:
            stop_containers([started], lambda _: None)  # SIGTERM, netns and cgroups
            proc.wait(5)
        else:
            subprocess.run(["ip", "netns", "delete", name], check=False)
        subprocess.run(["umount", str(root)], check=False)


def test_systemd_starts_reloads_and_stops_serve(container: Container) -> None:
    box = container
    config = (
        '[network]\ninterface = "eth0"\naddress = "10.83.0.1/24"\nmode = "full"\n'
        '[dhcp]\nrange = "10.83.0.100-10.83.0.150"\n'
        f'[paths]\nstate_dir = "{STATE}"\n'
    )
    assert box.run("mkdir", "-p", "/etc/provisioner").returncode == 0
    assert box.run("tee", CONFIG, input=config).returncode == 0

    dry = box.python("-m", "provisioner.cli", "service", "install", "--config", CONFIG, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert box.run("test", "-e", "/etc/systemd/system/provisioner.service").returncode != 0
    done = box.python("-m", "provisioner.cli", "service", "install", "--config", CONFIG)
    assert done.returncode == 0, done.stderr
    assert "wrote /etc/systemd/system/provisioner.service" in done.stdout
    assert box.run("cat", "/etc/systemd/system/provisioner.service").stdout == dry.stdout
    if box.pythonpath:  # a copy of the checkout: the service runs its code
        dropin = "/etc/systemd/system/provisioner.service.d"
        box.run("mkdir", "-p", dropin)
        dropin_text = f'[Service]\nEnvironment="PYTHONPATH={box.pythonpath}"\n'
        box.run("tee", f"{dropin}/checkout.conf", input=dropin_text)
        box.systemctl("daemon-reload")
    assert box.show("LoadState") == "loaded"
    assert box.show("Type") == "notify"

    # start: activating until READY=1; once active, HTTP answers at once.
    started = time.monotonic()
    assert box.systemctl("start", "--no-block", "provisioner").returncode == 0
    seen: list[str] = []
    while (state := box.systemctl("is-active", "provisioner").stdout.strip()) != "active":
        assert state in ("activating", "inactive"), f"{state}:\n{box.journal()}"
        assert time.monotonic() - started < 60, box.journal()
        seen.append(state)
        time.sleep(0.02)
    assert box.healthz(), box.journal()
    print(f"active {time.monotonic() - started:.2f} s after start; before that: {set(seen)}")
    assert "activating" in seen
    main_pid = box.show("MainPID")
    assert box.show("StatusText").startswith("serving: full mode on eth0")
    argv = box.run("cat", f"/proc/{main_pid}/cmdline").stdout.split("\0")
    assert argv[-4:-1] == ["--config", CONFIG, "serve"]  # the quoted path, verbatim
    assert box.run("cat", f"{STATE}/serve.lock").stdout.strip() == main_pid
    caps = box.run("grep", "^CapEff", f"/proc/{main_pid}/status").stdout.split()[1]
    assert int(caps, 16) == (1 << 10) | (1 << 12) | (1 << 13)  # NET_BIND_SERVICE, ADMIN, RAW

    # reload: SIGHUP; RELOADING=1 then READY=1; the journal shows it; still active.
    assert box.systemctl("reload", "provisioner").returncode == 0
    deadline = time.monotonic() + 20
    while "profiles reloaded" not in box.journal():
        assert time.monotonic() < deadline, box.journal()
        time.sleep(0.1)
    journal = box.journal()
    assert "provisioner.serve: SIGHUP: reloading profiles" in journal
    assert box.systemctl("is-active", "provisioner").stdout.strip() == "active"
    assert box.show("MainPID") == main_pid and box.show("NRestarts") == "0"
    assert box.healthz()
    # journald stamps the lines: serve's own "2026-12-04 10:00:00,123 INFO" prefix is gone.
    serving = [ln for ln in journal.splitlines() if "serving: full mode" in ln]
    assert serving and serving[0].startswith("provisioner.serve: serving:"), journal
    # The "<6>" prefix became the entry's priority (info), not part of the message.
    assert "<6>" not in journal and "<7>" not in journal
    warnings = box.run("journalctl", "--no-pager", "-u", "provisioner", "-p", "warning",
                       "-o", "cat").stdout  # fmt: skip
    assert "serving: full mode" not in warnings

    # stop: STOPPING=1, a clean exit, inactive (not failed).
    assert box.systemctl("stop", "provisioner").returncode == 0
    assert box.systemctl("is-active", "provisioner").stdout.strip() == "inactive"
    assert box.show("Result") == "success"
    assert box.show("ExecMainStatus") == "0"
    assert "provisioner.serve: stopping" in box.journal()
    assert not box.healthz()

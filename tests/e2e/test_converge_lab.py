"""Day two end to end: a llama.cpp RPC cluster of three container nodes, power-cycled at
once (`lab reboot`, the lab's power button), comes back to `serving` with no command
typed: serve sees each member report from its image, waits for the others, re-runs the
cluster's post-install, restarts the head after its workers' RPC servers are active
again, and runs smoke. Then the same with each node's own disk (`lab up --disk`, `node
disk init`) as its cache: nothing fetched again. Then one worker alone; then one worker's
RPC server stopped (the
watchdog); then a rolling upgrade to a new image version (one member down at a time), a
broken version that stops the roll at its first node, and its rollback; then a paused
cluster is left as it comes.
Prints the time from power-on to serving, cold and warm (the day-two issue's figures;
bench/day_two_bench.py repeats them)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from provisioner.image.store import ImageStore
from provisioner.lab.containers import unpack_root
from tests.e2e.conftest import BuiltRootfs, llama_cluster, node_json, run_cli, ssh_node

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.mirror, pytest.mark.llama]

NODES = ("ctr1", "ctr2", "ctr3")


def converges_after(lab_dir: Path, since: float) -> list[dict[str, Any]]:
    """The head's converge events recorded after ``since``."""
    head = node_json(lab_dir, "ctr1")
    return [e for e in head["timeline"] if e["kind"] == "converge" and e["ts"] > since]


def wait_serving(lab_dir: Path, since: float, timeout: float = 900) -> float:
    """Until every member serves after a convergence that passed; seconds it took."""
    deadline = time.monotonic() + timeout
    states: dict[str, object] = {}
    while time.monotonic() < deadline:
        states = {n: node_json(lab_dir, n)["state"] for n in NODES}
        done = [e for e in converges_after(lab_dir, since) if e["detail"]["ok"]]
        if done and all(s == "serving" for s in states.values()):
            return time.time() - since
        failed = [e for e in converges_after(lab_dir, since) if not e["detail"]["ok"]]
        assert not failed, failed
        time.sleep(2)
    raise AssertionError(f"not serving after {timeout} s: {states}")


def served_since(lab_dir: Path, since: float) -> set[str]:
    """The areas (images, models, artifacts) of the files the appliance served the
    members after ``since`` (their timelines' http-file events)."""
    return {
        str(e["detail"]["area"])
        for name in NODES
        for e in node_json(lab_dir, name)["timeline"]
        if e["kind"] == "http-file" and e["ts"] > since
    }


def new_version(lab_dir: Path, change: str) -> str:
    """A new version of the lab's image: @1's kernel and initrd, its root changed by the
    shell command ``change`` (run in a copy of the unpacked root), squashed again and
    published in the lab's store. Its ref (name@version)."""
    store = ImageStore(lab_dir / "state" / "images")
    base = store.get("debian-bookworm@1")
    root = unpack_root(base.path, lab_dir / "rootfs", lambda line: None)  # the lab's, once
    work = lab_dir / "variant-root"
    shutil.rmtree(work, ignore_errors=True)
    subprocess.run(["cp", "-a", f"{root}/.", str(work)], check=True)
    subprocess.run(["sh", "-ec", change], cwd=work, check=True)
    staging = store.staging("debian-bookworm")
    for name in ("vmlinuz", "initrd"):
        os.link(base.path / name, staging / name)
    squashfs = staging / "root.squashfs"
    subprocess.run(["mksquashfs", str(work), str(squashfs), "-comp", "lz4", "-noappend",
                    "-quiet", "-no-progress", "-e", ".unpacked"], check=True)  # fmt: skip
    shutil.rmtree(work)
    manifest = dict(base.manifest)
    digest = hashlib.sha256(squashfs.read_bytes()).hexdigest()
    manifest["squashfs"] = {
        **manifest["squashfs"], "size": squashfs.stat().st_size, "sha256": digest
    }  # fmt: skip
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
    image, new = store.publish(staging, "debian-bookworm")
    assert new
    return image.ref


def wait_converged(
    lab_dir: Path, since: float, wanted: Callable[[dict[str, Any]], bool], timeout: float = 300
) -> dict[str, Any]:
    """The head's first convergence after ``since`` that passed its smoke and whose detail
    ``wanted`` accepts (its detail, with ``ts``)."""
    deadline = time.monotonic() + timeout
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        seen = converges_after(lab_dir, since)
        for e in seen:
            if e["detail"]["ok"] and e["detail"]["stage"] == "smoke" and wanted(e["detail"]):
                return {**e["detail"], "ts": e["ts"]}
        time.sleep(3)
    raise AssertionError(f"no such convergence in {timeout} s: {seen}")


def roll(config: str, status: int, *args: str) -> dict[str, Any]:
    """``image use ARGS --json`` (a roll); its report, once its exit status is ``status``."""
    done = run_cli("--config", config, "image", "use", *args, "--json")
    assert done.returncode == status, done.stderr[-6000:]
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def one_down_at_a_time(lab_dir: Path, since: float) -> int:
    """From the timelines: each member's roll reboot .. back window; no two overlap and
    each member's fresh report lies in its own. The most members down at once (1)."""
    windows = []
    for name in NODES:
        events = [e for e in node_json(lab_dir, name)["timeline"] if e["ts"] > since]
        rolls = {e["detail"]["step"]: e["ts"] for e in events if e["kind"] == "roll"}
        reports = [e["ts"] for e in events if e["kind"] == "inventory"]
        assert reports and all(rolls["reboot"] < t < rolls["back"] for t in reports), events
        windows.append((rolls["reboot"], rolls["back"]))
    windows.sort()
    assert all(a[1] < b[0] for a, b in itertools.pairwise(windows)), windows
    return max(sum(1 for lo, hi in windows if lo <= t <= hi) for t, _ in windows)


def test_a_cluster_power_cycled_at_once_comes_back_serving_by_itself(
    lab_dir: Path, rootfs_built: BuiltRootfs
) -> None:
    if shutil.which("systemd-nspawn") is None:
        pytest.fail("systemd-nspawn is missing (scripts/setup installs systemd-container)")
    state = lab_dir / "state"
    (state / "images").mkdir(parents=True)
    shutil.copytree(rootfs_built.image, state / "images" / rootfs_built.image.name)
    config = str(lab_dir / "provisioner.toml")
    up = run_cli(
        "lab", "up", "--dir", str(lab_dir), "--kind", "container", "--nodes", "3",
        "--image", "debian-bookworm", "--disk", "--timeout", "300",
    )  # fmt: skip
    assert up.returncode == 0, up.stderr[-6000:]
    llama_cluster(lab_dir, "smol", "ctr1", "ctr2,ctr3", "lost_worker=drop")
    t0 = time.monotonic()
    first = run_cli("--config", config, "postinstall", "run", "smol")  # typed on the host
    assert first.returncode == 0, first.stderr[-6000:]
    smoke = run_cli("--config", config, "smoke", "smol", "--json", "--no-restart")
    assert smoke.returncode == 0, smoke.stderr[-6000:]
    first_s = time.monotonic() - t0
    assert {n: node_json(lab_dir, n)["state"] for n in NODES} == dict.fromkeys(NODES, "serving")

    # 1. The rack is powered off and on: all three at once, no command typed after.
    since = time.time()
    reboot = run_cli("lab", "reboot", "--dir", str(lab_dir), *NODES, "--json")
    assert reboot.returncode == 0, reboot.stderr
    assert json.loads(reboot.stdout) == {"rebooted": list(NODES)}
    all_s = wait_serving(lab_dir, since)
    [done] = [e["detail"] for e in converges_after(lab_dir, since)]
    assert done["stage"] == "smoke" and set(done["back"].split(", ")) == set(NODES)
    assert done["recovered"].endswith(
        "ctr1: llama-server.service restarted after ctr2, ctr3 came back"
    )
    for name in NODES:  # a fresh root each: its report, then the convergence
        kinds = [e["kind"] for e in node_json(lab_dir, name)["timeline"] if e["ts"] > since]
        assert "approval" not in kinds  # its host key is the one it had
        assert kinds.index("inventory") < kinds.index("converge")
    cold_served = served_since(lab_dir, since)
    assert {"models", "artifacts"} <= cold_served, cold_served  # a bare root: all again

    # 1b. Each node's own disk as its cache (`node disk init`, a loop device here): only
    # with --yes; formatted, it keeps what was fetched. The rack power-cycled again: no
    # model and no runtime is fetched, and the cluster serves again (the warm figure).
    for name in NODES:
        disk = f"/dev/disk/by-id/lab-disk-{name}"
        init = ("--config", config, "node", "disk", "init", name, disk)
        unasked = run_cli(*init)
        assert unasked.returncode == 4 and "--yes" in unasked.stderr, unasked.stderr
        formatted = run_cli(*init, "--yes", "--json")
        assert formatted.returncode == 0, formatted.stderr[-3000:]
        assert json.loads(formatted.stdout)["action"] == "formatted"
        kept = ssh_node(lab_dir, name, "findmnt -no LABEL /var/lib/provisioner")
        assert kept.stdout.strip() == "prov-cache", kept
    since = time.time()
    assert run_cli("lab", "reboot", "--dir", str(lab_dir), *NODES).returncode == 0
    warm_s = wait_serving(lab_dir, since)
    warm_served = served_since(lab_dir, since)
    # (A container's root comes from the store on the host: no image is served to it.)
    assert not warm_served & {"models", "artifacts"}, warm_served

    # 2. One worker alone: the head is restarted after it, the others are left alone.
    since = time.time()
    assert run_cli("lab", "reboot", "--dir", str(lab_dir), "ctr2").returncode == 0
    worker_s = wait_serving(lab_dir, since)
    [done] = [e["detail"] for e in converges_after(lab_dir, since)]
    assert done["back"] == "ctr2"
    assert done["recovered"].endswith("ctr1: llama-server.service restarted after ctr2 came back")

    # 3. A worker's RPC server stopped, its node up (systemd's restart cannot hide that, and
    # no boot tells anyone): the watchdog finds it, post-install starts it again, the head
    # is restarted after it is back (in that order on the timelines), smoke passes.
    since = time.time()
    stopped = ssh_node(lab_dir, "ctr3", "systemctl stop llama-rpc.service")
    assert stopped.returncode == 0, stopped.stderr
    unit_s = wait_serving(lab_dir, since, timeout=300)
    [done] = [e["detail"] for e in converges_after(lab_dir, since)]
    assert done["back"] == "ctr3", done
    worker = [e for e in node_json(lab_dir, "ctr3")["timeline"] if e["ts"] > since]
    [watch] = [e for e in worker if e["kind"] == "watch"]
    assert watch["detail"]["units"] == "llama-rpc.service: inactive"
    [back] = [e for e in worker if e["kind"] == "recover"]
    assert back["detail"]["what"] == "llama-rpc.service active"
    head = [e for e in node_json(lab_dir, "ctr1")["timeline"] if e["ts"] > since]
    [restart] = [e for e in head if e["kind"] == "recover"]
    assert restart["detail"]["what"] == "llama-server.service restarted after ctr3 came back"
    assert watch["ts"] < back["ts"] < restart["ts"]

    # 4. Rolling upgrade to @2: one member at a time (workers, then the head), each back
    # serving before the next goes down; then a broken @3 stops at its first node, and
    # --rollback takes that node back to @2.
    profile = node_json(lab_dir, "ctr1")["profile"]
    v2 = new_version(lab_dir, "echo 2 > etc/provisioner-lab-variant")
    since = time.time()
    report = roll(config, 0, v2, "--profile", profile, "--rolling")
    assert [n["node"] for n in report["nodes"]] == ["ctr2", "ctr3", "ctr1"], report
    assert all(n["ok"] and n["how"] == "systemctl reboot over SSH" for n in report["nodes"])
    roll_s = [n["seconds"] for n in report["nodes"]]
    down = one_down_at_a_time(lab_dir, since)
    for name in NODES:
        assert node_json(lab_dir, name)["image"] == v2
        assert node_json(lab_dir, name)["state"] == "serving"
        assert ssh_node(lab_dir, name, "cat /etc/provisioner-lab-variant").stdout == "2\n"
    shown = run_cli("--config", config, "image", "show", v2, "--json")
    assert shown.returncode == 0 and set(json.loads(shown.stdout)["nodes"]) == set(NODES)

    v3 = new_version(lab_dir, "rm usr/sbin/nft")  # post-install's firewall step fails
    stopped = roll(config, 1, v3, "--profile", profile, "--rolling")
    [first] = stopped["nodes"]
    assert first["node"] == "ctr2" and not first["ok"], stopped
    assert stopped["left"] == ["ctr3", "ctr1"]
    assert node_json(lab_dir, "ctr2")["state"] == "failed"
    assert [node_json(lab_dir, n)["image"] for n in ("ctr3", "ctr1")] == [v2, v2]
    back = roll(config, 0, "--profile", profile, "--rollback")
    assert [(n["node"], n["ok"]) for n in back["nodes"]] == [("ctr2", True)]
    for name in NODES:
        assert node_json(lab_dir, name)["image"] == v2
        assert node_json(lab_dir, name)["state"] == "serving"
    assert run_cli("--config", config, "smoke", "smol", "--no-restart").returncode == 0

    # 5. A worker that does not come back (powered off), with lost_worker=drop: the
    # watchdog finds it gone, the head is restarted with the other worker and serves; when
    # it is powered on again, the head takes it back.
    rpc = {n: f"{node_json(lab_dir, n)['ip']}:50052" for n in ("ctr2", "ctr3")}
    since = time.time()
    ssh_node(lab_dir, "ctr3", "systemctl --no-block poweroff")
    without = wait_converged(lab_dir, since, lambda d: d["without"] == "ctr3", timeout=600)
    lost_s = without["ts"] - since
    unit = ssh_node(lab_dir, "ctr1", "systemctl cat llama-server.service").stdout
    assert f"--rpc {rpc['ctr2']}" in unit and rpc["ctr3"] not in unit, unit
    since = time.time()
    assert run_cli("lab", "reboot", "--dir", str(lab_dir), "ctr3").returncode == 0
    wait_converged(lab_dir, since, lambda d: "ctr3" in d["back"] and not d["without"])
    returned_s = time.time() - since
    unit = ssh_node(lab_dir, "ctr1", "systemctl cat llama-server.service").stdout
    assert rpc["ctr2"] in unit and rpc["ctr3"] in unit, unit
    assert {n: node_json(lab_dir, n)["state"] for n in NODES} == dict.fromkeys(NODES, "serving")

    # 6. Paused: a member back from a reboot is left as it comes.
    assert run_cli("--config", config, "cluster", "pause", "smol").returncode == 0
    since = time.time()
    assert run_cli("lab", "reboot", "--dir", str(lab_dir), "ctr3").returncode == 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        after = [e["kind"] for e in node_json(lab_dir, "ctr3")["timeline"] if e["ts"] > since]
        if "inventory" in after:
            break
        time.sleep(2)
    time.sleep(25)  # longer than the convergence's settle time
    assert converges_after(lab_dir, since) == []
    assert node_json(lab_dir, "ctr3")["state"] == "enrolled"
    status = run_cli("--config", config, "cluster", "status", "smol")
    assert "converge at boot: paused" in status.stdout
    print(
        f"day two, 3-node llama.cpp RPC cluster in containers: first post-install + smoke "
        f"{first_s:.1f} s; power-on to serving after all three rebooted: cold (no disk "
        f"cache, fetched {sorted(cold_served)}) {all_s:.1f} s, warm (cache disks, fetched "
        f"{sorted(warm_served)}) {warm_s:.1f} s; after one worker {worker_s:.1f} s (warm); "
        f"a worker's RPC server stopped to serving again {unit_s:.1f} s (watchdog every 30 s); "
        f"rolling upgrade @1 -> @2, reboot to serving per member (ctr2, ctr3, ctr1) "
        f"{', '.join(f'{s:.1f}' for s in roll_s)} s, at most {down} member down at a time; "
        f"a worker powered off to serving without it {lost_s:.1f} s (lost_worker=drop), "
        f"powered on to serving with it {returned_s:.1f} s"
    )

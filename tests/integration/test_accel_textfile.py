"""The accelerator exporter's file, read by Debian's prometheus-node-exporter through its
textfile collector, as on a node: the script (run by this machine's python3, as the
node's would) writes accel.prom; the node exporter serves its series with no
``node_textfile_scrape_error``; promtool accepts the text. Where no accelerator is found,
nothing is written, a stale file is removed and the script exits 0.

No GPU here: the sysfs tree is a folder laid out as /sys/class/drm/card1/device of an
amdgpu card (one number per file, as the kernel writes them). nvidia-smi and xpu-smi
are not on this machine's PATH, so those sources are skipped as on a node without them.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.integration.conftest import free_port, need, stop_process

SCRIPT = Path(__file__).resolve().parents[2] / "images" / "agent" / "provisioner-accel-exporter"


def amdgpu_sysfs(root: Path) -> None:
    device = root / "class" / "drm" / "card1" / "device"
    (device / "hwmon" / "hwmon3").mkdir(parents=True)
    for name, value in {
        "vendor": "0x1002", "device": "0x1586", "gpu_busy_percent": "7",
        "mem_info_vram_used": "536870912", "mem_info_vram_total": "17179869184",
        "uevent": "DRIVER=amdgpu\nPCI_SLOT_NAME=0000:c5:00.0",
        "hwmon/hwmon3/temp1_input": "45000", "hwmon/hwmon3/power1_average": "23000000",
    }.items():  # fmt: skip
        (device / name).write_text(value + "\n")
    (root / "class" / "drm" / "renderD128").mkdir()  # not a card: skipped


def exporter(sysfs: Path, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "ACCEL_EXPORTER_SYSFS": str(sysfs),
           "ACCEL_EXPORTER_DIR": str(folder)}  # fmt: skip
    return subprocess.run(
        ["/usr/bin/python3", str(SCRIPT), *args],
        capture_output=True, text=True, timeout=30, check=False, env=env,
    )  # fmt: skip


def test_node_exporter_serves_the_accelerator_file(tmp_path: Path) -> None:
    need("prometheus-node-exporter")
    need("promtool")
    sysfs, folder = tmp_path / "sys", tmp_path / "textfile"
    amdgpu_sysfs(sysfs)
    folder.mkdir()
    wrote = exporter(sysfs, folder)
    assert wrote.returncode == 0, wrote.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["accel.prom"]  # no temporary left
    text = (folder / "accel.prom").read_text()
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=30, check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr

    port = free_port()
    proc = subprocess.Popen(
        ["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{port}",
         "--collector.disable-defaults", "--collector.textfile",
         f"--collector.textfile.directory={folder}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
                break
            except OSError:
                assert time.monotonic() < deadline, "the node exporter did not answer"
                time.sleep(0.2)
    finally:
        stop_process(proc)
    lines = text.splitlines()
    where = 'bus="0000:c5:00.0",gpu="1",source="drm"'  # the exporter sorts labels
    assert f"accel_utilization_ratio{{{where}}} 0.07" in lines
    assert f"accel_memory_total_bytes{{{where}}} 1.7179869184e+10" in lines
    assert f"accel_temperature_celsius{{{where}}} 45" in lines
    assert f"accel_power_watts{{{where}}} 23" in lines
    assert any(ln.startswith("accel_info{") and 'vendor="amd"' in ln for ln in lines)
    assert "node_textfile_scrape_error 0" in lines


def test_without_an_accelerator_nothing_is_written_and_a_stale_file_goes(tmp_path: Path) -> None:
    sysfs, folder = tmp_path / "sys", tmp_path / "textfile"
    (sysfs / "class").mkdir(parents=True)  # no drm at all: a CPU-only node, a container
    folder.mkdir()
    (folder / "accel.prom").write_text("accel_info 1\n")  # from before a GPU was pulled
    done = exporter(sysfs, folder)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert list(folder.iterdir()) == []
    printed = exporter(sysfs, folder, "--print")
    assert (printed.returncode, printed.stdout) == (0, "")
    assert not os.listdir(folder)

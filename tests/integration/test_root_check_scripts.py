"""The node side of the root check, as the images run it: the initramfs script under
busybox (its own wget tells the control node of a mismatch) and the agent under dash and
busybox (the X-Provisioner-Root header of its report). A small HTTP server on loopback
records what they send; no machine is stopped (PROVISIONER_ROOT makes the initramfs
script exit instead of powering off)."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "images" / "initramfs" / "provisioner-root-check"
AGENT = ROOT / "images" / "agent" / "provisioner-agent"
MAC = "52:54:00:aa:bb:07"
TOKEN = "tok-123"
SQUASHFS = b"hsqs" + bytes(range(256)) * 64


@dataclass
class Recorder:
    base: str
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            seen.append(("POST", self.path, dict(self.headers.items()), body))
            answer = json.dumps({"mac": MAC, "state": "enrolled", "next": "stay"}).encode()
            self.send_response(202)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Recorder(f"http://127.0.0.1:{server.server_address[1]}", seen)
    finally:
        server.shutdown()
        server.server_close()


def shell(name: str) -> list[str]:
    if shutil.which(name) is None:
        pytest.fail(f"{name} is missing (scripts/setup installs it)")
    return ["busybox", "sh"] if name == "busybox" else [name]


def booted(tmp_path: Path, base: str, want: str, *, fetched: bool = True) -> Path:
    """A fake root: /proc/cmdline of an image boot and the squashfs live-boot fetched."""
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    words = [
        "boot=live", f"fetch={base}/images/debian-bookworm@1/root.squashfs",
        f"provisioner.url={base}", f"provisioner.mac={MAC}", f"provisioner.token={TOKEN}",
        f"provisioner.root_sha256={want}",
    ]  # fmt: skip
    (root / "proc" / "cmdline").write_text(" ".join(words) + "\n")
    if fetched:
        live = root / "run" / "live" / "medium" / "live"
        live.mkdir(parents=True)
        (live / "root.squashfs").write_bytes(SQUASHFS)
    return root


def busybox_path(tmp_path: Path) -> str:
    """A PATH of busybox's applets only, as in an initramfs (wget, no curl)."""
    tools = tmp_path / "initramfs-bin"
    if not tools.exists():
        tools.mkdir()
        busybox = shutil.which("busybox")
        assert busybox is not None
        listed = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
        for applet in listed.stdout.split():
            (tools / applet).symlink_to(busybox)
    return str(tools)


def run_check(root: Path, path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*shell("busybox"), str(CHECK)],
        env={"PATH": path, "PROVISIONER_ROOT": str(root)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_the_published_root_passes_and_is_left_for_the_agent(
    recorder: Recorder, tmp_path: Path
) -> None:
    want = hashlib.sha256(SQUASHFS).hexdigest()
    root = booted(tmp_path, recorder.base, want)
    done = run_check(root, busybox_path(tmp_path))
    assert done.returncode == 0, done.stderr
    assert (root / "run" / "provisioner" / "root.sha256").read_text() == f"{want} initramfs\n"
    assert recorder.requests == []


@pytest.mark.parametrize("fetched", [True, False])
def test_another_root_is_reported_with_the_boots_token_and_stops(
    recorder: Recorder, tmp_path: Path, fetched: bool
) -> None:
    want = "0" * 64
    root = booted(tmp_path, recorder.base, want, fetched=fetched)
    done = run_check(root, busybox_path(tmp_path))
    assert done.returncode == 1
    assert "not booting it" in done.stdout + done.stderr
    assert not (root / "run" / "provisioner" / "root.sha256").exists()
    [(method, path, headers, body)] = recorder.requests
    assert (method, path) == ("POST", f"/api/v1/nodes/{MAC}/integrity")
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    sent = json.loads(body)
    got = hashlib.sha256(SQUASHFS).hexdigest() if fetched else "missing"
    assert sent == {
        "file": "root.squashfs",
        "sha256": got,
        "expected": want,
        "checked": "initramfs",
    }


def test_a_boot_without_a_digest_is_not_checked(recorder: Recorder, tmp_path: Path) -> None:
    root = booted(tmp_path, recorder.base, "x")
    cmdline = root / "proc" / "cmdline"
    cmdline.write_text(cmdline.read_text().replace("provisioner.root_sha256=x", ""))
    done = run_check(root, busybox_path(tmp_path))
    assert done.returncode == 0 and recorder.requests == []


@pytest.mark.parametrize("sh", ["dash", "busybox"])
@pytest.mark.parametrize("source", ["initramfs", "agent", "none"])
def test_the_agent_sends_the_root_it_runs(
    recorder: Recorder, tmp_path: Path, sh: str, source: str
) -> None:
    digest = hashlib.sha256(SQUASHFS).hexdigest()
    root = booted(tmp_path, recorder.base, digest, fetched=source != "none")
    if source == "initramfs":
        (root / "run" / "provisioner").mkdir(parents=True)
        (root / "run" / "provisioner" / "root.sha256").write_text(f"{digest} initramfs\n")
        # The initramfs' word is taken as is: the agent does not hash the file again.
        (root / "run" / "live" / "medium" / "live" / "root.squashfs").write_bytes(b"other")
    env = {
        # busybox: as in the discovery initramfs, no curl (busybox's wget posts).
        "PATH": busybox_path(tmp_path) if sh == "busybox" else "/usr/bin:/bin",
        "PROVISIONER_ROOT": str(root),
        "PROVISIONER_RETRIES": "1",
    }
    done = subprocess.run(
        [*shell(sh), str(AGENT)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    [(_, path, headers, _)] = recorder.requests
    assert path == f"/api/v1/nodes/{MAC}/inventory"
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    if source == "none":
        assert "X-Provisioner-Root" not in headers
    else:
        assert headers["X-Provisioner-Root"] == f"sha256={digest}; checked={source}"

"""`provisioner serve` as a real process on loopback, driven by curl (HTTP and TFTP)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import Appliance, make_image

pytestmark = pytest.mark.root  # the loopback appliance (fast tier: no namespaces)

MAC = "52:54:00:10:20:30"
# No DHCP on loopback: the scripts are asked for on the node's behalf, from the appliance
# itself (routes_boot: only loopback or the appliance's own address may).
BEHALF = ("-H", "X-Provisioner-On-Behalf: test")


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-s", *args], capture_output=True, check=False, timeout=60)


def test_boot_script_images_ranges_and_keepalive(
    loopback_appliance: Appliance, tmp_path: Path
) -> None:
    app = loopback_appliance
    kernel = make_image(app.state)
    app.start()
    script = curl(*BEHALF, f"{app.base}/boot/{MAC}.ipxe").stdout.decode()
    assert script.startswith("#!ipxe") and f"/images/discovery@1/vmlinuz?mac={MAC}" in script

    full = curl(
        f"{app.base}/images/discovery/vmlinuz?mac={MAC}", "-D", "-", "-o", str(tmp_path / "k")
    )
    headers = full.stdout.decode().lower()
    assert "200 ok" in headers.splitlines()[0]
    assert f"content-length: {len(kernel)}" in headers
    assert "transfer-encoding" not in headers
    assert (tmp_path / "k").read_bytes() == kernel

    part = curl(
        f"{app.base}/images/discovery/vmlinuz?mac={MAC}",  # no address yet (proxy mode)
        "-r",
        "1000-1999",
        "-D",
        str(tmp_path / "h"),
        "-o",
        str(tmp_path / "p"),
    )
    assert part.returncode == 0
    assert " 206 " in (tmp_path / "h").read_text().splitlines()[0]
    assert (tmp_path / "p").read_bytes() == kernel[1000:2000]

    # One connection: a file (sendfile path), then an API call (handed to the app), as
    # iPXE's connection pool does. curl reports how many connections it opened.
    both = curl(
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-w",
        "%{num_connects}\n",
        f"{app.base}/images/discovery/initrd",
        "-H",
        f"Authorization: Bearer {app.api_token}",
        f"{app.base}/api/v1/nodes",
    )
    assert both.stdout.decode().split() == ["1", "0"]

    head = curl("-I", f"{app.base}/images/discovery/vmlinuz").stdout.decode().lower()
    assert f"content-length: {len(kernel)}" in head
    assert (
        curl("-o", "/dev/null", "-w", "%{http_code}", f"{app.base}/images/../api-token").stdout
        == b"404"
    )
    assert (
        curl(
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--path-as-is",
            f"{app.base}/images/../api-token",
        ).stdout
        == b"404"
    )
    assert (
        curl(
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-r",
            "999999999-",
            f"{app.base}/images/discovery/vmlinuz",
        ).stdout
        == b"416"
    )

    shown = json.loads(app.cli("node", "show", MAC, "--json").stdout)
    files = [e["detail"]["file"] for e in shown["timeline"] if e["kind"] == "http-file"]
    assert files[:2] == ["discovery/vmlinuz", "discovery/vmlinuz"]
    assert shown["timeline"][0]["kind"] == "script"


def test_api_writes_need_a_token(loopback_appliance: Appliance) -> None:
    app = loopback_appliance
    app.start()
    curl(*BEHALF, f"{app.base}/boot/{MAC}.ipxe")
    url = f"{app.base}/api/v1/nodes/{MAC}"
    refused = curl(
        "-X",
        "PATCH",
        "-H",
        "Content-Type: application/json",
        "-d",
        '{"hostname": "node0"}',
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        url,
    )
    assert refused.stdout == b"401"
    token = ("-H", f"Authorization: Bearer {app.api_token}")  # reads need it too now
    assert curl("-o", "/dev/null", "-w", "%{http_code}", url).stdout == b"401"
    assert json.loads(curl(*token, url).stdout)["hostname"] is None
    ok = curl(
        "-X",
        "PATCH",
        "-H",
        "Content-Type: application/json",
        "-H",
        f"Authorization: Bearer {app.api_token}",
        "-d",
        '{"hostname": "node0"}',
        url,
    )
    assert json.loads(ok.stdout)["hostname"] == "node0"
    listed = json.loads(app.cli("node", "list", "--json").stdout)
    assert [(n["mac"], n["hostname"], n["state"]) for n in listed] == [(MAC, "node0", "new")]
    assert set(listed[0]) >= {"mac", "hostname", "state", "profile", "ip", "firmware"}


def test_tftp_serves_ipxe_and_refuses_traversal(
    loopback_appliance: Appliance, tmp_path: Path
) -> None:
    app = loopback_appliance
    app.start()
    undionly = Path("/usr/lib/ipxe/undionly.kpxe")
    if not undionly.exists():
        pytest.skip("Debian's ipxe package is not installed")
    got = curl(
        f"tftp://127.0.0.1:{app.tftp_port}/undionly.kpxe",
        "--tftp-blksize",
        "1468",
        "-o",
        str(tmp_path / "u"),
    )
    assert got.returncode == 0
    assert (tmp_path / "u").read_bytes() == undionly.read_bytes()
    bad = curl(
        f"tftp://127.0.0.1:{app.tftp_port}/../registry.sqlite3",
        "--path-as-is",
        "-o",
        str(tmp_path / "r"),
    )
    assert bad.returncode != 0
    metrics = curl(f"{app.base}/metrics").stdout.decode()
    assert re.search(r'provisioner_nodes\{state="new"\} 0', metrics)


def test_garbage_on_the_dhcp_port_does_not_stop_serving(loopback_appliance: Appliance) -> None:
    app = loopback_appliance
    app.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for junk in (b"", b"\x01", b"\x00" * 300, b"\x01\x01\x06\x00" + b"\xff" * 400):
            s.sendto(junk, ("127.0.0.1", app.dhcp_port))
    assert curl("-sf", f"{app.base}/healthz").returncode == 0
    metrics = curl(f"{app.base}/metrics").stdout.decode()
    dropped = re.search(r'provisioner_dhcp_dropped_total\{reason="malformed"\} (\d+)', metrics)
    assert dropped is not None and int(dropped.group(1)) >= 3


def test_bad_config_is_refused_at_start(tmp_path: Path) -> None:
    conf = tmp_path / "p.toml"
    conf.write_text('[network]\ninterface = "lo"\naddress = "127.0.0.1/8"\nmode = "fast"\n')
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "provisioner.cli", "--config", str(conf), "serve"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert run.returncode == 1
    assert "network.mode = 'fast'" in run.stderr and "proxy" in run.stderr


def test_profile_reload_through_the_running_serve(
    loopback_appliance: Appliance, tmp_path: Path
) -> None:
    import shutil

    from provisioner.config import DEFAULT_HWPROFILES

    app = loopback_appliance
    profiles = tmp_path / "hwprofiles"
    shutil.copytree(DEFAULT_HWPROFILES, profiles)
    with open(app.config, "a") as fh:
        fh.write(f'[cluster]\nprofiles = "{profiles}"\n')
    app.start()
    ok = app.cli("profile", "reload", "--json")
    assert ok.returncode == 0, ok.stderr
    assert (
        json.loads(ok.stdout)["profiles"] == len(list(profiles.glob("*.yaml"))) - 2
    )  # the two tables
    (profiles / "zz-bad.yaml").write_text("name: bad\nversion: one\n")
    refused = app.cli("profile", "reload")
    assert refused.returncode == 1
    assert "zz-bad.yaml:" in refused.stderr and "last good set" in refused.stderr
    assert curl("-sf", f"{app.base}/healthz").returncode == 0  # serving goes on


AGENT = Path(__file__).resolve().parents[2] / "images" / "agent" / "provisioner-agent"


@pytest.mark.parametrize("shell", ["dash", "busybox"])
def test_the_agent_installs_the_control_nodes_key_then_reports(
    loopback_appliance: Appliance, tmp_path: Path, shell: str
) -> None:
    """The real agent script, under the shells the images run it with, against serve."""
    argv = ["busybox", "sh"] if shell == "busybox" else ["dash"]
    if subprocess.run(["sh", "-c", f"command -v {argv[0]}"], capture_output=True).returncode:
        pytest.fail(f"{argv[0]} is missing (scripts/setup installs it)")
    app = loopback_appliance
    make_image(app.state)
    app.start()
    public = (app.state / "ssh" / "id_ed25519.pub").read_text()  # made at first start
    assert public.startswith("ssh-ed25519 ")
    script = curl(*BEHALF, f"{app.base}/boot/{MAC}.ipxe").stdout.decode()
    token = re.search(r"provisioner\.token=(\S+)", script)
    assert token is not None
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "PROVISIONER_URL": app.base,
        "PROVISIONER_MAC": MAC.upper(),
        "PROVISIONER_TOKEN": token.group(1),
        "PROVISIONER_RETRIES": "1",
    }
    fake_root = tmp_path / "root-fs"
    keys = subprocess.run(
        [*argv, str(AGENT), "--keys"],
        env={**env, "PROVISIONER_ROOT": str(fake_root)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert keys.returncode == 0, keys.stderr
    installed = fake_root / "root" / ".ssh" / "authorized_keys"
    assert installed.read_text() == public
    assert installed.stat().st_mode & 0o777 == 0o600
    assert (installed.parent.stat().st_mode & 0o777) == 0o700
    # The node's own host key, kept by the control node, in place before sshd starts.
    host_key = fake_root / "etc" / "ssh" / "ssh_host_ed25519_key"
    assert host_key.stat().st_mode & 0o777 == 0o600
    issued = app.state / "hostkeys" / MAC.replace(":", "") / "ssh_host_ed25519_key.pub"
    assert (host_key.parent / "ssh_host_ed25519_key.pub").read_text().split()[:2] == (
        issued.read_text().split()[:2]
    )

    report = subprocess.run(
        [*argv, str(AGENT)], env=env, capture_output=True, text=True, timeout=120
    )
    assert report.returncode == 0, report.stderr
    shown = json.loads(app.cli("node", "show", MAC, "--json").stdout)
    kinds = [e["kind"] for e in shown["timeline"]]
    assert kinds.index("keys") < kinds.index("inventory")
    assert shown["state"] in ("matched", "unmatched")

    # A stale token (the next boot's script made a new one) gets no key.
    curl(*BEHALF, f"{app.base}/boot/{MAC}.ipxe")
    installed.unlink()
    stale = subprocess.run(
        [*argv, str(AGENT), "--keys"],
        env={**env, "PROVISIONER_ROOT": str(fake_root), "PROVISIONER_RETRY_PAUSE": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert stale.returncode != 0 and not installed.exists()
    assert "giving up" in stale.stderr

"""Each node's SSH host key, kept by the control node: made once, the same at every boot,
fetched with the boot's token, and the one post-install pins."""

from __future__ import annotations

import subprocess
from pathlib import Path

from provisioner.clusters.site import Site as ClusterSite
from provisioner.hostkeys import (
    ensure_host_key,
    forget_host_key,
    issued_fingerprint,
    issued_public_key,
    key_dir,
)
from provisioner.records import EventKind
from provisioner.states import NodeEvent
from tests.unit.test_boot_tokens import MAC, NODE, OTHER, Site


def test_a_host_key_is_made_once_per_node_and_kept_private(tmp_path: Path) -> None:
    assert issued_public_key(tmp_path, MAC) is None and issued_fingerprint(tmp_path, MAC) is None
    first = ensure_host_key(tmp_path, MAC, "node0")
    again = ensure_host_key(tmp_path, MAC, "node0")
    assert first == again
    assert first.private_path.parent == key_dir(tmp_path, MAC)
    assert key_dir(tmp_path, MAC).name == MAC.replace(":", "")
    assert first.private_path.stat().st_mode & 0o777 == 0o600
    assert key_dir(tmp_path, MAC).stat().st_mode & 0o777 == 0o700
    assert first.public_line.startswith("ssh-ed25519 ") and first.public_line.endswith(
        " root@node0"
    )
    assert issued_public_key(tmp_path, MAC) == first.public_line
    assert issued_fingerprint(tmp_path, MAC) == first.fingerprint
    other = ensure_host_key(tmp_path, "52:54:00:aa:bb:99", None)
    assert other.public_line != first.public_line
    # OpenSSH reads it and derives the same public key.
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(first.private_path)], capture_output=True, text=True
    )
    assert derived.returncode == 0, derived.stderr
    assert derived.stdout.split()[:2] == first.public_line.split()[:2]
    forget_host_key(tmp_path, MAC)
    assert issued_public_key(tmp_path, MAC) is None


def host_key(site: Site, address: str, token: str | None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = site.client(address).get(f"/api/v1/nodes/{MAC}/host_key", headers=headers)
    return r.status_code, r.text


def test_the_image_fetches_the_same_host_key_at_every_boot_with_its_token(tmp_path: Path) -> None:
    from provisioner.config import Mode

    site = Site(tmp_path, Mode.FULL)
    site.lease()
    _, token = site.script(NODE)
    assert host_key(site, NODE, None)[0] == 401
    assert host_key(site, NODE, "forged")[0] == 401
    assert host_key(site, OTHER, token)[0] == 401  # bound to the lease's address
    status, first = host_key(site, NODE, token)
    assert status == 200 and first.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    _, token = site.script(NODE)  # the next boot
    status, again = host_key(site, NODE, token)
    assert status == 200 and again == first
    issued = issued_fingerprint(site.ctx.config.state_dir, MAC)
    keys = [e.detail for e in site.registry.events(MAC) if e.kind is EventKind.KEYS]
    assert [k["what"] for k in keys] == ["host_key", "host_key"]
    assert {k["fingerprint"] for k in keys} == {issued}


def test_a_reboot_with_the_issued_key_needs_no_approval_and_post_install_pins_it(
    tmp_path: Path,
) -> None:
    from provisioner.config import Mode
    from provisioner.discovery.model import SCHEMA

    site = Site(tmp_path, Mode.FULL)
    site.lease()
    _, token = site.script(NODE)
    assert site.report(NODE, str(token)) == 202
    site.registry.set_profile(MAC, "qemu-lab")
    site.registry.transition(MAC, NodeEvent.MATCH)
    site.registry.transition(MAC, NodeEvent.ENROLL)
    state_dir = site.ctx.config.state_dir
    for boot in range(2):
        _, token = site.script(NODE)
        assert host_key(site, NODE, token)[0] == 200
        issued = issued_fingerprint(state_dir, MAC)
        body = {
            "schema": SCHEMA, "memory_bytes": 8 << 30,
            "ssh_host_keys": [{"type": "ssh-ed25519", "fingerprint": issued}],
        }  # fmt: skip
        auth = {"Authorization": f"Bearer {token}"}
        r = site.client(NODE).post(f"/api/v1/nodes/{MAC}/inventory", json=body, headers=auth)
        assert r.status_code == 202 and "approval" not in r.json(), (boot, r.json())
    # Another key than the issued one is held.
    _, token = site.script(NODE)
    body = {
        "schema": SCHEMA, "memory_bytes": 8 << 30,
        "ssh_host_keys": [{"type": "ssh-ed25519", "fingerprint": "SHA256:" + "Z" * 43}],
    }  # fmt: skip
    auth = {"Authorization": f"Bearer {token}"}
    r = site.client(NODE).post(f"/api/v1/nodes/{MAC}/inventory", json=body, headers=auth)
    assert r.json().get("approval") == "pending"

    # Post-install pins the issued key, not what a report said.
    cluster_site = ClusterSite.open(site.ctx.config, site.registry)
    node = site.registry.node(MAC)
    assert node is not None
    pinned = cluster_site.host_keys(node)
    public = issued_public_key(state_dir, MAC)
    assert public is not None
    assert [(k.type, k.public_key) for k in pinned] == [tuple(public.split()[:2])]

"""The shared node image's build: mmdebstrap, live-boot's initrd, the squashfs, the manifest.

Booting it (through the appliance, in lab VMs, with SSH logins) is test_image_lab.py.
"""

from __future__ import annotations

import pytest

from provisioner.image.rootfs import Manifest
from provisioner.image.store import ImageStore
from tests.e2e.conftest import BuiltRootfs

pytestmark = [pytest.mark.root, pytest.mark.mirror]


def test_build_publishes_a_version_of_the_image(rootfs_built: BuiltRootfs) -> None:
    built = rootfs_built
    assert built.image.name == f"{built.manifest.name}@1"
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
    assert [p for p in built.progress if p.startswith("done: debian-bookworm@1")]
    stored = ImageStore(built.store).get("debian-bookworm")
    assert stored.ref == "debian-bookworm@1" and stored.kind == "rootfs"

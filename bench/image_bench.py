"""Build time of the default shared image against a plain mmdebstrap of the same packages.

Ours: ``build_rootfs(images/debian-bookworm.toml)`` (mmdebstrap with our hooks, the
initramfs live-boot makes, mksquashfs, the manifest). Peer: what a user does by hand
today, ``mmdebstrap`` of the same suite, variant and package list into a tarball, with no
squashfs and no boot files. Both read the same cached .debs (nothing is downloaded once
the cache is warm), so the figure is the time to a bootable image. Lower is better.

Run as root: .venv/bin/python bench/image_bench.py [--json]
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Figure, report

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from provisioner.image.discovery import default_cache  # noqa: E402
from provisioner.image.rootfs import build_rootfs  # noqa: E402
from provisioner.image.rootfs_recipe import default_mirror, load_recipe  # noqa: E402

RECIPE = ROOT / "images" / "debian-bookworm.toml"


def run_ours(work: Path) -> float:
    started = time.monotonic()
    build_rootfs(RECIPE, work / "store", default_cache(), lambda line: None)
    return time.monotonic() - started


def run_peer(work: Path) -> float:
    spec = load_recipe(RECIPE)
    archives = default_cache() / "apt-archives"
    argv = [
        "mmdebstrap",
        "--mode=root",
        f"--variant={spec.variant}",
        f"--include={','.join([spec.kernel_package, *spec.packages])}",
        "--skip=download/empty",
        '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
        f"--setup-hook=sync-in {shlex.quote(str(archives))} /var/cache/apt/archives/",
        spec.suite,
        str(work / "peer.tar"),
        spec.mirror or default_mirror(),
    ]
    started = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pv-imagebench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        run_ours(work)  # warms the .deb cache if it is cold; not counted
        ours = run_ours(work)
        peer = run_peer(work)
    report(
        [
            Figure(
                "build debian-bookworm (warm cache)",
                "s",
                ours,
                peer,
                "plain mmdebstrap to a tarball",
                higher_is_better=False,
            )
        ],
        args.json,
    )


if __name__ == "__main__":
    main()

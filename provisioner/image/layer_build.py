"""A layer's part of an image build (a layer recipe: images/debian-trixie-vulkan.toml).

::

    layer_hooks   mmdebstrap --customize-hook values: the base's dpkg list and size noted,
                  the layer's packages installed in the chroot, DKMS modules built for the
                  image's kernel, the size noted again (files in a reports folder)
    layer_report  the manifest's ``layer``: what it added (packages, bytes), each required
                  module's file and vermagic (refused when missing or built for another
                  kernel), DKMS's status

Pure parts: :func:`layer_hooks`, :func:`parse_dpkg_query`, :func:`added_packages`,
:func:`du_bytes`, :func:`find_modules`; ``layer_report`` reads the built root.
"""

from __future__ import annotations

import os
import shlex
import struct
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from provisioner.image import ImageError, kmod
from provisioner.image.layer_recipe import Layer
from provisioner.image.module_signing import CERTIFICATE, IN_IMAGE, PRIVATE, SigningKey

# What a layer's hooks leave in the reports folder (outside the image).
BASE_PACKAGES = "base-packages.txt"  # dpkg-query of the base, before the layer
BASE_DU = "base-du.txt"  # du -sb of the root, then of its /boot, before the layer
LAYER_DU = "layer-du.txt"  # the same, after
DKMS_STATUS = "dkms-status.txt"
DKMS_LOG = "dkms-make.log"  # every module's make.log, taken out of the image
_QUERY = "-W -f '${Package} ${Version}\\n'"
_POLICY = "/usr/sbin/policy-rc.d"


def layer_hooks(layer: Layer, reports: Path, signing: SigningKey | None = None) -> list[str]:
    """The ``--customize-hook`` values of a layer: note the base's packages and size, install
    the layer's packages in the chroot (no service started), build its DKMS modules for the
    image's own kernel (not the build host's), note the size again."""
    q = shlex.quote
    out = q(str(reports))
    # -x: not the /proc, /sys, /dev mounted for hooks; two runs (one du counts /boot once)
    du = '{ du -sbx "$1"; du -sbx "$1"/boot; }'
    install = (
        'chroot "$1" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q'
        " --no-install-recommends " + " ".join(q(p) for p in layer.packages)
    )
    hooks = [
        f'dpkg-query --admindir="$1"/var/lib/dpkg {_QUERY} > {out}/{BASE_PACKAGES}',
        f"{du} > {out}/{BASE_DU}",
    ]
    if layer.dkms and signing is not None:
        # DKMS signs with this pair instead of making a random one (module_signing.py)
        dkms = f'"$1"{IN_IMAGE}'
        hooks.append(
            f"mkdir -p {dkms} && cp {q(str(signing.private))} {dkms}/{PRIVATE} && "
            f"chmod 0600 {dkms}/{PRIVATE} && cp {q(str(signing.certificate))} {dkms}/{CERTIFICATE}"
        )
    if layer.packages:
        # No daemon starts in the build root: a policy-rc.d of our own, unless one is there.
        hooks.append(
            f'if [ -e "$1"{_POLICY} ]; then {install}; else '
            f"printf '#!/bin/sh\\nexit 101\\n' > \"$1\"{_POLICY}; "
            f'chmod 0755 "$1"{_POLICY}; {install}; rc=$?; rm -f "$1"{_POLICY}; exit $rc; fi'
        )
    if layer.dkms:
        hooks.append(
            'for k in "$1"/lib/modules/*/; do k=${k%/}; k=${k##*/}; '
            'chroot "$1" dkms autoinstall -k "$k" || exit 1; done; '
            f'chroot "$1" dkms status > {out}/{DKMS_STATUS}; '
            # the private key never ships; DKMS's build logs (with their timestamps) go
            # to the reports, not into the image
            f'rm -f "$1"{IN_IMAGE}/{PRIVATE}; '
            f'for log in "$1"{IN_IMAGE}/*/*/*/*/log/make.log; do [ -f "$log" ] || continue; '
            f'cat "$log" >> {out}/{DKMS_LOG}; rm -f "$log"; done'
        )
    hooks.append(f"{du} > {out}/{LAYER_DU}")
    return hooks


def parse_dpkg_query(text: str) -> tuple[str, ...]:
    """``dpkg-query -W -f '${Package} ${Version}\\n'`` output -> sorted "name version"."""
    return tuple(sorted(line.strip() for line in text.splitlines() if line.strip()))


def added_packages(base: tuple[str, ...], final: tuple[str, ...]) -> tuple[str, ...]:
    """What the layer brought: "name version" lines of ``final`` not in ``base`` (new
    packages, and base packages the layer moved to another version)."""
    had = set(base)
    return tuple(line for line in final if line not in had)


def du_bytes(text: str) -> int:
    """``du -sb ROOT; du -sb ROOT/boot`` output -> the root's bytes without /boot."""
    sizes = [int(line.split()[0]) for line in text.splitlines() if line.strip()]
    if len(sizes) != 2:
        raise ImageError(f"unexpected du output: {text!r}")
    return sizes[0] - sizes[1]


def find_modules(root: Path, release: str, names: Iterable[str]) -> dict[str, Path]:
    """Where each of ``names`` lies under the image's ``lib/modules/<release>`` (a name
    missing from the result: the kernel has no such module). ``-`` and ``_`` are one."""
    wanted = {n.replace("-", "_"): n for n in names}
    found: dict[str, Path] = {}
    for dirpath, _dirs, files in sorted(os.walk(root / "lib" / "modules" / release)):
        for file in sorted(files):
            if file.endswith(kmod.MODULE_SUFFIXES):
                key = kmod.module_name(file)
                if key in wanted and wanted[key] not in found:
                    found[wanted[key]] = Path(dirpath, file)
    return found


def vermagic(path: Path) -> str:
    """A module file's ``vermagic`` (its ``.modinfo``, as modinfo reads it)."""
    try:
        fields = dict(kmod.parse_modinfo(kmod.read_module(path)))
    except (ValueError, struct.error) as exc:
        raise ImageError(f"{path}: not a kernel module: {exc}") from exc
    return fields.get("vermagic", "").strip()  # the kernel's ends with a space


def _modprobe_finds(root: Path, release: str, name: str, expected: str) -> None:
    """The image's own modinfo resolves ``name`` for ``release`` (through modules.dep, as
    modprobe on the node will) to a module built for it."""
    found = subprocess.run(
        ["chroot", str(root), "modinfo", "-k", release, "-F", "vermagic", name],
        capture_output=True, text=True,
    )  # fmt: skip
    if found.returncode != 0 or found.stdout.strip() != expected.strip():
        raise ImageError(
            f"the image's modinfo does not find {name} for {release} "
            f"({found.stderr.strip() or found.stdout.strip()}): was depmod run?"
        )


def layer_report(
    layer: Layer,
    root: Path,
    release: str,
    reports: Path,
    packages: tuple[str, ...],
    check_modprobe: bool = True,
) -> dict[str, Any]:
    """The manifest's ``layer``: what it added (packages, bytes), the modules it must carry
    (each one's file and vermagic: built for ``release``, else ImageError; with
    ``check_modprobe``, also found by name by the image's own modinfo), DKMS's status."""
    base = parse_dpkg_query((reports / BASE_PACKAGES).read_text())
    added_bytes = du_bytes((reports / LAYER_DU).read_text()) - du_bytes(
        (reports / BASE_DU).read_text()
    )
    modules: dict[str, dict[str, str]] = {}
    found = find_modules(root, release, layer.modules)
    missing = [m for m in layer.modules if m not in found]
    if missing:
        raise ImageError(
            f"the image's kernel {release} has no {', '.join(missing)} module: the layer "
            f"{layer.source.name} needs it (a newer kernel, `kernel = ...`, or a DKMS package)"
        )
    for name, path in found.items():
        magic = vermagic(path)
        if magic.split()[:1] != [release]:
            raise ImageError(
                f"{name} was built for {magic.split()[:1] or '?'}, not the image's kernel "
                f"{release} ({path.relative_to(root)})"
            )
        if check_modprobe:
            _modprobe_finds(root, release, name, magic)
        modules[name] = {"path": "/" + str(path.relative_to(root)), "vermagic": magic}
    dkms = reports / DKMS_STATUS
    return {
        "recipe": layer.source.name,
        "base": layer.base.name,
        "description": layer.description,
        "packages": list(added_packages(base, packages)),
        "base_packages": len(base),
        "added_bytes": added_bytes,
        "max_bytes": layer.max_bytes,
        "kernel_suite": layer.kernel_suite,
        "modules": modules,
        "dkms": dkms.read_text().splitlines() if dkms.is_file() else [],
    }

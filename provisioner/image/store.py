"""The image store: versioned images on disk, one folder per ``name@version``.

::

    <image_dir>/
      debian-bookworm@1/{vmlinuz, initrd, root.squashfs, manifest.json}
      debian-bookworm@2/...
      debian-bookworm -> debian-bookworm@2      the newest version (a symlink)
      discovery@1/{vmlinuz, initrd, manifest.json}
      discovery -> discovery@1

A version folder never changes once published: a boot script names ``name@version`` in
every URL, so a node that boots while a new version is published gets kernel, initrd and
root of one build. ``name`` (the symlink) is the newest version, for people and for
images nobody pins. A build whose files are identical (same sha256) to the newest
version's publishes nothing: the version stays.

Which version a profile boots is the registry's business (``image use``); this module
only keeps the folders. A folder of the layout before versions (``name/`` with a
manifest) is adopted as ``name@1`` on first sight.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.image import ImageError

MANIFEST = "manifest.json"
KERNEL = "vmlinuz"
INITRD = "initrd"
SQUASHFS = "root.squashfs"
ARTIFACT_KEYS = ("vmlinuz", "initrd", "squashfs")

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_REF = re.compile(r"^(?P<name>[a-z0-9][a-z0-9-]*)(?:@(?P<version>[1-9][0-9]*))?$")


class ImageNotFound(ImageError):
    """No image (or no such version of it) in the store."""


class ImageInUse(ImageError):
    """An image version that nodes boot (or will boot) cannot be removed."""

    def __init__(self, ref: str, users: Mapping[str, str]) -> None:
        self.ref = ref
        self.users = dict(users)
        listed = ", ".join(f"{node} ({why})" for node, why in sorted(users.items()))
        super().__init__(f"{ref} is in use by {len(users)} node(s): {listed}")


@dataclass(frozen=True)
class ImageRef:
    """``name`` (the newest version) or ``name@version``."""

    name: str
    version: int | None = None

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        m = _REF.match(text.strip())
        if m is None:
            raise ImageError(
                f"{text!r} is not an image name: name or name@version "
                "(lower-case letters, digits and '-'; version 1, 2, ...)"
            )
        version = m.group("version")
        return cls(m.group("name"), int(version) if version else None)

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


@dataclass(frozen=True)
class StoredImage:
    """One published version: its folder and what its manifest says."""

    name: str
    version: int
    path: Path
    manifest: Mapping[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def kind(self) -> str:
        """``rootfs`` (a root filesystem to fetch) or ``initrd`` (all in the initrd)."""
        return "rootfs" if "squashfs" in self.manifest else "initrd"

    @property
    def squashfs(self) -> str | None:
        return SQUASHFS if self.kind == "rootfs" else None

    def size(self, artifact: str) -> int:
        entry = self.manifest.get(artifact)
        return int(entry["size"]) if isinstance(entry, Mapping) else 0

    @property
    def kernel_release(self) -> str | None:
        """The kernel its manifest names (``6.1.0-41-amd64``); None for none."""
        release = self.manifest.get("kernel_release")
        return str(release) if release else None

    @property
    def python_version(self) -> str | None:
        """The Python its ``python3`` package carries (``3.13``): what a node's wheels are
        built for; None when the image has none (or its manifest lists no packages)."""
        for entry in self.manifest.get("packages") or ():
            name, _, version = str(entry).partition(" ")
            m = re.match(r"^(?:\d+:)?(\d+)\.(\d+)", version)
            if name == "python3" and m:
                return f"{m.group(1)}.{m.group(2)}"
        return None

    def digests(self) -> dict[str, str]:
        return {
            key: str(self.manifest[key]["sha256"])
            for key in ARTIFACT_KEYS
            if isinstance(self.manifest.get(key), Mapping)
        }

    def summary(self) -> dict[str, Any]:
        """What ``image list --json`` prints for this version."""
        return {
            "ref": self.ref,
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "path": str(self.path),
            "kernel_release": self.kernel_release,
            "built_at": self.manifest.get("built_at"),
            "sizes": {k: self.size(k) for k in ARTIFACT_KEYS if k in self.manifest},
        }


def _read_manifest(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise ImageError(f"{folder / MANIFEST}: unreadable manifest: {exc}") from exc
    if not isinstance(data, dict):
        raise ImageError(f"{folder / MANIFEST}: the manifest is not a JSON object")
    return data


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    # ------------------------------------------------------------------ reading

    def images(self) -> list[StoredImage]:
        """Every published version, by name then version."""
        self._adopt_unversioned()
        found = []
        if not self.root.is_dir():
            return []
        for entry in self.root.iterdir():
            m = _REF.match(entry.name)
            if m is None or m.group("version") is None or entry.is_symlink():
                continue
            if not (entry / MANIFEST).is_file():
                continue
            found.append(
                StoredImage(m.group("name"), int(m.group("version")), entry, _read_manifest(entry))
            )
        return sorted(found, key=lambda i: (i.name, i.version))

    def versions(self, name: str) -> list[StoredImage]:
        return [i for i in self.images() if i.name == name]

    def find(self, ref: ImageRef | str) -> StoredImage | None:
        """The version ``ref`` names (its newest when it names none), or None."""
        if isinstance(ref, str):
            ref = ImageRef.parse(ref)
        versions = self.versions(ref.name)
        if ref.version is None:
            return versions[-1] if versions else None
        return next((i for i in versions if i.version == ref.version), None)

    def get(self, ref: ImageRef | str) -> StoredImage:
        image = self.find(ref)
        if image is None:
            names = sorted({i.ref for i in self.images()})
            have = ", ".join(names) if names else "none: provisioner image build RECIPE"
            raise ImageNotFound(f"no image {ref} in {self.root} (have: {have})")
        return image

    # ------------------------------------------------------------------ writing

    def staging(self, name: str) -> Path:
        """A fresh folder inside the store to build ``name`` into (same filesystem)."""
        if not _NAME.match(name):
            raise ImageError(f"{name!r} is not an image name")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix=f".{name}-new-", dir=self.root))
        except OSError as exc:
            raise ImageError(f"cannot create a folder in {self.root}: {exc}") from exc

    def publish(self, staging: Path, name: str) -> tuple[StoredImage, bool]:
        """Publish the folder ``staging`` as the next version of ``name``.

        Returns the image and whether it is new; when the newest version has the same
        files (sha256), ``staging`` is dropped and that version returned.
        """
        manifest = _read_manifest(staging)
        newest = self.find(ImageRef(name))
        candidate = StoredImage(name, 0, staging, manifest)
        if newest is not None and newest.digests() == candidate.digests():
            shutil.rmtree(staging, ignore_errors=True)
            self._point(name, newest.version)
            return newest, False
        version = newest.version + 1 if newest is not None else 1
        final = self.root / f"{name}@{version}"
        try:
            staging.chmod(0o755)
            os.rename(staging, final)
        except OSError as exc:
            raise ImageError(f"cannot publish {final}: {exc}") from exc
        self._point(name, version)
        return StoredImage(name, version, final, manifest), True

    def publish_files(self, name: str, files: Mapping[str, bytes]) -> tuple[StoredImage, bool]:
        """Write ``files`` (file name -> bytes) as the next version of ``name``.

        Without a ``manifest.json`` among them, a minimal one is written: the name and each
        artifact's file, size and sha256 (what the store and the boot policy read).
        """
        staging = self.staging(name)
        try:
            for file, data in files.items():
                (staging / file).write_bytes(data)
            if MANIFEST not in files:
                manifest: dict[str, Any] = {"name": name}
                for key, file in zip(ARTIFACT_KEYS, (KERNEL, INITRD, SQUASHFS), strict=True):
                    if file in files:
                        manifest[key] = {
                            "file": file,
                            "size": len(files[file]),
                            "sha256": hashlib.sha256(files[file]).hexdigest(),
                        }
                (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            return self.publish(staging, name)
        except OSError as exc:
            raise ImageError(f"cannot publish the image {name} into {self.root}: {exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def remove(self, image: StoredImage) -> None:
        """Delete one version (callers check that nothing uses it first)."""
        try:
            shutil.rmtree(image.path)
        except OSError as exc:
            raise ImageError(f"cannot remove {image.path}: {exc}") from exc
        rest = self.versions(image.name)
        if rest:
            self._point(image.name, rest[-1].version)
        else:
            link = self.root / image.name
            if link.is_symlink():
                link.unlink()

    def _point(self, name: str, version: int) -> None:
        """Make ``root/name`` a symlink to ``name@version``, atomically."""
        link = self.root / name
        tmp = self.root / f".{name}.link"
        try:
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            os.symlink(f"{name}@{version}", tmp)
            os.replace(tmp, link)
        except OSError as exc:
            raise ImageError(f"cannot point {link} at {name}@{version}: {exc}") from exc

    def _adopt_unversioned(self) -> None:
        """A ``name/`` folder from before versions becomes ``name@1`` (or the next)."""
        if not self.root.is_dir():
            return
        for entry in list(self.root.iterdir()):
            if entry.is_symlink() or not entry.is_dir() or not _NAME.match(entry.name):
                continue
            if not (entry / MANIFEST).is_file():
                continue
            taken = [
                int(p.name.rpartition("@")[2])
                for p in self.root.glob(f"{entry.name}@*")
                if p.name.rpartition("@")[2].isdigit()
            ]
            version = max(taken, default=0) + 1
            os.rename(entry, self.root / f"{entry.name}@{version}")
            self._point(entry.name, version)


def users_of(
    image: StoredImage,
    booted: Mapping[str, str | None],
    planned: Mapping[str, str | None],
) -> dict[str, str]:
    """Nodes that use ``image``: ``booted`` maps node -> the ref its last script named,
    ``planned`` node -> the ref it would boot now. Returns node -> why."""
    users: dict[str, str] = {}
    for node, ref in booted.items():
        if ref == image.ref:
            users[node] = "booted it last"
    for node, ref in planned.items():
        if ref == image.ref:
            users.setdefault(node, "boots it next")
    return users

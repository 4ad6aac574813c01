"""What changed between two built images: `provisioner image diff A B`.

Pure: two manifests (``manifest.json`` as dicts) in, an :class:`ImageDiff` out. Packages
are compared by name (``"name version"`` lines of the manifests): added, removed, and
those whose version moved; then the kernel, the artifacts' sizes and digests, the recipe
and, for layered images, each side's layer packages.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

ARTIFACTS = ("vmlinuz", "initrd", "squashfs")


def _versions(lines: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        name, _, version = str(line).partition(" ")
        out[name] = version
    return out


@dataclass(frozen=True)
class ImageDiff:
    a: str  # refs, as given
    b: str
    added: dict[str, str] = field(default_factory=dict)  # name -> version in B
    removed: dict[str, str] = field(default_factory=dict)  # name -> version in A
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (A, B)
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # what else differs
    layer_moved: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (A, B)

    @property
    def identical(self) -> bool:
        """Same packages and the same bytes (the artifacts' digests)."""
        return not (self.added or self.removed or self.changed) and not any(
            key.endswith(".sha256") for key in self.fields
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "identical": self.identical,
            "packages": {
                "added": self.added,
                "removed": self.removed,
                "changed": {k: {"a": a, "b": b} for k, (a, b) in self.changed.items()},
            },
            "layer": {k: {"a": a, "b": b} for k, (a, b) in self.layer_moved.items()},
            "fields": {k: {"a": a, "b": b} for k, (a, b) in self.fields.items()},
        }

    def lines(self) -> list[str]:
        """The text report: one line per difference."""
        out = [f"{self.a} -> {self.b}"]
        for key, (a, b) in self.fields.items():
            out.append(f"  {key}: {a} -> {b}")
        for name, version in self.added.items():
            out.append(f"  + {name} {version}")
        for name, version in self.removed.items():
            out.append(f"  - {name} {version}")
        for name, (a, b) in self.changed.items():
            out.append(f"  ~ {name} {a} -> {b}")
        for name, (_, b) in self.layer_moved.items():
            where = "into the layer" if b else "out of the layer"
            out.append(f"  layer: {name} moved {where}")
        if self.identical:
            out.append("  identical: the same packages and the same bytes")
        elif not (self.added or self.removed or self.changed):
            out.append("  the same packages; the bytes differ (see the fields above)")
        return out


def diff_manifests(a_ref: str, a: Mapping[str, Any], b_ref: str, b: Mapping[str, Any]) -> ImageDiff:
    pa, pb = _versions(a.get("packages") or ()), _versions(b.get("packages") or ())
    fields: dict[str, tuple[Any, Any]] = {}
    for key in ("suite", "kernel_release", "compression", "recipe_sha256", "builder_version"):
        if a.get(key) != b.get(key):
            fields[key] = (a.get(key), b.get(key))
    for name in ARTIFACTS:
        ea, eb = a.get(name) or {}, b.get(name) or {}
        for what in ("size", "sha256"):
            if ea.get(what) != eb.get(what):
                fields[f"{name}.{what}"] = (ea.get(what), eb.get(what))
    la, lb = (_versions((m.get("layer") or {}).get("packages") or ()) for m in (a, b))
    moved = {
        name: ("layer" if name in la else "", "layer" if name in lb else "")
        for name in sorted((set(la) ^ set(lb)) & set(pa) & set(pb))
    }
    return ImageDiff(
        a_ref,
        b_ref,
        added={n: pb[n] for n in sorted(set(pb) - set(pa))},
        removed={n: pa[n] for n in sorted(set(pa) - set(pb))},
        changed={n: (pa[n], pb[n]) for n in sorted(set(pa) & set(pb)) if pa[n] != pb[n]},
        fields=fields,
        layer_moved=moved,
    )

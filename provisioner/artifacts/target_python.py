"""Resolving a wheelhouse for another Python than the control node's (pure).

The control node runs Debian 12's Python 3.11; a Debian 13 node image runs 3.13. pip can
choose wheels for another interpreter (``--python-version 3.13 --abi cp313 --platform ...
--only-binary=:all: --target DIR``), but it evaluates dependency markers against the
interpreter that runs it (pypa/pip#11010, #13296): ``six; python_version > "3.11"`` is
dropped for a 3.13 target, ``typing-extensions; python_version < "3.13"`` is kept. This
module says what pip is told (:func:`pip_target_args`), the marker environment of the
target (:func:`marker_environment`), and what the resolution lacks for it
(:func:`closure_gaps`): each dependency whose marker holds on the target, missing from the
pins or pinned to a version its specifier refuses. The wheelhouse resolves again with those
added (:func:`provisioner.artifacts.wheelhouse.resolve`), until nothing lacks.

Platform tags: every ``manylinux_2_N`` up to the control node's own glibc, and the legacy
aliases. A node image's glibc is never older than the control node's here (Debian 12:
2.36, Debian 13: 2.41), so a wheel the control node could load loads on the node.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from packaging.markers import InvalidMarker, Marker, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from provisioner.artifacts import ArtifactError

_TAG = re.compile(r"^cp(?P<major>\d)(?P<minor>\d+)$")
LEGACY = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}


def tag_version(tag: str) -> str:
    """``cp313`` -> ``3.13``."""
    m = _TAG.match(tag)
    if not m:
        raise ArtifactError(f"bad Python tag {tag!r} (cp313)")
    return f"{m.group('major')}.{m.group('minor')}"


def version_tag(version: str) -> str:
    """``3.13`` or ``3.13.5-2`` (a Debian package version) -> ``cp313``."""
    m = re.match(r"^(\d+)\.(\d+)", version)
    if not m:
        raise ArtifactError(f"bad Python version {version!r} (3.13)")
    return f"cp{m.group(1)}{m.group(2)}"


def host_glibc() -> tuple[int, int]:
    """The control node's glibc (2, 36), from the C library itself."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        text = ""
    m = re.search(r"(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else (2, 17)


def platform_tags(platform: str, glibc: tuple[int, int]) -> list[str]:
    """pip's ``--platform`` values for ``linux-x86_64`` on glibc 2.N: newest first."""
    arch = platform.removeprefix("linux-").replace("-", "_").replace(".", "_")
    if not platform.startswith("linux-") or not arch:
        raise ArtifactError(f"{platform!r}: wheels for another Python are for Linux only")
    major, minor = glibc
    tags = [f"manylinux_{major}_{n}_{arch}" for n in range(minor, 4, -1)]
    tags += [f"{name}_{arch}" for name, n in LEGACY.items() if n <= minor]
    return [*tags, f"linux_{arch}"]


def pip_target_args(python_tag: str, platform: str, glibc: tuple[int, int]) -> list[str]:
    """What ``pip download`` and ``pip install --dry-run --target DIR`` are told to choose
    for ``python_tag`` (wheels only: pip builds no sdist for a Python it does not run)."""
    args = ["--only-binary=:all:", "--python-version", tag_version(python_tag)]
    args += ["--implementation", "cp", "--abi", python_tag, "--abi", "abi3", "--abi", "none"]
    for tag in platform_tags(platform, glibc):
        args += ["--platform", tag]
    return args


def marker_environment(base: Mapping[str, str], python_tag: str) -> dict[str, str]:
    """``base`` (pip's report's ``environment``, the control node's) as the target sees it."""
    version = tag_version(python_tag)
    return {
        **base,
        "python_version": version,
        "python_full_version": f"{version}.0",
        "implementation_name": "cpython",
        "implementation_version": f"{version}.0",
        "platform_python_implementation": "CPython",
    }


@dataclass(frozen=True)
class Gap:
    """A dependency the target needs that the resolution lacks."""

    needed_by: str
    requirement: str  # as the package's metadata writes it
    name: str  # PEP 503
    pinned: str | None  # the version resolved, None: not resolved at all

    def line(self) -> str:
        got = f"{self.pinned} was resolved" if self.pinned else "it was not resolved"
        return f"{self.needed_by} needs {self.requirement} on the node ({got})"


def _holds(marker: Marker | None, env: Mapping[str, str], extras: Iterable[str]) -> bool:
    if marker is None:
        return True
    try:
        return any(marker.evaluate({**env, "extra": e}) for e in ("", *extras))
    except UndefinedEnvironmentName:
        return False


def closure_gaps(
    report: Mapping[str, object], env: Mapping[str, str], excluded: Sequence[str] = ()
) -> list[Gap]:
    """Each ``Requires-Dist`` of the report's packages whose marker holds in ``env`` (with
    the extras the report says were asked of that package) and that no pin satisfies.
    Excluded names (dropped on purpose) are never gaps."""
    items = report.get("install")
    if not isinstance(items, list):
        raise ArtifactError("pip's report has no 'install' list")
    pins: dict[str, Version | None] = {}
    for item in items:
        meta = item["metadata"]
        try:
            pins[canonicalize_name(meta["name"])] = Version(meta["version"])
        except InvalidVersion:
            pins[canonicalize_name(meta["name"])] = None
    skip = {canonicalize_name(n) for n in excluded}
    gaps = []
    for item in items:
        meta = item["metadata"]
        extras = [str(e) for e in item.get("requested_extras") or ()]
        for text in meta.get("requires_dist") or ():
            try:
                req = Requirement(text)
            except (InvalidRequirement, InvalidMarker):
                continue  # pip itself would have refused what matters
            name = canonicalize_name(req.name)
            if name in skip or not _holds(req.marker, env, extras):
                continue
            if name not in pins:
                gaps.append(Gap(str(meta["name"]), text, name, None))
                continue
            version = pins[name]
            if version is not None and not req.specifier.contains(version, prereleases=True):
                gaps.append(Gap(str(meta["name"]), text, name, str(version)))
    return sorted(gaps, key=lambda g: (g.name, g.needed_by))


def gap_requirements(gaps: Sequence[Gap]) -> list[str]:
    """The requirements to resolve again with: each gap's name and specifier (no marker:
    it holds on the target), one line per name, specifiers joined."""
    by_name: dict[str, list[str]] = {}
    for gap in gaps:
        spec = str(Requirement(gap.requirement).specifier)
        by_name.setdefault(gap.name, [])
        if spec and spec not in by_name[gap.name]:
            by_name[gap.name].append(spec)
    return [f"{name}{','.join(specs)}" for name, specs in sorted(by_name.items())]

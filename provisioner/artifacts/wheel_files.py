"""What a wheelhouse folder holds and how a node installs from it (for
:mod:`provisioner.artifacts.wheelhouse`, which resolves and downloads).

``requirements.txt`` lists what nodes install (pinned, hashed, PEP 503 names) and
``index.html`` links every wheel; :func:`node_install_command` is the line post-install
runs on a node. Pure but for :func:`scan_wheels` (it hashes the folder's files).
"""

from __future__ import annotations

import html
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from provisioner.artifacts import ArtifactError
from provisioner.artifacts.store import NAME_RE
from provisioner.image.debs import sha256_file

REQUIREMENTS = "requirements.txt"
INDEX = "index.html"
NODE_VENV_ROOT = "/var/lib/provisioner/vllm"  # on the cache disk where a node has one
NODE_ARTIFACTS = "/var/lib/provisioner/artifacts"  # where post-install puts fetched files


def normalize(name: str) -> str:
    """PEP 503: ``Foo_Bar.baz`` -> ``foo-bar-baz``."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Wheel:
    name: str  # PEP 503 normalized
    version: str
    file: str
    sha256: str
    size: int


_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


def parse_wheel_filename(filename: str) -> tuple[str, str]:
    """``MarkupSafe-3.0.4-cp311-cp311-manylinux_2_17_x86_64.whl`` -> (markupsafe, 3.0.4)."""
    m = _WHEEL.match(filename)
    if not m:
        raise ArtifactError(f"{filename}: not a wheel file name")
    return normalize(m.group("name")), m.group("version")


def scan_wheels(folder: Path) -> list[Wheel]:
    """The wheels in ``folder``, hashed, sorted by name."""
    wheels = []
    for p in sorted(folder.glob("*.whl")):
        name, version = parse_wheel_filename(p.name)
        wheels.append(Wheel(name, version, p.name, sha256_file(p), p.stat().st_size))
    return sorted(wheels, key=lambda w: (w.name, w.file))


def render_requirements(
    wheels: Iterable[Wheel],
    title: str,
    inputs: Mapping[str, str],
    *,
    leave_out: Mapping[str, Iterable[str]] | None = None,
) -> str:
    """``name==version --hash=sha256:...`` per wheel, sorted, under a comment header naming
    the inputs; ``leave_out`` maps a reason (shown in the header) to names not listed."""
    leave_out = leave_out or {}
    dropped = {normalize(n) for names in leave_out.values() for n in names}
    listed = [w for w in wheels if w.name not in dropped]
    seen: dict[str, Wheel] = {}
    for w in listed:
        if w.name in seen:
            raise ArtifactError(f"two wheels of {w.name}: {seen[w.name].file} and {w.file}")
        seen[w.name] = w
    lines = [f"# {title}", "# inputs:"]
    lines += [f"#   {k} = {v}" for k, v in sorted(inputs.items())]
    for reason, names in leave_out.items():
        lines.append(f"# {reason}: {' '.join(sorted(normalize(n) for n in names)) or '-'}")
    for w in sorted(listed, key=lambda w: w.name):
        lines.append(f"{w.name}=={w.version} --hash=sha256:{w.sha256}")
    return "\n".join(lines) + "\n"


def render_index(wheels: Iterable[Wheel], title: str) -> str:
    """One link per wheel: what ``pip --find-links URL/index.html`` reads."""
    links = [
        f'<a href="{quote(w.file)}">{html.escape(w.file)}</a><br>'
        for w in sorted(wheels, key=lambda w: w.file)
    ]
    head = f"<!DOCTYPE html>\n<html><head><title>{html.escape(title)}</title></head><body>"
    return "\n".join([head, *links, "</body></html>"]) + "\n"


def node_install_command(
    control_url: str,
    name: str,
    venv: str | None = None,
    requirements: str | None = None,
) -> str:
    """The shell line that installs wheelhouse ``name`` on a node into ``venv``.

    ``requirements`` is the node's copy of the wheelhouse's requirements.txt (fetched and
    checked against the manifest's sha256 first; by default where post-install puts it).
    No index, no dependencies beyond the pinned list, every wheel's hash checked; the node's
    own pip configuration and ``PIP_*`` variables are ignored (``PIP_CONFIG_FILE=/dev/null``,
    ``--isolated``), nothing is cached (a stateless node's disk is RAM), the control node is
    reached directly (``no_proxy``) and trusted over plain HTTP (``--trusted-host``)."""
    if not NAME_RE.match(name) or ".." in name:
        raise ArtifactError(f"bad wheelhouse name {name!r}")
    url = urlsplit(control_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ArtifactError(f"bad control node URL {control_url!r} (http://HOST[:PORT])")
    venv = venv or f"{NODE_VENV_ROOT}/{name}"
    requirements = requirements or f"{NODE_ARTIFACTS}/{name}/{REQUIREMENTS}"
    index = f"{control_url.rstrip('/')}/artifacts/{name}/{INDEX}"
    host = url.hostname
    # pip downloads every wheel into TMPDIR before it installs one (4 GB for the CUDA set):
    # in /tmp that is the node's RAM; in the venv's folder it is where the venv goes (the
    # cache disk, where the node has one). Removed once installed.
    tmp = f"{venv}/.pip-tmp"
    pip = [
        "env",
        f"TMPDIR={tmp}",
        "PIP_CONFIG_FILE=/dev/null",
        f"no_proxy={host}",
        f"NO_PROXY={host}",
        f"{venv}/bin/pip",
        "--isolated",
        "install",
        "--no-index",
        "--no-deps",
        "--require-hashes",
        "--no-cache-dir",
        "--progress-bar",
        "off",
        *(["--trusted-host", host] if url.scheme == "http" else []),
        "--find-links",
        index,
        "-r",
        requirements,
    ]
    return (
        f"python3 -m venv {shlex.quote(venv)} && mkdir -p {shlex.quote(tmp)} && "
        f"{shlex.join(pip)} && rm -rf {shlex.quote(tmp)}"
    )

"""Debian packages for image builds: resolve, download into a cache, verify, extract.

Only the package tools' read-only and download modes are used (``apt-cache show``,
``apt-get download``, ``dpkg-deb``): nothing is installed on the control node. The
package index is the host's own (``apt-get update`` keeps it fresh).

Cache layout (``cache`` is ``/var/cache/provisioner`` unless told otherwise)::

    cache/debs/<name>_<version>_<arch>.deb    one file per package version, the epoch's
                                              ':' written '%3a' as apt does; reused while
                                              its sha256 matches the package index
    cache/tmp/                                downloads in progress (one directory each)

Parsing (control stanzas, a Depends field) is pure; subprocess calls go through ``run``,
which turns a missing tool or a failed command into ``ImageError``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from provisioner.image import ImageError

log = logging.getLogger(__name__)

APT_SANDBOX_USER = "_apt"
_C_LOCALE = {"LC_ALL": "C", "LANG": "C", "LANGUAGE": ""}


@dataclass(frozen=True)
class Package:
    """One version of one binary package, as the package index describes it."""

    name: str
    version: str
    architecture: str
    sha256: str
    size: int
    depends: str = ""

    @property
    def filename(self) -> str:
        """The cache file name, as ``apt-get download`` spells it."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"


def run(argv: Sequence[str], *, cwd: Path | None = None) -> str:
    """Run ``argv`` (C locale), return its stdout; a failure becomes ``ImageError``."""
    env = {**os.environ, **_C_LOCALE}
    try:
        done = subprocess.run(
            list(argv), cwd=cwd, env=env, capture_output=True, text=True, check=True
        )
    except FileNotFoundError as exc:
        raise ImageError(f"{argv[0]} is not installed (needed to build images)") from exc
    except subprocess.CalledProcessError as exc:
        stderr = (exc.stderr or "").strip()
        raise ImageError(f"{' '.join(argv)} failed with status {exc.returncode}: {stderr}") from exc
    if done.stderr.strip():
        log.debug("%s: %s", argv[0], done.stderr.strip())
    return done.stdout


def parse_control(text: str) -> list[dict[str, str]]:
    """Deb822 stanzas (``apt-cache show`` output) -> one dict per stanza.

    Continuation lines (starting with a space) are joined to their field with a newline.
    """
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    field = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                stanzas.append(current)
            current, field = {}, ""
        elif line[0] in " \t":
            if field:
                current[field] += "\n" + line.strip()
        elif ":" in line:
            field, _, value = line.partition(":")
            current[field] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def package_from_stanza(stanza: dict[str, str]) -> Package:
    """The fields we need from one stanza; a missing field is an ``ImageError``."""
    try:
        return Package(
            name=stanza["Package"],
            version=stanza["Version"],
            architecture=stanza["Architecture"],
            sha256=stanza["SHA256"].lower(),
            size=int(stanza["Size"]),
            depends=stanza.get("Depends", ""),
        )
    except (KeyError, ValueError) as exc:
        raise ImageError(f"package index entry without a usable {exc}: {stanza}") from exc


_DEP = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9+.-]*)(?::\w+)?\s*(?:\((?P<op>[<>=]+)\s*(?P<ver>[^)\s]+)\))?$"
)


def depends_on(depends: str, prefix: str) -> tuple[str, str | None]:
    """The first plain dependency whose name starts with ``prefix``: (name, exact version).

    ``"linux-image-6.1.0-56-amd64 (= 6.1.192-2)"`` -> ``("linux-image-6.1.0-56-amd64",
    "6.1.192-2")``. Alternatives (``a | b``) are skipped; the version is given only for
    an ``=`` relation.
    """
    for clause in depends.split(","):
        clause = clause.strip()
        if "|" in clause:
            continue
        match = _DEP.match(clause)
        if match and match["name"].startswith(prefix):
            version = match["ver"] if match["op"] == "=" else None
            return match["name"], version
    raise ImageError(f"no dependency named {prefix}* in {depends!r}")


def show(name: str, version: str | None = None) -> Package:
    """The index entry of ``name`` (its candidate version, or exactly ``version``)."""
    if version is None:
        text = run(["apt-cache", "show", "--no-all-versions", name])
    else:
        text = run(["apt-cache", "show", f"{name}={version}"])
    stanzas = [s for s in parse_control(text) if s.get("Package") == name]
    if not stanzas:
        raise ImageError(f"{name} is not in the package index (run apt-get update)")
    return package_from_stanza(stanzas[0])


def resolve(name: str, *, prefix: str | None = None) -> Package:
    """The package to download for ``name``; through a metapackage when ``prefix`` is set.

    ``resolve("linux-image-amd64", prefix="linux-image-")`` is the versioned kernel
    package that the metapackage's candidate depends on, at the version it pins.
    """
    package = show(name)
    if prefix is None:
        return package
    real, version = depends_on(package.depends, prefix)
    return show(real, version)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify(deb: Path, package: Package) -> None:
    """The file is the package the index names: sha256, and dpkg-deb can read it."""
    digest = sha256_file(deb)
    if digest != package.sha256:
        raise ImageError(f"{deb}: sha256 {digest} but the index says {package.sha256}")
    fields = run(["dpkg-deb", "--field", str(deb), "Package", "Version"])
    control = parse_control(fields)
    got = (control[0].get("Package"), control[0].get("Version")) if control else None
    if got != (package.name, package.version):
        raise ImageError(f"{deb}: dpkg-deb reads {got}, expected {package.name} {package.version}")


def _sandbox_writable(directory: Path) -> None:
    """Let apt's download sandbox user write ``directory`` (else apt warns, runs as root)."""
    if os.geteuid() != 0:
        return
    try:
        os.chown(directory, pwd.getpwnam(APT_SANDBOX_USER).pw_uid, -1)
    except (KeyError, OSError):
        log.debug("no %s user: apt-get download runs unsandboxed", APT_SANDBOX_USER)


def fetch(package: Package, cache: Path) -> tuple[Path, bool]:
    """The verified .deb of ``package`` in ``cache/debs``; (path, True if it was cached)."""
    debs = cache / "debs"
    target = debs / package.filename
    if target.is_file():
        try:
            verify(target, package)
        except ImageError as exc:
            log.warning("discarding cached %s: %s", target, exc)
            target.unlink()
        else:
            return target, True
    tmp_root = cache / "tmp"
    try:
        debs.mkdir(parents=True, exist_ok=True)
        tmp_root.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="download-", dir=tmp_root))
    except OSError as exc:
        raise ImageError(f"cannot create the package cache under {cache}: {exc}") from exc
    try:
        _sandbox_writable(workdir)
        run(["apt-get", "-q", "download", f"{package.name}={package.version}"], cwd=workdir)
        downloaded = workdir / package.filename
        if not downloaded.is_file():
            found = sorted(p.name for p in workdir.iterdir())
            raise ImageError(f"apt-get download gave {found}, expected {package.filename}")
        verify(downloaded, package)
        os.chown(downloaded, os.geteuid(), os.getegid())
        os.replace(downloaded, target)
    except OSError as exc:
        raise ImageError(f"cannot store {package.filename} in {debs}: {exc}") from exc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return target, False


def extract(deb: Path, dest: Path) -> None:
    """Unpack the files of ``deb`` under ``dest`` (``dpkg-deb -x``; runs no scripts)."""
    run(["dpkg-deb", "-x", str(deb), str(dest)])

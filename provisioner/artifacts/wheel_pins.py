"""What pip's resolver chose, as pins (pure): :class:`Pin`, read from a ``pip install
--dry-run --report`` installation report by :func:`parse_report`, written back as a
hash-pinned requirements file by :func:`pins_file`. The runs of pip that make the report
are :mod:`provisioner.artifacts.wheelhouse`'s."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from provisioner.artifacts import ArtifactError
from provisioner.artifacts.wheel_files import normalize


@dataclass(frozen=True)
class Pin:
    """One distribution pip's resolver chose."""

    name: str  # PEP 503 normalized
    version: str
    url: str
    sha256: str = ""

    @property
    def filename(self) -> str:
        return unquote(urlsplit(self.url).path.rsplit("/", 1)[-1])

    @property
    def is_wheel(self) -> bool:
        return self.filename.endswith(".whl")

    def requirement(self, *, with_hash: bool) -> str:
        line = f"{self.name}=={self.version}"
        return f"{line} --hash=sha256:{self.sha256}" if with_hash else line


def parse_report(report: Mapping[str, object]) -> list[Pin]:
    """The pins of a ``pip install --dry-run --report`` installation report (version 1)."""
    items = report.get("install")
    if not isinstance(items, list):
        raise ArtifactError("pip's report has no 'install' list")
    pins = []
    try:
        for item in items:
            meta, info = item["metadata"], item["download_info"]
            hashes = info.get("archive_info", {}).get("hashes", {})
            pins.append(
                Pin(
                    name=normalize(str(meta["name"])),
                    version=str(meta["version"]),
                    url=str(info["url"]),
                    sha256=str(hashes.get("sha256", "")),
                )
            )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"unexpected pip report entry: {exc!r}") from exc
    return sorted(pins, key=lambda p: p.name)


def pins_file(pins: Iterable[Pin]) -> str:
    """A requirements file pinning ``pins``, each with its sha256 (pip then checks every
    file it fetches); a pin without one is refused, never downloaded unchecked."""
    pins = list(pins)
    unhashed = [f"{p.name}=={p.version}" for p in pins if not p.sha256]
    if unhashed:
        raise ArtifactError(
            f"no sha256 for {', '.join(unhashed)} in pip's report: refused (every file a "
            "node installs is hash-checked)"
        )
    return "".join(p.requirement(with_hash=True) + "\n" for p in pins)

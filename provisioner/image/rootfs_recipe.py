"""The shared image's recipe (``images/debian-bookworm.toml``) and the mirror it builds from.

Pure: TOML bytes in, a validated ``RootfsRecipe`` out (errors name the file, the key and
the reason); apt's sources in, the Debian mirror out. ``rootfs.py`` turns the recipe into
an image.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from provisioner.image import RecipeError
from provisioner.image.layer_recipe import Layer, parse_layer
from provisioner.image.recipe import RecipeReader

log = logging.getLogger(__name__)

FALLBACK_MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
APT_SOURCES = Path("/etc/apt/sources.list")
APT_SOURCES_D = Path("/etc/apt/sources.list.d")
VARIANTS = frozenset({"minbase", "apt"})
COMPRESSIONS = frozenset({"gzip", "lz4", "lzo", "xz", "zstd"})
REQUIRED_PACKAGES = ("systemd", "openssh-server", "live-boot")

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]*$")
_WORD = re.compile(r"^[a-z0-9][a-z0-9.-]*$")


# ---------------------------------------------------------------------------- recipe


@dataclass(frozen=True)
class User:
    name: str
    ssh_keys: tuple[str, ...]


@dataclass(frozen=True)
class RootfsRecipe:
    """``images/debian-bookworm.toml``, validated; file paths made absolute."""

    source: Path
    sha256: str
    name: str
    suite: str
    variant: str
    mirror: str | None
    components: tuple[str, ...]
    updates: bool  # also SUITE-updates and SUITE-security (the fixes a node should boot with)
    kernel_package: str
    packages: tuple[str, ...]
    compression: str
    users: tuple[User, ...]
    agent: Path
    extra: tuple[tuple[str, Path], ...]  # (absolute path in the image, file here)
    # The initramfs script that checks the fetched root against the boot script's sha256
    # (provisioner.root_sha256=); None: the image boots whatever root it fetched.
    root_check: Path | None = None
    # The initramfs script that sends the kernel's messages to the control node
    # (provisioner.netconsole=PORT); None: the node's kernel sends nothing.
    netconsole: Path | None = None
    # The accelerator exporter (node_exporter textfile metrics from nvidia-smi, xpu-smi,
    # amdgpu/i915 sysfs), run every 15 s by its timer; None: the image has none.
    accel_exporter: Path | None = None
    # A layer recipe (base = "..."): the base's recipe with the layer's packages on top.
    layer: Layer | None = None

    @property
    def all_components(self) -> tuple[str, ...]:
        extra = self.layer.components if self.layer is not None else ()
        return self.components + tuple(c for c in extra if c not in self.components)

    @property
    def extra_suites(self) -> tuple[str, ...]:
        return self.layer.suites if self.layer is not None else ()

    @property
    def kernel_include(self) -> str:
        """The kernel as mmdebstrap installs it: ``linux-image-amd64/trixie-backports``
        when the layer takes it from another suite."""
        if self.layer is not None and self.layer.kernel_suite is not None:
            return f"{self.kernel_package}/{self.layer.kernel_suite}"
        return self.kernel_package


_KEYS: dict[str, frozenset[str]] = {
    "debian": frozenset({"suite", "variant", "mirror", "components", "updates"}),
    "kernel": frozenset({"package"}),
    "packages": frozenset({"include"}),
    "squashfs": frozenset({"compression"}),
    "files": frozenset({"accel_exporter", "agent", "extra", "netconsole", "root_check"}),
}
_TOP = frozenset({"name", "users", *_KEYS})


class _Reader(RecipeReader):
    def __init__(self, source: Path, data: dict[str, object]) -> None:
        super().__init__(source, data, _KEYS)

    def strings(self, where: str, value: object, pattern: re.Pattern[str]) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(where, "must be a list of non-empty strings")
        for item in value:
            if not pattern.match(item):
                raise self.fail(where, f"{item!r} does not match {pattern.pattern}")
        return tuple(value)

    def file(self, where: str, relative: object) -> Path:
        if not isinstance(relative, str) or not relative:
            raise self.fail(where, "must be a non-empty string")
        path = (self.source.parent / relative).resolve()
        if not path.is_file():
            raise self.fail(where, f"{path} is not a file")
        return path


def _users(r: _Reader) -> tuple[User, ...]:
    value = r.data.get("users", [])
    if not isinstance(value, list) or not all(isinstance(u, dict) for u in value):
        raise r.fail("users", "must be an array of tables ([[users]])")
    users: list[User] = []
    for i, table in enumerate(value):
        where = f"users[{i}]"
        unknown = sorted(set(table) - {"name", "ssh_keys"})
        if unknown:
            raise r.fail(f"{where}.{unknown[0]}", "unknown key")
        name = table.get("name")
        if not isinstance(name, str) or not _USER.match(name):
            raise r.fail(f"{where}.name", "must be a user name (a-z, 0-9, _ and -)")
        keys = table.get("ssh_keys", [])
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise r.fail(f"{where}.ssh_keys", "must be a list of strings")
        for key in keys:
            if "\n" in key or not key.startswith(("ssh-", "ecdsa-", "sk-")):
                raise r.fail(f"{where}.ssh_keys", f"{key[:20]!r}… is not an OpenSSH public key")
        if name in {u.name for u in users}:
            raise r.fail(f"{where}.name", f"user {name!r} is listed twice")
        users.append(User(name, tuple(keys)))
    return tuple(users)


def _extra(r: _Reader) -> tuple[tuple[str, Path], ...]:
    value = r.table("files").get("extra", {})
    if not isinstance(value, dict):
        raise r.fail("files.extra", "must be a table of image path = file here")
    out: list[tuple[str, Path]] = []
    for target, relative in sorted(value.items()):
        where = f"files.extra.{target!r}"
        if not target.startswith("/") or ".." in target.split("/") or target.endswith("/"):
            raise r.fail(where, "the image path must be absolute, without '..', to a file")
        out.append((target, r.file(where, relative)))
    return tuple(out)


def _updates(r: _Reader) -> bool:
    value = r.table("debian").get("updates", True)
    if not isinstance(value, bool):
        raise r.fail("debian.updates", "must be true or false")
    return value


def sources_lines(
    mirror: str,
    suite: str,
    components: tuple[str, ...],
    updates: bool,
    extra_suites: tuple[str, ...] = (),
) -> list[str]:
    """The apt sources of the image: the suite, and with ``updates`` its -updates from the
    same mirror and its -security from the matching debian-security archive; then a layer's
    ``extra_suites`` (trixie-backports) from the mirror."""
    parts = " ".join(components)
    lines = [f"deb {mirror} {suite} {parts}"]
    if updates:
        security = (
            mirror + "-security" if mirror.rstrip("/").endswith("/debian") else SECURITY_MIRROR
        )
        lines += [
            f"deb {mirror} {suite}-updates {parts}",
            f"deb {security} {suite}-security {parts}",
        ]
    lines += [f"deb {mirror} {extra} {parts}" for extra in extra_suites]
    return lines


def parse_recipe(text: bytes, source: Path) -> RootfsRecipe:
    """Validate a recipe's bytes (``source`` names it in errors and anchors its paths)."""
    try:
        data = tomllib.loads(text.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RecipeError(source, "(file)", f"not valid TOML: {exc}") from exc
    if "base" in data:
        return _layered(data, text, source)
    unknown = sorted(set(data) - _TOP)
    if unknown:
        raise RecipeError(source, unknown[0], "unknown key")
    r = _Reader(source, data)
    variant = r.string("debian", "variant", default="apt")
    if variant not in VARIANTS:
        raise r.fail("debian.variant", f"{variant!r} is not one of {', '.join(sorted(VARIANTS))}")
    mirror_value = r.table("debian").get("mirror")
    mirror = None
    if mirror_value is not None:
        mirror = r.string("debian", "mirror")
        if not mirror.startswith(("http://", "https://", "file:/")):
            raise r.fail("debian.mirror", f"{mirror!r} is not an http(s):// or file:/ URL")
    components = r.strings(
        "debian.components", r.table("debian").get("components", ["main"]), _WORD
    )
    packages = r.strings("packages.include", r.table("packages").get("include"), _PACKAGE)
    kernel = r.string("kernel", "package", _PACKAGE)
    missing = [p for p in REQUIRED_PACKAGES if p not in packages]
    if missing:
        raise r.fail("packages.include", f"must include {', '.join(missing)}")
    compression = "zstd"
    if "squashfs" in data:
        compression = r.string("squashfs", "compression", default="zstd")
    if compression not in COMPRESSIONS:
        choices = ", ".join(sorted(COMPRESSIONS))
        raise r.fail("squashfs.compression", f"{compression!r} is not one of {choices}")
    return RootfsRecipe(
        source=source,
        sha256=hashlib.sha256(text).hexdigest(),
        name=r.string("", "name", _NAME),
        suite=r.string("debian", "suite", _WORD),
        variant=variant,
        mirror=mirror,
        components=components,
        updates=_updates(r),
        kernel_package=kernel,
        packages=packages,
        compression=compression,
        users=_users(r),
        agent=r.file("files.agent", r.table("files").get("agent")),
        extra=_extra(r),
        root_check=_optional_file(r, "root_check"),
        netconsole=_optional_file(r, "netconsole"),
        accel_exporter=_optional_file(r, "accel_exporter"),
    )


def _layered(data: dict[str, object], text: bytes, source: Path) -> RootfsRecipe:
    """A layer recipe: its base recipe, renamed, with the layer on top."""
    unknown = sorted(set(data) - {"name", "base", "layer"})
    if unknown:
        raise RecipeError(source, unknown[0], "unknown key in a layer recipe (name, base, layer)")
    layer = parse_layer(data, source)
    name = RecipeReader(source, data, {}).string("", "name", _NAME)
    base = load_recipe(layer.base)
    if base.layer is not None:
        raise RecipeError(source, "base", f"{layer.base} is itself a layer: name a base recipe")
    if layer.kernel_suite is not None and layer.kernel_suite == base.suite:
        raise RecipeError(source, "layer.kernel", f"{base.suite} is the base's own suite")
    combined = hashlib.sha256(bytes.fromhex(base.sha256) + text).hexdigest()
    return replace(base, source=source, sha256=combined, name=name, layer=layer)


def _optional_file(r: _Reader, key: str) -> Path | None:
    relative = r.table("files").get(key)
    return None if relative is None else r.file(f"files.{key}", relative)


def load_recipe(path: Path) -> RootfsRecipe:
    """Read and validate an image recipe; errors name the file and the key."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise RecipeError(path, "(file)", f"cannot read: {exc.strerror}") from exc
    return parse_recipe(text, path.resolve())


# ---------------------------------------------------------------------- the mirror


def mirror_from_sources(texts: Iterable[tuple[str, str]]) -> str | None:
    """The first Debian archive URI in apt's sources (not the security archive).

    ``texts`` are ``(file name, contents)`` pairs: ``*.list`` files in one-line format,
    ``*.sources`` files in deb822 format; disabled stanzas (``Enabled: no``) are skipped.
    """
    for name, text in texts:
        if name.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                if "deb" not in fields.get("types", "").split():
                    continue
                for uri in fields.get("uris", "").split():
                    if _debian_archive(uri):
                        return uri.rstrip("/")
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb" and _debian_archive(words[1]):
                    return words[1].rstrip("/")
    return None


def _debian_archive(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "file:/")) and "security" not in uri


def default_mirror() -> str:
    """This machine's configured Debian mirror, else ``FALLBACK_MIRROR``."""
    files = [APT_SOURCES] if APT_SOURCES.is_file() else []
    if APT_SOURCES_D.is_dir():
        files += sorted(p for p in APT_SOURCES_D.iterdir() if p.suffix in {".list", ".sources"})
    texts = []
    for path in files:
        try:
            texts.append((path.name, path.read_text(errors="replace")))
        except OSError:
            log.debug("cannot read %s", path)
    return mirror_from_sources(texts) or FALLBACK_MIRROR

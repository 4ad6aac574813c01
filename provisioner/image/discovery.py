"""Build the discovery image: Debian's kernel + a busybox initramfs that inventories a node.

::

    images/discovery.toml ─ load_recipe ─> DiscoveryRecipe
    linux-image-amd64 ─ debs.resolve ─> linux-image-6.1.0-NN-amd64 ─ fetch, extract
        boot/vmlinuz-<release>                       -> vmlinuz
        lib/modules/<release>/kernel/**.ko           -> the recipe's modules + their deps
    busybox-static ─ fetch, extract ─> bin/busybox    -> /bin/busybox + applet symlinks
    images/discovery/init, images/agent/provisioner-agent
        ─ cpio.gzip_newc ─> initrd        (deterministic: same inputs, same sha256)
    store/<name>@<version>/{vmlinuz, initrd, manifest.json}    (image/store.py)

Module selection, the dependency closure and the generated ``modules.dep``/``modules.alias``
are ``kmod``'s concern; this module validates the recipe, lays out the initrd, writes the
manifest and runs the build.

The pure parts (recipe validation, the initrd layout, the manifest) take plain data; the
builder at the end does the I/O.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from provisioner import __version__
from provisioner.image import ImageError, RecipeError, debs, guardrails
from provisioner.image.cpio import Device, DeviceKind, Directory, Entry, File, Symlink, gzip_newc
from provisioner.image.kmod import KernelTree, ModuleSet, collect_modules, first_existing
from provisioner.image.recipe import RecipeReader
from provisioner.image.store import ImageStore

log = logging.getLogger(__name__)

BUILDER_VERSION = 1  # bump when the initrd layout or the manifest changes
DEFAULT_CACHE = Path("/var/cache/provisioner")
CACHE_ENV = "PROVISIONER_CACHE"
KERNEL_PREFIX = "linux-image-"
AGENT_PATH = "usr/bin/provisioner-agent"
NETCONSOLE_PATH = "usr/bin/provisioner-netconsole"  # /init runs it once the NIC is up
INITRD_DIRS = ("dev", "proc", "sys", "run", "etc", "root", "mnt", "usr/bin")

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_APPLET = re.compile(r"^[a-z0-9_.-]+$|^\[\[?$")


def default_cache() -> Path:
    """``$PROVISIONER_CACHE`` or ``/var/cache/provisioner``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


# ---------------------------------------------------------------------------- recipe


@dataclass(frozen=True)
class DiscoveryRecipe:
    """``images/discovery.toml``, validated; file paths made absolute."""

    source: Path
    sha256: str
    name: str
    kernel_package: str
    busybox_package: str
    applets: tuple[str, ...]
    modules: tuple[str, ...]
    exclude: tuple[str, ...]
    init: Path
    agent: Path
    netconsole: Path | None = None  # kernel messages to the control node (netconsole)


_RECIPE_KEYS: dict[str, frozenset[str]] = {
    "kernel": frozenset({"package"}),
    "busybox": frozenset({"package", "applets"}),
    "modules": frozenset({"include", "exclude"}),
    "files": frozenset({"init", "agent", "netconsole"}),
}


class _Reader(RecipeReader):
    def __init__(self, source: Path, data: dict[str, object]) -> None:
        super().__init__(source, data, _RECIPE_KEYS)

    def strings(self, table: str, key: str, *, required: bool) -> tuple[str, ...]:
        value = self.table(table).get(key)
        where = f"{table}.{key}"
        if value is None and not required:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(where, "must be a list of non-empty strings")
        if required and not value:
            raise self.fail(where, "must not be empty")
        return tuple(value)

    def file(self, key: str) -> Path:
        path = (self.source.parent / self.string("files", key)).resolve()
        if not path.is_file():
            raise self.fail(f"files.{key}", f"{path} is not a file")
        return path


def parse_recipe(text: bytes, source: Path) -> DiscoveryRecipe:
    """Validate a recipe's bytes (``source`` names it in errors and anchors its paths)."""
    try:
        data = tomllib.loads(text.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RecipeError(source, "(file)", f"not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - set(_RECIPE_KEYS) - {"name"})
    if unknown:
        raise RecipeError(source, unknown[0], "unknown key")
    r = _Reader(source, data)
    modules = r.strings("modules", "include", required=True)
    exclude = r.strings("modules", "exclude", required=False)
    for pattern in (*modules, *exclude):
        if pattern.startswith("/") or ".." in pattern.split("/"):
            raise r.fail("modules", f"{pattern!r} must be relative to lib/modules/<release>/kernel")
    applets = r.strings("busybox", "applets", required=True)
    for applet in applets:
        if not _APPLET.match(applet):
            raise r.fail("busybox.applets", f"{applet!r} is not an applet name")
    return DiscoveryRecipe(
        source=source,
        sha256=hashlib.sha256(text).hexdigest(),
        name=r.string("", "name", _NAME),
        kernel_package=r.string("kernel", "package"),
        busybox_package=r.string("busybox", "package"),
        applets=applets,
        modules=modules,
        exclude=exclude,
        init=r.file("init"),
        agent=r.file("agent"),
        netconsole=r.file("netconsole") if "netconsole" in r.table("files") else None,
    )


def load_recipe(path: Path) -> DiscoveryRecipe:
    """Read and validate a discovery recipe; errors name the file and the key."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise RecipeError(path, "(file)", f"cannot read: {exc.strerror}") from exc
    return parse_recipe(text, path.resolve())


# ----------------------------------------------------------------------- the initrd


def initrd_entries(
    recipe: DiscoveryRecipe, release: str, modules: ModuleSet, busybox: bytes
) -> list[Entry]:
    """Everything in the initrd: /init, busybox + applets, the agent, the modules."""
    entries: list[Entry] = [Directory(d) for d in INITRD_DIRS]
    entries += [
        Directory("tmp", 0o1777),
        Device("dev/console", DeviceKind.CHAR, 5, 1, 0o600),
        Device("dev/null", DeviceKind.CHAR, 1, 3, 0o666),
        File("init", recipe.init.read_bytes(), 0o755),
        File(AGENT_PATH, recipe.agent.read_bytes(), 0o755),
        *(
            [File(NETCONSOLE_PATH, recipe.netconsole.read_bytes(), 0o755)]
            if recipe.netconsole
            else []
        ),
        File("bin/busybox", busybox, 0o755),
        Symlink("sbin", "bin"),  # the kernel's request_module() runs /sbin/modprobe
    ]
    entries += [Symlink(f"bin/{applet}", "busybox") for applet in sorted(set(recipe.applets))]
    moddir = f"lib/modules/{release}"
    entries += [File(f"{moddir}/{m.path}", m.data, 0o644) for m in modules.modules]
    entries += [File(f"{moddir}/{name}", text.encode()) for name, text in modules.index.items()]
    return entries


# ---------------------------------------------------------------------- the manifest


@dataclass(frozen=True)
class Artifact:
    file: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``: what was built, from what, by which builder."""

    name: str
    kernel_package: str
    kernel_version: str
    kernel_release: str
    busybox_package: str
    busybox_version: str
    module_count: int
    builtin_matches: tuple[str, ...]
    vmlinuz: Artifact
    initrd: Artifact
    built_at: str
    build_seconds: float
    recipe_sha256: str
    builder_version: int
    provisioner_version: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data = json.loads(text)
            data["vmlinuz"] = Artifact(**data["vmlinuz"])
            data["initrd"] = Artifact(**data["initrd"])
            data["builtin_matches"] = tuple(data["builtin_matches"])
            return cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise ImageError(f"not a valid image manifest: {exc}") from exc


def _artifact(name: str, data: bytes) -> Artifact:
    return Artifact(name, len(data), hashlib.sha256(data).hexdigest())


# ----------------------------------------------------------------------- the build


def build_discovery(
    recipe: Path, store: Path, cache: Path, progress: Callable[[str], None]
) -> Manifest:
    """Build ``store/<name>@<version>/{vmlinuz,initrd,manifest.json}`` from ``recipe``.

    Packages are downloaded (never installed) into ``cache/debs`` and reused; scratch
    files live under ``cache/tmp`` and are removed. The same recipe and cached packages
    give a byte-identical initrd.
    """
    started = time.monotonic()
    spec = load_recipe(recipe)
    kernel_pkg = debs.resolve(spec.kernel_package, prefix=KERNEL_PREFIX)
    busybox_pkg = debs.resolve(spec.busybox_package)
    debs_found = {}
    for package in (kernel_pkg, busybox_pkg):
        progress(f"download: {package.name} {package.version} ({package.size} bytes)")
        debs_found[package.name], cached = debs.fetch(package, cache)
        progress(f"download: {package.name} {'from the cache' if cached else 'fetched'}")
    scratch_root = cache / "tmp"
    try:
        scratch_root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="build-", dir=scratch_root))
    except OSError as exc:
        raise ImageError(f"cannot create a scratch directory under {scratch_root}: {exc}") from exc
    try:
        progress(f"extract: {kernel_pkg.name}, {busybox_pkg.name}")
        debs.extract(debs_found[kernel_pkg.name], scratch / "kernel")
        debs.extract(debs_found[busybox_pkg.name], scratch / "busybox")
        tree = KernelTree(scratch / "kernel")
        vmlinuz = tree.vmlinuz.read_bytes()
        busybox_root = scratch / "busybox"
        busybox = first_existing(busybox_root, ("bin/busybox", "usr/bin/busybox")).read_bytes()
        progress(f"modules: resolving {len(spec.modules)} patterns in {tree.release}")
        modules = collect_modules(spec, tree)
        progress(
            f"modules: {len(modules.modules)} modules with dependencies, "
            f"{len(modules.builtin)} built in ({', '.join(modules.builtin) or 'none'})"
        )
        initrd = gzip_newc(initrd_entries(spec, tree.release, modules, busybox))
        progress(f"cpio: initrd {len(initrd)} bytes")
    except OSError as exc:
        raise ImageError(f"cannot read the extracted packages: {exc}") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    manifest = Manifest(
        name=spec.name,
        kernel_package=kernel_pkg.name,
        kernel_version=kernel_pkg.version,
        kernel_release=tree.release,
        busybox_package=busybox_pkg.name,
        busybox_version=busybox_pkg.version,
        module_count=len(modules.modules),
        builtin_matches=modules.builtin,
        vmlinuz=_artifact("vmlinuz", vmlinuz),
        initrd=_artifact("initrd", initrd),
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        build_seconds=round(time.monotonic() - started, 2),
        recipe_sha256=spec.sha256,
        builder_version=BUILDER_VERSION,
        provisioner_version=__version__,
    )
    files = {"vmlinuz": vmlinuz, "initrd": initrd, "manifest.json": manifest.to_json().encode()}
    for finding in guardrails.check_initrd(manifest.initrd.size):
        progress(f"{finding.level}: {finding.reason}")
    guardrails.refuse_errors(spec.name, guardrails.check_initrd(manifest.initrd.size))
    image, new = ImageStore(store).publish_files(spec.name, files)
    unchanged = "" if new else " (unchanged: same files as before)"
    progress(f"done: {image.ref}{unchanged} in {image.path} (built in {manifest.build_seconds} s)")
    log.info("built %s: initrd %d bytes, %d modules", image.ref, len(initrd), manifest.module_count)
    return manifest

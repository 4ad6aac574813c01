"""Build the discovery image: Debian's kernel + a busybox initramfs that inventories a node.

::

    images/discovery.toml ─ load_recipe ─> DiscoveryRecipe
    linux-image-amd64 ─ debs.resolve ─> linux-image-6.1.0-NN-amd64 ─ fetch, extract
        boot/vmlinuz-<release>                       -> vmlinuz
        lib/modules/<release>/kernel/**.ko           -> the recipe's modules + their deps
    busybox-static ─ fetch, extract ─> bin/busybox    -> /bin/busybox + applet symlinks
    images/discovery/init, images/agent/provisioner-agent
        ─ cpio.gzip_newc ─> initrd        (deterministic: same inputs, same sha256)
    store/<name>/{vmlinuz, initrd, manifest.json}    (published with a rename)

Debian's kernel package ships no ``modules.dep`` or ``modules.alias`` (its postinst runs
depmod), so they are generated here from each module's ``.modinfo`` ELF section
(``depends=``, ``softdep=``, ``alias=``), for the included modules only; busybox modprobe
reads exactly these files. Compressed modules (``.ko.xz``/``.ko.gz``, Debian 13 on) are
decompressed at build time: busybox insmod is not relied upon to do it.

The pure parts (recipe validation, globbing, the dependency closure, modules.dep,
modinfo parsing) take plain data; the builder at the end does the I/O.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import lzma
import os
import re
import shutil
import struct
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from provisioner import __version__
from provisioner.image import ImageError, RecipeError, debs
from provisioner.image.cpio import Device, DeviceKind, Directory, Entry, File, Symlink, gzip_newc

log = logging.getLogger(__name__)

BUILDER_VERSION = 1  # bump when the initrd layout or the manifest changes
DEFAULT_CACHE = Path("/var/cache/provisioner")
CACHE_ENV = "PROVISIONER_CACHE"
KERNEL_PREFIX = "linux-image-"
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")
AGENT_PATH = "usr/bin/provisioner-agent"
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


_RECIPE_KEYS: dict[str, frozenset[str]] = {
    "kernel": frozenset({"package"}),
    "busybox": frozenset({"package", "applets"}),
    "modules": frozenset({"include", "exclude"}),
    "files": frozenset({"init", "agent"}),
}


class _Reader:
    """Typed access to a parsed recipe that names the file and key in every error."""

    def __init__(self, source: Path, data: dict[str, object]) -> None:
        self.source = source
        self.data = data

    def fail(self, key: str, reason: str) -> RecipeError:
        return RecipeError(self.source, key, reason)

    def table(self, key: str) -> dict[str, object]:
        value = self.data.get(key)
        if not isinstance(value, dict):
            raise self.fail(key, "missing table" if value is None else "must be a table")
        unknown = sorted(set(value) - _RECIPE_KEYS[key])
        if unknown:
            raise self.fail(f"{key}.{unknown[0]}", "unknown key")
        return value

    def string(self, table: str, key: str, pattern: re.Pattern[str] | None = None) -> str:
        value = self.table(table).get(key) if table else self.data.get(key)
        where = f"{table}.{key}" if table else key
        if not isinstance(value, str) or not value.strip():
            raise self.fail(where, "missing" if value is None else "must be a non-empty string")
        if pattern is not None and not pattern.match(value):
            raise self.fail(where, f"{value!r} does not match {pattern.pattern}")
        return value

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
    )


def load_recipe(path: Path) -> DiscoveryRecipe:
    """Read and validate a discovery recipe; errors name the file and the key."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise RecipeError(path, "(file)", f"cannot read: {exc.strerror}") from exc
    return parse_recipe(text, path.resolve())


# --------------------------------------------------------------- modules (pure parts)


def strip_compression(path: str) -> str:
    """``a/b.ko.xz`` -> ``a/b.ko``."""
    for suffix in MODULE_SUFFIXES[1:]:
        if path.endswith(suffix):
            return path[: -len(suffix)] + ".ko"
    return path


def module_name(path: str) -> str:
    """``kernel/drivers/nvme/host/nvme-core.ko`` -> ``nvme_core`` (as the kernel names it)."""
    base = strip_compression(path).rsplit("/", 1)[-1]
    return base.removesuffix(".ko").replace("-", "_")


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A path glob: ``*`` and ``?`` stay within a directory, ``**`` crosses them."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


@dataclass(frozen=True)
class Selection:
    """What the recipe's globs picked (paths ``kernel/...ko``) before dependencies."""

    modules: tuple[str, ...]
    builtin: tuple[str, ...]
    unmatched: tuple[str, ...]


def select_modules(
    include: Sequence[str],
    exclude: Sequence[str],
    modules: Iterable[str],
    builtin: Iterable[str],
) -> Selection:
    """Match globs (relative to ``kernel/``) against module and built-in paths."""
    rx_in = [(p, glob_regex(p)) for p in include]
    rx_out = [glob_regex(p) for p in exclude]
    hit: set[str] = set()

    def pick(paths: Iterable[str]) -> tuple[str, ...]:
        chosen = []
        for path in paths:
            rel = strip_compression(path).removeprefix("kernel/")
            matched = [p for p, rx in rx_in if rx.match(rel)]
            if matched and not any(rx.match(rel) for rx in rx_out):
                hit.update(matched)
                chosen.append(path)
        return tuple(sorted(chosen))

    chosen_modules = pick(modules)
    chosen_builtin = pick(builtin)
    unmatched = tuple(p for p in include if p not in hit)
    return Selection(chosen_modules, chosen_builtin, unmatched)


def parse_modules_dep(text: str) -> dict[str, tuple[str, ...]]:
    """``modules.dep`` -> {module path: its dependency paths, as listed}."""
    deps: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        head, colon, tail = line.partition(":")
        if colon and head.strip():
            deps[head.strip()] = tuple(tail.split())
    return deps


def dependency_closure(
    roots: Iterable[str], depends_of: Callable[[str], Sequence[str]]
) -> tuple[str, ...]:
    """``roots`` and everything they need, transitively, sorted.

    ``depends_of`` gives one module's direct dependencies (``parse_modules_dep(text)
    .__getitem__`` will do); a module it does not know is an ``ImageError`` naming who
    needed it.
    """
    seen: set[str] = set()
    todo = [(root, "") for root in roots]
    while todo:
        module, needed_by = todo.pop()
        if module in seen:
            continue
        try:
            deps = depends_of(module)
        except KeyError as exc:
            who = f" (needed by {needed_by})" if needed_by else ""
            raise ImageError(f"module {module} not found{who}") from exc
        seen.add(module)
        todo.extend((dep, module) for dep in deps if dep not in seen)
    return tuple(sorted(seen))


def load_order(module: str, depends_of: Callable[[str], Sequence[str]]) -> tuple[str, ...]:
    """The dependencies of ``module`` (not itself), each after everything it needs."""
    order: list[str] = []
    done: set[str] = {module}

    def visit(name: str) -> None:
        for dep in sorted(depends_of(name)):
            if dep not in done:
                done.add(dep)
                visit(dep)
                order.append(dep)

    visit(module)
    return tuple(order)


def render_modules_dep(modules: Iterable[str], depends_of: Callable[[str], Sequence[str]]) -> str:
    """``modules.dep`` as depmod writes it: deps listed last-loaded first."""
    lines = []
    for module in sorted(modules):
        deps = " ".join(reversed(load_order(module, depends_of)))
        lines.append(f"{module}: {deps}" if deps else f"{module}:")
    return "".join(line + "\n" for line in lines)


def render_modules_alias(aliases: Iterable[tuple[str, str]]) -> str:
    """``modules.alias`` from (alias pattern, module name) pairs, in the given order."""
    return "".join(f"alias {alias} {name}\n" for alias, name in aliases)


def parse_modinfo(elf: bytes) -> tuple[tuple[str, str], ...]:
    """The ``key=value`` pairs of a kernel module's ``.modinfo`` section (ELF64 LE)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", elf, shoff + index * shentsize
        )
        return name, offset, size

    _, str_off, str_size = section(shstrndx)
    strtab = elf[str_off : str_off + str_size]
    for index in range(shnum):
        name_at, offset, size = section(index)
        if strtab[name_at : strtab.index(b"\0", name_at)] == b".modinfo":
            raw = elf[offset : offset + size]
            pairs = []
            for item in raw.split(b"\0"):
                key, eq, value = item.decode(errors="replace").partition("=")
                if eq:
                    pairs.append((key, value))
            return tuple(pairs)
    return ()


def softdep_names(value: str) -> tuple[str, ...]:
    """``"pre: crc32c post: foo"`` -> ``("crc32c", "foo")``."""
    return tuple(word for word in value.split() if not word.endswith(":"))


# ------------------------------------------------------------------ the kernel's tree


@dataclass(frozen=True)
class ModuleFile:
    """One module as it goes into the initrd (decompressed) and what modinfo says."""

    path: str  # kernel/...ko, always uncompressed
    data: bytes
    depends: tuple[str, ...]  # module names
    softdeps: tuple[str, ...]  # module names or aliases, optional
    aliases: tuple[str, ...]


class KernelTree:
    """``lib/modules/<release>`` of an extracted kernel package; modules read on demand."""

    def __init__(self, root: Path) -> None:
        # Debian 12 ships /lib/modules; Debian 13 (merged /usr) ships /usr/lib/modules
        modules_dir = _first_existing(root, ("usr/lib/modules", "lib/modules"))
        releases = sorted(p.name for p in modules_dir.iterdir() if p.is_dir())
        if len(releases) != 1:
            raise ImageError(f"expected one kernel in {modules_dir}, found {releases}")
        self.release = releases[0]
        self.base = modules_dir / self.release
        self.vmlinuz = root / "boot" / f"vmlinuz-{self.release}"
        if not self.vmlinuz.is_file():
            raise ImageError(f"{self.vmlinuz} is missing from the kernel package")
        self.files: dict[str, Path] = {}
        for file in sorted((self.base / "kernel").rglob("*")):
            rel = file.relative_to(self.base).as_posix()
            if rel.endswith(MODULE_SUFFIXES) and file.is_file():
                self.files[strip_compression(rel)] = file
        self.by_name = {module_name(path): path for path in self.files}
        self.builtin_text = self._read_text("modules.builtin")
        self.order_text = self._read_text("modules.order")
        self.builtin = tuple(line.strip() for line in self.builtin_text.splitlines() if line)
        self._loaded: dict[str, ModuleFile] = {}

    def _read_text(self, name: str) -> str:
        try:
            return (self.base / name).read_text()
        except OSError as exc:
            raise ImageError(f"{self.base / name}: {exc.strerror}") from exc

    def load(self, path: str) -> ModuleFile:
        """The module at ``path`` (``kernel/...ko``), decompressed and its modinfo parsed."""
        if path in self._loaded:
            return self._loaded[path]
        file = self.files[path]  # KeyError: unknown module (dependency_closure reports it)
        data = _decompress(file)
        try:
            info = parse_modinfo(data)
        except (ValueError, struct.error) as exc:
            raise ImageError(f"{file}: unreadable module: {exc}") from exc
        # modinfo spells names as the files are named (xhci-hcd); the kernel says xhci_hcd
        depends = tuple(
            name.replace("-", "_")
            for key, value in info
            if key == "depends"
            for name in value.split(",")
            if name
        )
        softdeps = tuple(
            name.replace("-", "_")
            for key, value in info
            if key == "softdep"
            for name in softdep_names(value)
        )
        aliases = tuple(value for key, value in info if key == "alias")
        module = ModuleFile(path, data, depends, softdeps, aliases)
        self._loaded[path] = module
        return module

    def hard_depends(self, path: str) -> tuple[str, ...]:
        """Paths of the modules ``path`` cannot load without (modinfo ``depends=``)."""
        try:
            return tuple(self.by_name[name] for name in self.load(path).depends)
        except KeyError as exc:
            raise ImageError(f"{path} depends on {exc.args[0]}, which is not a module") from exc

    def wanted(self, path: str) -> tuple[str, ...]:
        """Hard dependencies plus the soft ones that exist as modules (for the closure)."""
        soft = (self.by_name[n] for n in self.load(path).softdeps if n in self.by_name)
        return tuple(dict.fromkeys((*self.hard_depends(path), *soft)))


def _first_existing(root: Path, candidates: Sequence[str]) -> Path:
    for candidate in candidates:
        if (root / candidate).exists():
            return root / candidate
    raise ImageError(f"none of {list(candidates)} in the extracted package at {root}")


def _decompress(file: Path) -> bytes:
    try:
        data = file.read_bytes()
        if file.name.endswith(".ko.xz"):
            return lzma.decompress(data)
        if file.name.endswith(".ko.gz"):
            return gzip.decompress(data)
    except (OSError, lzma.LZMAError, gzip.BadGzipFile) as exc:
        raise ImageError(f"{file}: cannot read module: {exc}") from exc
    if file.name.endswith(".ko.zst"):
        raise ImageError(f"{file}: zstd-compressed modules are not supported (no zstd in 3.11)")
    return data


@dataclass(frozen=True)
class ModuleSet:
    """The modules that go into the initrd and the index files busybox modprobe reads."""

    modules: tuple[ModuleFile, ...]
    builtin: tuple[str, ...]  # recipe matches satisfied by the kernel itself
    index: dict[str, str] = field(default_factory=dict)  # file name -> text


def collect_modules(recipe: DiscoveryRecipe, tree: KernelTree) -> ModuleSet:
    """The recipe's modules, their dependencies, and a generated modules.dep/alias/order."""
    selection = select_modules(recipe.modules, recipe.exclude, tree.files, tree.builtin)
    if selection.unmatched:
        raise ImageError(
            f"{recipe.source}: modules.include {list(selection.unmatched)} match no module "
            f"and nothing built into kernel {tree.release}"
        )
    paths = dependency_closure(selection.modules, tree.wanted)
    modules = tuple(tree.load(p) for p in paths)
    included = set(paths)
    order = [
        line.strip()
        for line in tree.order_text.splitlines()
        if strip_compression(line.strip()) in included
    ]
    listed = {strip_compression(line) for line in order}
    order += [p for p in paths if p not in listed]
    aliases = [(alias, module_name(m.path)) for m in modules for alias in m.aliases]
    index = {
        "modules.dep": render_modules_dep(paths, tree.hard_depends),
        "modules.alias": render_modules_alias(aliases),
        "modules.builtin": tree.builtin_text,
        "modules.order": "".join(strip_compression(p) + "\n" for p in order),
    }
    return ModuleSet(modules, selection.builtin, index)


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


def _publish(store: Path, name: str, files: dict[str, bytes]) -> Path:
    """Write ``files`` into a fresh directory beside ``store/name``, then rename it in."""
    final = store / name
    staging: Path | None = None
    try:
        store.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-new-", dir=store))
        for file, data in files.items():
            (staging / file).write_bytes(data)
        staging.chmod(0o755)
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}-old-", dir=store))
            os.rename(final, old / name)
        os.rename(staging, final)
        staging = None
        if old is not None:
            shutil.rmtree(old)
    except OSError as exc:
        raise ImageError(f"cannot publish the image into {final}: {exc}") from exc
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return final


def build_discovery(
    recipe: Path, store: Path, cache: Path, progress: Callable[[str], None]
) -> Manifest:
    """Build ``store/<name>/{vmlinuz,initrd,manifest.json}`` from ``recipe``.

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
        busybox = _first_existing(busybox_root, ("bin/busybox", "usr/bin/busybox")).read_bytes()
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
    final = _publish(store, spec.name, files)
    progress(f"done: {final} (built in {manifest.build_seconds} s)")
    log.info("built %s: initrd %d bytes, %d modules", final, len(initrd), manifest.module_count)
    return manifest

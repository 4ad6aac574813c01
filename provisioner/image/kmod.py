"""Kernel modules: what a recipe's globs pick, what they need, and busybox modprobe's files.

::

    lib/modules/<release>/kernel/**.ko{,.xz,.gz}  ─ KernelTree ─> paths, modinfo on demand
    recipe globs ─ select_modules ─> Selection ─ dependency_closure ─> every module needed
        ─ collect_modules ─> ModuleSet: decompressed modules + modules.{dep,alias,builtin,order}

Debian's kernel package ships no ``modules.dep`` or ``modules.alias`` (its postinst runs
depmod), so they are generated here from each module's ``.modinfo`` ELF section
(``depends=``, ``softdep=``, ``alias=``), for the included modules only; busybox modprobe
reads exactly these files. Compressed modules (``.ko.xz``/``.ko.gz``, Debian 13 on) are
decompressed at build time: busybox insmod is not relied upon to do it.

The pure parts (globbing, the dependency closure, modules.dep, modinfo parsing) take plain
data; ``KernelTree`` reads the extracted package.
"""

from __future__ import annotations

import gzip
import lzma
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from provisioner.image import ImageError

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


class ModuleRecipe(Protocol):
    """What ``collect_modules`` needs of a recipe (``discovery.DiscoveryRecipe`` has it)."""

    @property
    def source(self) -> Path: ...
    @property
    def modules(self) -> Sequence[str]: ...
    @property
    def exclude(self) -> Sequence[str]: ...


# ---------------------------------------------------------------------- pure parts


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
        modules_dir = first_existing(root, ("usr/lib/modules", "lib/modules"))
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
        data = read_module(file)
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


def first_existing(root: Path, candidates: Sequence[str]) -> Path:
    for candidate in candidates:
        if (root / candidate).exists():
            return root / candidate
    raise ImageError(f"none of {list(candidates)} in the extracted package at {root}")


def read_module(file: Path) -> bytes:
    """A module file's ELF bytes (``.ko``, ``.ko.xz``, ``.ko.gz``; ImageError otherwise)."""
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


def collect_modules(recipe: ModuleRecipe, tree: KernelTree) -> ModuleSet:
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

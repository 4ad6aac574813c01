"""A layer recipe: a base image recipe plus what one kind of hardware needs.

::

    # images/debian-trixie-vulkan.toml
    name = "debian-trixie-vulkan"
    base = "debian-trixie.toml"            # the base recipe, relative to this file

    [layer]
    description = "Mesa's Vulkan drivers (lavapipe, RADV, ANV) and vulkaninfo"
    packages = ["mesa-vulkan-drivers", "vulkan-tools"]
    components = ["non-free-firmware"]     # added to the base's apt components
    suites = ["trixie-backports"]          # extra suites (apt still prefers the base's)
    kernel = "trixie-backports"            # the kernel metapackage from this suite
    dkms = true                            # build every DKMS module for the image's kernel
    modules = ["amdxdna"]                  # the built image's kernel must have these
    max_mib = 600                          # what the layer may add to the root, at most

A layer builds into an image of its own name (one squashfs per profile's image, see
docs/images.md for why not a stacked second squashfs): the base's packages first, then the
layer's installed on top in the same build, so the manifest can tell the two apart.

Pure: TOML data in, a validated :class:`Layer` out; errors name the file and the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from provisioner.image.recipe import RecipeReader

LAYER_KEYS = frozenset(
    {"description", "packages", "components", "suites", "kernel", "dkms", "modules", "max_mib"}
)
# A package, optionally from a named suite: "linux-headers-amd64/trixie-backports".
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(/[a-z0-9][a-z0-9.-]*)?$")
_WORD = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
_MODULE = re.compile(r"^[a-zA-Z0-9_-]+$")


@dataclass(frozen=True)
class Layer:
    """The ``[layer]`` table of a layer recipe, validated."""

    source: Path  # the layer recipe
    base: Path  # the base recipe it extends (absolute)
    description: str
    packages: tuple[str, ...]
    components: tuple[str, ...]  # added to the base's
    suites: tuple[str, ...]  # extra suites beside the base's (its -updates, -security)
    kernel_suite: str | None  # the kernel metapackage from this suite, not the base's
    dkms: bool  # build every DKMS module for the image's kernel at build time
    modules: tuple[str, ...]  # kernel modules the built image must carry
    max_bytes: int | None  # what the layer may add to the unpacked root


def _strings(r: RecipeReader, key: str, pattern: re.Pattern[str]) -> tuple[str, ...]:
    value = r.table("layer").get(key, [])
    where = f"layer.{key}"
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise r.fail(where, "must be a list of non-empty strings")
    for item in value:
        if not pattern.match(item):
            raise r.fail(where, f"{item!r} does not match {pattern.pattern}")
    if len(set(value)) != len(value):
        raise r.fail(where, "lists an entry twice")
    return tuple(value)


def parse_layer(data: dict[str, object], source: Path) -> Layer:
    """The layer of a recipe whose top level has ``base`` (``source``: the recipe file)."""
    r = RecipeReader(source, data, {"layer": LAYER_KEYS})
    base_value = data.get("base")
    if not isinstance(base_value, str) or not base_value.endswith(".toml"):
        raise r.fail("base", "must name the base recipe file (debian-trixie.toml)")
    base = (source.parent / base_value).resolve()
    if not base.is_file():
        raise r.fail("base", f"{base} is not a file")
    if base == source.resolve():
        raise r.fail("base", "a layer cannot be its own base")
    table = r.table("layer")
    packages = _strings(r, "packages", _PACKAGE)
    suites = _strings(r, "suites", _WORD)
    kernel = table.get("kernel")
    if kernel is not None:
        kernel = r.string("layer", "kernel", _WORD)
    dkms = table.get("dkms", False)
    if not isinstance(dkms, bool):
        raise r.fail("layer.dkms", "must be true or false")
    max_mib = table.get("max_mib")
    if max_mib is not None and (
        not isinstance(max_mib, int) or isinstance(max_mib, bool) or max_mib <= 0
    ):
        raise r.fail("layer.max_mib", "must be a positive whole number of MiB")
    description = table.get("description", "")
    if not isinstance(description, str):
        raise r.fail("layer.description", "must be a string")
    if not packages and kernel is None:
        raise r.fail("layer.packages", "a layer adds packages or a kernel: it has neither")
    return Layer(
        source=source,
        base=base,
        description=description.strip(),
        packages=packages,
        components=_strings(r, "components", _WORD),
        # The kernel's suite is a source too (its packages are taken only where named).
        suites=suites + ((kernel,) if kernel is not None and kernel not in suites else ()),
        kernel_suite=kernel,
        dkms=dkms,
        modules=_strings(r, "modules", _MODULE),
        max_bytes=None if max_mib is None else max_mib * 2**20,
    )

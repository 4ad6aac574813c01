"""Boot images that the appliance builds and serves.

::

    images/discovery.toml ──> discovery.load_recipe ──> DiscoveryRecipe
    debs.py       apt-cache / apt-get download / dpkg-deb, a cache keyed by name+version
    kmod.py       kernel modules: modinfo, dependency closure, modules.dep/alias
    discovery.py  the recipe, the initrd's contents, the build and its manifest
    cpio.py       a pure, deterministic newc writer for the initrd

Errors raised here (subclasses of ``ProvisionerError``)::

    ImageError                  an image could not be built: a package, a command, a file
    └── RecipeError             a bad image recipe: names the file, the key and why

The recipes (what goes in) live in the top-level ``images/`` directory; this package is
only the machinery that turns a recipe into ``vmlinuz``, ``initrd`` and ``manifest.json``.
"""

from __future__ import annotations

from pathlib import Path

from provisioner.errors import ProvisionerError


class ImageError(ProvisionerError):
    """An image could not be built (a package, a command or a file failed us)."""


class RecipeError(ImageError):
    """An image recipe is invalid; names the file, the key and the reason."""

    def __init__(self, source: Path, key: str, reason: str) -> None:
        self.source = source
        self.key = key
        self.reason = reason
        super().__init__(f"{source}: {key}: {reason}")


__all__ = ["ImageError", "RecipeError"]

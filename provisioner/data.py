"""Where the data shipped with provisioner lives: hwprofiles/, bootconf/, images/, postinstall/.

The design keeps these folders at the top of the repository, beside the package. Two
layouts have them:

- a checkout (an editable install too): the repository's own folders, found next to the
  ``provisioner`` package and the ``pyproject.toml`` above it;
- an installed wheel: the same folders shipped as package data in
  ``provisioner/_data/<folder>`` (pyproject.toml maps each folder to the package
  ``provisioner._data.<folder>``), found with :mod:`importlib.resources`.

The checkout needs its ``pyproject.toml`` to count: in an installed layout the folder
above the package is ``site-packages``, where another distribution may have put a
top-level ``images`` or ``postinstall``. Callers get plain :class:`~pathlib.Path` objects
(Jinja loaders, globs and subprocess arguments need files on disk): pip unpacks wheels,
and running provisioner from a zip is not supported. The environment overrides
(``$PROVISIONER_HWPROFILES``, ``$PROVISIONER_BOOTCONF``) stay with the modules that read
those folders; this module says only where the shipped copy is.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

FOLDERS = ("hwprofiles", "bootconf", "images", "postinstall")
SHIPPED = "_data"  # the folders' home inside the package, in a wheel

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent


def in_checkout() -> bool:
    """True when this package runs from a source tree (a checkout, an editable install)."""
    return (_CHECKOUT / "pyproject.toml").is_file()


def folder(name: str) -> Path:
    """The data folder ``name`` (one of :data:`FOLDERS`): the checkout's, else the wheel's."""
    if name not in FOLDERS:
        raise ValueError(f"no data folder {name!r}: one of {', '.join(FOLDERS)}")
    if in_checkout() and (_CHECKOUT / name).is_dir():
        return _CHECKOUT / name
    shipped = resources.files(__package__ or "provisioner") / SHIPPED / name
    return shipped if isinstance(shipped, Path) else Path(str(shipped))


HWPROFILES = folder("hwprofiles")  # profiles, their JSON schema, the accelerator table
BOOTCONF = folder("bootconf")  # the iPXE script templates
IMAGES = folder("images")  # image recipes and the files they put in images
POSTINSTALL = folder("postinstall")  # post-install recipes and templates/

ACCELERATOR_TABLE = HWPROFILES / "accelerators.yaml"
DISCOVERY_RECIPE = IMAGES / "discovery.toml"
# A module of the package, not a data folder: a vLLM venv's Python runs it as a script
# (``python -I``, so it cannot import provisioner), hence a file path.
VLLM_ARGCHECK = _PACKAGE / "postinstall" / "vllm_argcheck.py"

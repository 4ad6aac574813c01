"""provisioner/data.py points at the checkout's folders, and pyproject.toml ships them all.

The wheel itself is built and installed in tests/integration/test_wheel.py (slow tier);
these checks are the fast half: every path data.py names exists here, and pyproject.toml
lists every package and every data subfolder (``packages`` is a list, not ``find``).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from provisioner import data

ROOT = Path(__file__).resolve().parents[2]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
    "setuptools"
]
PATHS = {name: value for name, value in vars(data).items() if isinstance(value, Path)}


def test_data_names_the_paths_callers_use() -> None:
    assert {"HWPROFILES", "BOOTCONF", "IMAGES", "POSTINSTALL"} <= PATHS.keys()
    assert {"ACCELERATOR_TABLE", "DISCOVERY_RECIPE", "VLLM_ARGCHECK"} <= PATHS.keys()


@pytest.mark.parametrize("name", sorted(n for n in PATHS if not n.startswith("_")))
def test_every_path_exists_in_the_checkout(name: str) -> None:
    path = PATHS[name]
    assert path.exists(), f"provisioner.data.{name}: {path}"
    assert path.is_relative_to(ROOT), f"provisioner.data.{name}: {path} is not in {ROOT}"


def test_the_folders_are_the_top_level_ones() -> None:
    assert data.in_checkout()
    for folder in data.FOLDERS:
        assert data.folder(folder) == ROOT / folder
    with pytest.raises(ValueError, match="no data folder 'tests'"):
        data.folder("tests")


def _packages_on_disk() -> set[str]:
    """What the wheel must carry: the code packages and each data folder and subfolder."""
    code = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "provisioner").rglob("*.py")
    }
    shipped = {
        ".".join(("provisioner", data.SHIPPED, *d.relative_to(ROOT).parts))
        for folder in data.FOLDERS
        for d in [ROOT / folder, *(ROOT / folder).rglob("*")]
        if d.is_dir() and d.name != "__pycache__"
    }
    return code | shipped


def test_pyproject_lists_every_package_and_data_folder() -> None:
    listed = set(SETUPTOOLS["packages"])
    on_disk = _packages_on_disk()
    assert not on_disk - listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"
    assert not listed - on_disk, f"gone, drop from packages: {sorted(listed - on_disk)}"


def test_pyproject_ships_each_folder_from_the_top_level() -> None:
    prefix = f"provisioner.{data.SHIPPED}."
    assert SETUPTOOLS["package-dir"] == {prefix + f: f for f in data.FOLDERS}
    shipped = {p for p in SETUPTOOLS["packages"] if p.startswith(prefix)}
    # Besides the data folders: the dashboard's templates and static files (provisioner/web).
    web = {"provisioner.web": ["templates/*", "static/*"]}
    assert {**{p: ["*"] for p in shipped}, **web} == SETUPTOOLS["package-data"]

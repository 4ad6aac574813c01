"""The wheel, installed where no checkout is: it finds the data folders it ships.

A module fixture builds the wheel (``pip wheel``, build isolation: setuptools from PyPI or
pip's cache) from a copy of the checkout, then installs it with its dependencies, pinned
by ``constraints.txt``, into a fresh venv under tmp: no ``--system-site-packages``, so
nothing of the checkout's ``.venv`` can stand in for what the wheel lacks. Every command
runs the venv's console script from a folder outside the checkout, with no
``PROVISIONER_*`` variable that points back at it.

Slow tier (``netns``): the build and install take about a minute, and ``serve`` runs in a
namespace of its own. Building the discovery image with the installed wheel is the
``mirror`` tier (the Debian mirror, root).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from ipaddress import IPv4Interface
from pathlib import Path

import pytest

from provisioner.lab.netns import HostSpec, LabNetwork
from provisioner.profiles import load_profiles
from tests.integration.conftest import make_image, need, need_root, stop_process, write_config

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "constraints.txt"
DATA_FOLDERS = ("hwprofiles", "bootconf", "images", "postinstall")
SHIPPED_AS = "provisioner/_data"  # where the wheel puts them (provisioner/data.py)
# Left out of the copy the wheel is built from: what a clean clone does not have.
NOT_COPIED = {".git", ".venv", "build", "dist", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
SERVER = "10.76.0.1"
RANGE = "10.76.0.100-10.76.0.150"
HTTP_PORT = 8080
MAC = "52:54:00:76:00:01"
BEHALF = ("-H", "X-Provisioner-On-Behalf: test")  # the appliance asks for a node's script


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    work: Path  # the commands' working directory, outside the checkout
    env: dict[str, str]

    def argv(self, command: str, *args: str) -> list[str]:
        return [str(self.venv / "bin" / command), *args]

    def run(
        self, command: str, *args: str, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(command, *args), cwd=self.work, env=self.env, capture_output=True,
            text=True, timeout=timeout, check=False,
        )  # fmt: skip


def _ignore(folder: str, names: list[str]) -> set[str]:
    top = Path(folder).resolve() == ROOT
    return {
        n for n in names
        if n == "__pycache__" or (top and (n in NOT_COPIED or n.endswith(".egg-info")))
    }  # fmt: skip


def _checked(argv: list[str], what: str, timeout: float) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        pytest.fail(f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def _clean_env(venv: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith("PROVISIONER_") and k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
    }  # fmt: skip
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("wheel")
    src, dist, venv, work = tmp / "src", tmp / "dist", tmp / "venv", tmp / "work"
    shutil.copytree(ROOT, src, ignore=_ignore, symlinks=True)
    _checked(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
         "--disable-pip-version-check", "--wheel-dir", str(dist), str(src)],
        "building the wheel", 600,
    )  # fmt: skip
    (wheel,) = dist.glob("provisioner-*.whl")
    _checked([sys.executable, "-m", "venv", str(venv)], "python -m venv", 120)
    _checked(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", "-c", str(CONSTRAINTS), str(wheel)],
        "installing the wheel", 600,
    )  # fmt: skip
    work.mkdir()
    return Installed(wheel, venv, work, _clean_env(venv))


def test_the_wheel_ships_every_data_file_and_no_tests(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for folder in DATA_FOLDERS:
        files = [
            p for p in (ROOT / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts
        ]
        assert files, folder
        missing = [
            str(p.relative_to(ROOT)) for p in files
            if f"{SHIPPED_AS}/{p.relative_to(ROOT)}" not in names
        ]  # fmt: skip
        assert not missing, f"not in {installed.wheel.name}: {missing}"
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"provisioner", installed.wheel.name.split("-py3")[0] + ".dist-info"}, tops


def test_the_installed_package_is_the_wheel_not_the_checkout(installed: Installed) -> None:
    code = "import json, provisioner; print(json.dumps(provisioner.__file__))"
    done = installed.run("python", "-c", code)
    assert done.returncode == 0, done.stderr
    assert Path(json.loads(done.stdout)).is_relative_to(installed.venv), done.stdout


def test_profile_list_finds_the_shipped_profiles(installed: Installed) -> None:
    done = installed.run("provisioner", "profile", "list", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    listed = json.loads(done.stdout)
    assert {p["name"] for p in listed} == {p.name for p in load_profiles(ROOT / "hwprofiles")}
    assert all(Path(p["file"]).is_relative_to(installed.venv) for p in listed), listed
    done = installed.run("provisioner", "profile", "validate")  # against the shipped schema
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_build_finds_the_shipped_recipes(installed: Installed) -> None:
    """A name that is not a recipe: the error lists the recipes in the shipped images/."""
    cfg = installed.work / "recipes.toml"
    write_config(cfg, interface="lo", address="127.0.0.1/8", mode="proxy",
                 state=installed.work / "recipes-state", http_port=8080)  # fmt: skip
    done = installed.run("provisioner", "--config", str(cfg), "image", "build", "no-such-recipe")
    assert done.returncode != 0
    shipped = ", ".join(sorted(p.stem for p in (ROOT / "images").glob("*.toml")))
    assert "debian-trixie-vulkan" in shipped  # layers are shipped with their bases
    assert f"one of {shipped}" in done.stderr, done.stderr


def test_recipes_templates_and_tables_load_from_the_wheel(installed: Installed) -> None:
    code = """if True:
        from pathlib import Path
        import sys
        from provisioner import data
        from provisioner.discovery.accelerators import default_table
        from provisioner.image.discovery import load_recipe as image_recipe
        from provisioner.postinstall.recipes import load_recipe, template_env
        from provisioner.boot.ipxe import bootconf_dir
        venv = Path(sys.prefix)
        for path in (data.HWPROFILES, data.BOOTCONF, data.IMAGES, data.POSTINSTALL):
            assert path.is_dir() and path.is_relative_to(venv), path
        assert bootconf_dir().is_relative_to(venv)
        default_table()
        image_recipe(data.DISCOVERY_RECIPE)
        for recipe in sorted(data.POSTINSTALL.glob("*.yaml")):
            load_recipe(recipe.stem)
        env = template_env()
        for name in env.list_templates():
            env.get_template(name)
        print("ok")
    """
    done = installed.run("python", "-c", code)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr


@pytest.mark.root
def test_serve_from_the_wheel_answers_in_a_namespace(installed: Installed, tmp_path: Path) -> None:
    need_root()
    need("ip", "curl")
    state = tmp_path / "state"
    config = tmp_path / "provisioner.toml"
    write_config(config, interface="eth0", address=f"{SERVER}/24", mode="full", state=state,
                 http_port=HTTP_PORT, dhcp_range=RANGE, bind=SERVER)  # fmt: skip
    make_image(state)
    log = tmp_path / "serve.log"
    base = f"http://{SERVER}:{HTTP_PORT}"
    with (
        LabNetwork([HostSpec("prov", IPv4Interface(f"{SERVER}/24"))]) as lab,
        open(log, "wb") as out,
    ):
        ns = lab.host("prov")
        proc = subprocess.Popen(  # `ip netns exec` keeps the environment it is given
            ns.argv(installed.argv("provisioner", "--config", str(config), "serve")),
            cwd=installed.work, env=installed.env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while ns.run(
                ["curl", "-sf", "-o", "/dev/null", f"{base}/healthz"], check=False
            ).returncode:
                assert proc.poll() is None, f"serve exited {proc.returncode}:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"serve did not come up:\n{log.read_text()}"
                time.sleep(0.2)
            script = ns.run(["curl", "-sf", *BEHALF, f"{base}/boot/{MAC}.ipxe"], check=False)
            assert script.returncode == 0, log.read_text()
            assert script.stdout.startswith("#!ipxe"), script.stdout
            assert f"/images/discovery@1/vmlinuz?mac={MAC}" in script.stdout, script.stdout
        finally:
            stop_process(proc)


@pytest.mark.mirror
@pytest.mark.root
def test_image_build_discovery_from_the_wheel(installed: Installed, tmp_path: Path) -> None:
    """The discovery image from the shipped recipe, /init and agent (apt: the mirror)."""
    need_root()
    cfg = tmp_path / "provisioner.toml"
    write_config(cfg, interface="lo", address="127.0.0.1/8", mode="proxy",
                 state=tmp_path / "state", http_port=8080)  # fmt: skip
    env = dict(installed.env)
    if os.environ.get("PROVISIONER_CACHE"):
        env["PROVISIONER_CACHE"] = os.environ["PROVISIONER_CACHE"]  # the apt cache, shared
    argv = installed.argv(
        "provisioner", "--config", str(cfg), "image", "build", "discovery", "--json"
    )
    done = subprocess.run(
        argv, cwd=installed.work, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    image = json.loads(done.stdout)
    assert image["name"] == "discovery" and image["sizes"]["initrd"] > 0, image
    assert Path(image["path"]).is_relative_to(tmp_path), image

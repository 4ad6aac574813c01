"""`postinstall run` builds the artifacts its plan needs: a fake builder (the build function
injected), a real store, a registry of enrolled nodes. No compiler, no download, no socket."""

from __future__ import annotations

import hashlib
import json
import struct
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.artifacts import ArtifactError
from provisioner.artifacts.llama import BuildSpec, cache_key
from provisioner.artifacts.store import ArtifactStore, Manifest
from provisioner.artifacts.wheelhouse import VllmBackend, WheelhouseSpec, python_tag
from provisioner.clusters.engines import engine_for
from provisioner.clusters.engines.artifacts import ArtifactNeed, ArtifactSpec, Progress, ensure
from provisioner.clusters.plan import postinstall_plan
from provisioner.clusters.site import Site
from provisioner.clusters.spec import ClusterError
from provisioner.config import Mode, load_config, render_config
from provisioner.image.store import ImageStore
from provisioner.models.store import ModelStore
from provisioner.postinstall.plan import NodePlan
from provisioner.profiles import Engine
from provisioner.records import Cluster, Served
from provisioner.registry import Registry
from provisioner.states import NodeEvent

NODES = {f"node{i}": (f"52:54:00:ab:00:0{i}", f"10.31.0.10{i}") for i in range(2)}
LLAMA = Cluster("c1", Engine.LLAMA_RPC, "tiny", "node0", ("node1",))
LLAMA_MISSING = (
    "no llama.cpp build (cpu, x86-64-v2) in {root}: provisioner artifact build llama.cpp"
)


class FakeBuilder:
    """Builds a real (tiny) tarball in its own cache, keyed by the spec, as the real
    builds are: a second call with the same spec comes from the cache."""

    def __init__(self, cache: Path, *, fail: str | None = None):
        self.cache = cache
        self.fail = fail
        self.calls: list[ArtifactSpec] = []
        self.events: list[str] | None = None  # shared with a test's fake connect, for order

    def __call__(self, spec: ArtifactSpec, progress: Progress) -> tuple[Path, Manifest, bool]:
        self.calls.append(spec)
        if self.events is not None:
            self.events.append("build")
        progress("fake build: compiling")
        if self.fail:
            raise ArtifactError(self.fail)
        assert isinstance(spec, BuildSpec)
        name = f"llama.cpp-b1-{spec.backend.value}-{spec.target()}"
        key = cache_key({"name": name})
        tarball = self.cache / f"{key}.tar.gz"
        cached = tarball.is_file()
        if not cached:
            self.cache.mkdir(parents=True, exist_ok=True)
            with tarfile.open(tarball, "w:gz"):
                pass
        data = tarball.read_bytes()
        manifest = Manifest(
            name, f"{name}.tar.gz", hashlib.sha256(data).hexdigest(), len(data), key,
            binaries={"server": "bin/llama-server", "rpc": "bin/rpc-server"},
            built_at=time.time(), build_seconds=0.5,
        )  # fmt: skip
        return tarball, manifest, cached


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    path = tmp_path / "provisioner.toml"
    path.write_text(render_config(
        interface="eth0", address="10.31.0.1/24", mode=Mode.FULL,
        dhcp_range="10.31.0.100-10.31.0.120", state_dir=tmp_path / "state",
    ))  # fmt: skip
    cfg = load_config(path)
    registry = Registry(cfg.registry_path)
    for name, (mac, ip) in NODES.items():
        registry.touch_node(mac, ip=ip)
        registry.set_hostname(mac, name)
        registry.store_inventory(mac, "{}")
        registry.set_profile(mac, "qemu-lab")
        registry.transition(mac, NodeEvent.MATCH)
        registry.transition(mac, NodeEvent.ENROLL)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + struct.pack("<I", 3) + bytes(64))
    ModelStore(cfg.state_dir / "models").add(str(gguf), "tiny")
    yield Site.open(cfg, registry)
    registry.close()


def stored(site: Site) -> list[str]:
    """Every file in the artifact store, dot files (a half-written temporary) included."""
    root = site.artifacts_dir
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def runtime_step(plans: list[NodePlan]) -> str:
    head = next(p for p in plans if p.role == "head")
    step = next(s for s in head.steps if s.name == "llama.cpp runtime")
    return step.action


def test_a_missing_llama_build_is_built_once_with_progress_then_taken_from_the_store(
    site: Site, tmp_path: Path
) -> None:
    builder = FakeBuilder(tmp_path / "cache")
    lines: list[str] = []
    plans = postinstall_plan(site, LLAMA, build=True, progress=lines.append, builder=builder)
    assert builder.calls == [BuildSpec()]  # what `artifact build llama.cpp` builds
    assert lines[0] == (
        f"llama.cpp (cpu, x86-64-v2): not in {site.artifacts_dir}; building it "
        "(provisioner artifact build llama.cpp)"
    )
    assert lines[1] == "fake build: compiling"  # the build's own lines, as they come
    assert lines[2].startswith(f"llama.cpp-b1-cpu-x86-64-v2: built in 0s, in {site.artifacts_dir}")
    first = ArtifactStore(site.artifacts_dir).get("llama.cpp-b1-cpu-x86-64-v2")
    assert "llama.cpp-b1-cpu-x86-64-v2" in runtime_step(plans)
    lines.clear()
    postinstall_plan(site, LLAMA, build=True, progress=lines.append, builder=builder)
    assert len(builder.calls) == 1 and lines == []  # present: not rebuilt, nothing said
    assert ArtifactStore(site.artifacts_dir).get("llama.cpp-b1-cpu-x86-64-v2").key == first.key


def test_no_build_refuses_with_the_plan_s_old_message_and_builds_nothing(
    site: Site, tmp_path: Path
) -> None:
    builder = FakeBuilder(tmp_path / "cache")
    with pytest.raises(ClusterError) as refused:
        postinstall_plan(site, LLAMA, build=False, progress=print, builder=builder)
    assert str(refused.value) == LLAMA_MISSING.format(root=site.artifacts_dir)
    assert builder.calls == [] and stored(site) == []
    with pytest.raises(ClusterError) as planned:  # what the plan itself says, unchanged
        engine_for(LLAMA).plan(site, LLAMA, [])
    assert str(planned.value) == str(refused.value)


def test_a_failed_build_fails_with_its_reason_and_stores_nothing(
    site: Site, tmp_path: Path
) -> None:
    builder = FakeBuilder(tmp_path / "cache", fail="cmake --build failed (2): no space left")
    with pytest.raises(ClusterError) as failed:
        postinstall_plan(site, LLAMA, build=True, progress=lambda _: None, builder=builder)
    assert str(failed.value) == (
        "llama.cpp (cpu, x86-64-v2): the build failed, so no node was touched: "
        "cmake --build failed (2): no space left"
    )
    assert isinstance(failed.value.__cause__, ArtifactError)
    assert stored(site) == []


def test_a_present_build_is_used_even_without_build_and_a_named_one_is_never_built(
    site: Site, tmp_path: Path
) -> None:
    builder = FakeBuilder(tmp_path / "cache")
    postinstall_plan(site, LLAMA, build=True, progress=lambda _: None, builder=builder)
    plans = postinstall_plan(site, LLAMA, build=False, progress=print, builder=builder)
    assert len(builder.calls) == 1 and "llama.cpp-b1-cpu-x86-64-v2" in runtime_step(plans)
    named = Cluster("c2", Engine.LLAMA_RPC, "tiny", "node0", options={"artifact": "llama.cpp-x"})
    assert engine_for(named).needs(site, named) == []


def test_vllm_needs_the_wheelhouse_artifact_build_vllm_builds_for_its_backend(
    site: Site,
) -> None:
    cluster = Cluster("v", Engine.VLLM, "smol", "node0", serve=(Served("a", "smol", None, 8000),))
    (need,) = engine_for(cluster).needs(site, cluster)
    assert need.spec == WheelhouseSpec(backend=VllmBackend.CPU)
    assert need.command == "provisioner artifact build vllm --backend cpu"
    assert need.present is None
    assert need.missing == (
        f"no vLLM wheelhouse for backend cpu and Python {python_tag()} in "
        f"{site.artifacts_dir}: provisioner artifact build vllm --backend cpu"
    )
    with pytest.raises(ClusterError) as refused:
        ensure([need], ArtifactStore(site.artifacts_dir), build=False, progress=print)
    assert str(refused.value) == need.missing


def publish_image(site: Site, name: str, python: str) -> str:
    """An image in the site's store whose manifest lists ``python3 <python>``."""
    store = ImageStore(site.cfg.image_dir)
    image, _ = store.publish_files(name, {"vmlinuz": b"K", "initrd": b"I", "root.squashfs": b"R"})
    manifest = image.path / "manifest.json"
    data = json.loads(manifest.read_text())
    packages = ["libc6 2.41-12", f"python3 {python}", "python3-minimal 1"]
    manifest.write_text(json.dumps({**data, "packages": packages}))
    return image.ref


def test_the_wheelhouse_follows_the_python_of_the_image_the_members_boot(site: Site) -> None:
    cluster = Cluster("v", Engine.VLLM, "smol", "node0", ("node1",),
                      serve=(Served("a", "smol", None, 8000),))  # fmt: skip
    publish_image(site, site.cfg.boot.image, "3.13.5-1")  # what enrolled nodes boot
    (need,) = engine_for(cluster).needs(site, cluster)
    assert isinstance(need.spec, WheelhouseSpec) and need.spec.python_tag == "cp313"
    assert need.spec.extras == ()  # the control venv runs the control node's Python
    assert need.command == "provisioner artifact build vllm --backend cpu --python cp313"
    assert "and Python cp313 in" in need.missing
    # a node of the cluster pinned to a Debian 12 image: two Pythons, refused
    publish_image(site, "debian-bookworm", "3.11.2-1+b1")
    site.registry.set_profile_image("qemu-lab", site.cfg.boot.image)
    site.registry.pin_image(NODES["node1"][0], "debian-bookworm@1")
    problems, _ = engine_for(cluster).check(site, cluster, {"smol": "hf"})
    (said,) = [p for p in problems if "Python" in p]
    assert said.startswith("the members' images carry different Pythons (cp311: node1 "
                           "(debian-bookworm@1); cp313: node0 (")  # fmt: skip
    assert "Ray needs one Python on every node" in said


def test_ensure_builds_only_the_missing_needs_and_keeps_their_order(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    builder = FakeBuilder(tmp_path / "cache")
    there = Manifest("llama.cpp-b0-cpu-x86-64-v3", "x.tar.gz", "a" * 64, 1, "k")
    needs = [
        ArtifactNeed("old", "cmd old", BuildSpec(cpu_baseline="x86-64-v3"), there, "m0"),
        ArtifactNeed("new", "cmd new", BuildSpec(), None, "m1"),
    ]
    got = ensure(needs, store, build=True, progress=lambda _: None, builder=builder)
    assert got[0] is there and got[1].name == "llama.cpp-b1-cpu-x86-64-v2"
    assert builder.calls == [BuildSpec()]
    with pytest.raises(ClusterError) as refused:
        ensure(needs[1:], ArtifactStore(tmp_path / "other"), build=False, progress=print)
    assert str(refused.value) == "m1"

"""What a cluster's plan takes from the artifact store, and building what is missing.

An engine names what its plan reads from the store (:meth:`ClusterEngine.needs
<provisioner.clusters.engines.base.ClusterEngine.needs>`): one :class:`ArtifactNeed` each,
with the artifact the plan would take today (None when there is none) and the spec
``provisioner artifact build`` builds with its defaults. :func:`ensure` builds each missing
one (the same build, the same cache ``$PROVISIONER_CACHE/artifacts``, the same progress
lines) and publishes it in the store the plan reads; with ``build=False`` (``postinstall run
--no-build``) it refuses with the message that names the command instead.

A build publishes nothing until it succeeded (the builds work in the cache; the store's
:meth:`~provisioner.artifacts.store.ArtifactStore.publish` renames into place), and
``postinstall run`` contacts no node before :func:`ensure` returned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from provisioner.artifacts import ArtifactError, default_cache_dir
from provisioner.artifacts.llama import BuildSpec, build_llama, fetch_sdist, unpack_sdist
from provisioner.artifacts.store import ArtifactStore, Manifest
from provisioner.artifacts.wheelhouse import WheelhouseSpec, build_wheelhouse
from provisioner.clusters.spec import ClusterError

Progress = Callable[[str], None]
ArtifactSpec = BuildSpec | WheelhouseSpec
# (spec, progress) -> (the built file or folder in the cache, its manifest, from the cache)
Builder = Callable[[ArtifactSpec, Progress], tuple[Path, Manifest, bool]]


@dataclass(frozen=True)
class ArtifactNeed:
    """One artifact a cluster's plan reads from the store."""

    what: str  # "llama.cpp (cpu, x86-64-v2)": for progress lines and errors
    command: str  # the command that builds it by hand
    spec: ArtifactSpec  # what that command builds
    present: Manifest | None  # the store's artifact the plan takes; None: missing
    missing: str  # the plan's refusal without it (names ``command``)


def build_artifact(spec: ArtifactSpec, progress: Progress) -> tuple[Path, Manifest, bool]:
    """The build ``provisioner artifact build llama.cpp`` (or ``vllm --backend B``) runs
    with its defaults: the pinned sdist (or the wheelhouse's pins), the default cache."""
    cache = default_cache_dir()
    if isinstance(spec, WheelhouseSpec):
        return build_wheelhouse(spec, cache, progress=progress)
    source = unpack_sdist(fetch_sdist(cache, None, progress), progress)
    return build_llama(source, spec, cache, progress=progress)


def ensure(
    needs: Sequence[ArtifactNeed],
    store: ArtifactStore,
    *,
    build: bool,
    progress: Progress,
    builder: Builder | None = None,
) -> list[Manifest]:
    """The store's artifact for each need, the missing ones built and published first.

    ``build=False``: ClusterError with the first missing need's message (the plan's own).
    A failed build raises ClusterError with its reason; what it left is in the cache only.
    ``builder`` defaults to :func:`build_artifact` (tests give a fake)."""
    missing = [n for n in needs if n.present is None]
    if missing and not build:
        raise ClusterError(missing[0].missing)
    build_one = builder or build_artifact
    found = []
    for need in needs:
        if need.present is not None:
            found.append(need.present)
            continue
        progress(f"{need.what}: not in {store.root}; building it ({need.command})")
        try:
            source, manifest, cached = build_one(need.spec, progress)
            published = store.publish(source, manifest)
        except (ArtifactError, OSError) as exc:
            raise ClusterError(
                f"{need.what}: the build failed, so no node was touched: {exc}"
            ) from exc
        how = "from the cache" if cached else f"built in {manifest.build_seconds:.0f}s"
        progress(f"{published.name}: {how}, in {store.root} (sha256 {published.sha256[:12]}...)")
        found.append(published)
    return found

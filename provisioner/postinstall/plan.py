"""The post-install plan: profile + cluster -> each node's ordered, idempotent steps.

Pure: the cluster, its members (hostname, address, profile), the runtime artifact and the
model in; for each node a list of :class:`Step` (shell commands and files, rendered) out.
Which recipes a node gets, in order: ``base``; a ``driver-<name>`` recipe for each of its
profile's ``drivers``; the cluster's engine (``llama-rpc``). Steps are kept by role (head
or worker). Nothing here touches a node: :mod:`.engine` runs the plan.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2

from provisioner.names import UnsafeValue, check_unit
from provisioner.postinstall.recipes import (
    DEFAULT_RECIPES,
    ROLES,
    Recipe,
    RecipeError,
    StepSpec,
    load_recipe,
    template_env,
)
from provisioner.records import Cluster

UNIT_DIR = "/etc/systemd/system"
# Debian policy's package names: what {{ packages }} may hold in a shell line unquoted.
PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
SHA256 = re.compile(r"[0-9a-f]{64}")
# A download's file (and an artifact's programs): a relative path of plain names.
RELATIVE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*(/[A-Za-z0-9][A-Za-z0-9._+-]*)*")
DOWNLOAD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
PATH = re.compile(r"(/[A-Za-z0-9._+@:-]+)+")
URL = re.compile(r"https?://[^\s\x00-\x1f\x7f]+")


@dataclass(frozen=True)
class Member:
    hostname: str
    mac: str
    address: str
    profile: str
    drivers: tuple[str, ...] = ()
    engine_defaults: Mapping[str, str | None] | None = None
    threads: int = 1  # CPU threads its inventory reports
    cache_disk: str | None = None  # by-id/by-path disk `node disk init` made its cache
    gpu: Mapping[str, object] | None = None  # the profile's gpu facts (kernel_modules ...)


@dataclass(frozen=True)
class Download:
    """A file the control node serves (an artifact or a model), for ``fetch`` steps."""

    name: str
    file: str
    url: str
    sha256: str
    size: int = 0
    binaries: Mapping[str, str] | None = None  # an artifact's programs: role -> path in it
    packages: tuple[str, ...] = ()  # an artifact's runtime: Debian packages it links


def check_download(download: Download, what: str) -> Download:
    """A file the control node serves, before its names reach paths and commands: a plain
    name, a relative file of plain names, an http(s) URL, a sha256 (RecipeError if not)."""
    problems = []
    if not DOWNLOAD_NAME.fullmatch(download.name):
        problems.append(f"name {download.name!r}")
    for file in (download.file, *(download.binaries or {}).values()):
        if not RELATIVE.fullmatch(file) or ".." in file.split("/"):
            problems.append(f"file {file!r}")
    if not URL.fullmatch(download.url):
        problems.append(f"url {download.url!r}")
    if not SHA256.fullmatch(download.sha256):
        problems.append(f"sha256 {download.sha256!r}")
    problems += [f"package {p!r}" for p in download.packages if not PACKAGE.fullmatch(p)]
    if problems:
        raise RecipeError(f"{what}: {', '.join(problems)}: not a plain name, file, URL, sha256")
    return download


@dataclass(frozen=True)
class Step:
    """One rendered step: ``check`` passes -> nothing to do; else ``put`` (if any) and
    ``action`` (``changed_action`` when ``put`` changed a unit); then ``verify``."""

    name: str
    recipe: str
    kind: str
    check: str
    action: str
    verify: str
    put: tuple[str, bytes, int] | None = None
    same: str | None = None  # is the put file already there, byte for byte?
    changed_action: str | None = None
    timeout: float = 600.0
    packages: tuple[str, ...] = ()  # what it installs with apt, rendered
    repository: str = "debian"  # where those come from

    def describe(self) -> str:
        if self.put is not None:
            return f"{self.kind} {self.put[0]} ({len(self.put[1])} bytes)"
        return f"{self.kind}: {self.action.splitlines()[0][:90]}"


@dataclass(frozen=True)
class NodePlan:
    member: Member
    role: str
    steps: tuple[Step, ...]


def _same(path: str, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    return f"echo {shlex.quote(f'{digest}  {path}')} | sha256sum -c --status"


def _render(env: jinja2.Environment, text: str, context: Mapping[str, Any], where: str) -> str:
    try:
        return env.from_string(text).render(**context)
    except (jinja2.TemplateError, UnsafeValue) as exc:
        raise RecipeError(f"{where}: {exc}") from exc


def _path(path: str, where: str) -> str:
    """A file a step writes or fetches: absolute, of plain names, no ``..`` (so that it
    is safe in any shell quoting, fanout's ``mkdir`` included)."""
    if not PATH.fullmatch(path) or ".." in path.split("/"):
        raise RecipeError(f"{where}: {path!r} is not an absolute path of plain names")
    return path


def _unit(unit: str, where: str) -> str:
    try:
        return check_unit(unit)
    except UnsafeValue as exc:
        raise RecipeError(f"{where}: {exc}") from exc


def compile_step(
    spec: StepSpec, recipe: Recipe, env: jinja2.Environment, context: Mapping[str, Any]
) -> Step:
    """One step rendered for one node (its commands, files and packages)."""
    packages, step = _compile(spec, recipe, env, context)
    return replace(step, packages=tuple(packages), repository=spec.repository)


def _compile(
    spec: StepSpec, recipe: Recipe, env: jinja2.Environment, context: Mapping[str, Any]
) -> tuple[list[str], Step]:
    where = f"{recipe.source}:{spec.line}: step {spec.name!r}"
    # An item may render to several names (``{{ artifact.packages | join(' ') }}``) or none.
    packages = [n for p in spec.packages for n in _render(env, p, context, where).split()]
    if not all(PACKAGE.fullmatch(p) for p in packages):
        raise RecipeError(f"{where}: packages render to {packages}: Debian package names")
    context = {**context, "packages": " ".join(packages)}
    b = {k: _render(env, v, context, where) for k, v in spec.body.items()}
    then = _render(env, spec.then, context, where) if spec.then else None
    q = shlex.quote
    if spec.kind == "command":
        return packages, Step(spec.name, recipe.name, "command", b["check"], b["action"],
                    b.get("verify", b["check"]), timeout=spec.timeout)  # fmt: skip
    if spec.kind == "fetch":
        dest, sha, url = _path(b["dest"], where), b["sha256"], b["url"]
        if not SHA256.fullmatch(sha):
            raise RecipeError(f"{where}: sha256 {sha!r} is not 64 lower-case hex digits")
        # The file is hashed once, as it arrives; a marker beside it records the sha256
        # that was checked, so a re-run (and the verification) need not read a model of
        # 100+ GB again.
        sums = f"{dest}.provisioner-sha256"
        check = f'test -f {q(dest)} && test "$(cat {q(sums)} 2>/dev/null)" = {q(sha)}'
        # Fetched only when the file is not there with that sha256 (a cache disk keeps it
        # across reboots: then only the unpack below runs again).
        have = f'test -f {q(dest)} && test "$(cat {q(sums)} 2>/dev/null)" = {q(sha)}'
        action = (
            f"set -e; if ! {{ {have}; }}; then "
            f"mkdir -p {q(str(Path(dest).parent))}; rm -f {q(sums)}; "
            f"curl -fsS --retry 5 --retry-connrefused -o {q(dest + '.part')} {q(url)}; "
            f"if ! echo {q(f'{sha}  {dest}.part')} | sha256sum -c --status; then "
            f"echo {q(f'sha256 of {url} is not {sha}')} >&2; rm -f {q(dest + '.part')}; "
            "exit 1; fi; "
            f"mv {q(dest + '.part')} {q(dest)}; echo {q(sha)} > {q(sums)}; fi"
        )
        if "unpack" in b:
            to = _path(b["unpack"], where)
            marker = f"{to}/.provisioner-sha256"
            check += f' && test "$(cat {q(marker)} 2>/dev/null)" = {q(sha)}'
            action += (
                f"; rm -rf {q(to + '.new')}; mkdir -p {q(to + '.new')}; "
                f"tar -xzf {q(dest)} -C {q(to + '.new')}; echo {q(sha)} > {q(to + '.new')}"
                f"/.provisioner-sha256; rm -rf {q(to)}; mv {q(to + '.new')} {q(to)}"
            )
        if then:
            action += f"; {then}"
        return packages, Step(
            spec.name, recipe.name, "fetch", check, action, check, timeout=spec.timeout
        )
    content = (
        _render(env, b["content"], context, where)
        if "content" in b
        else _template(env, b["template"], context, where)
    ).encode()
    if spec.kind == "file":
        path = _path(b["path"], where)
        mode = int(b.get("mode", "0644"), 8)
        same = _same(path, content)
        return packages, Step(spec.name, recipe.name, "file", same, then or "true", same,
                    put=(path, content, mode), same=same, changed_action=then or "true",
                    timeout=spec.timeout)  # fmt: skip
    unit = _unit(b["name"], where)
    path = f"{UNIT_DIR}/{unit}"
    same = _same(path, content)
    active = f"systemctl is-enabled -q {q(unit)} && systemctl is-active -q {q(unit)}"
    changed = (
        f"systemctl daemon-reload && systemctl enable -q {q(unit)} && systemctl restart {q(unit)}"
    )
    # reset-failed: a unit systemd gave up on (its restarts hit the start limit) starts again.
    start = (
        f"systemctl reset-failed {q(unit)} 2>/dev/null; "
        f"systemctl daemon-reload && systemctl enable -q --now {q(unit)}"
    )
    if then:
        changed += f" && {then}"
        start += f" && {then}"
    verify = (
        f"for i in $(seq 1 40); do systemctl is-active -q {q(unit)} && exit 0; sleep 0.25; done; "
        f"systemctl status --no-pager -n 20 {q(unit)}; exit 1"
    )
    return packages, Step(spec.name, recipe.name, "unit", f"{same} && {active}", start, verify,
                put=(path, content, 0o644), same=same, changed_action=changed,
                timeout=spec.timeout)  # fmt: skip


def _template(env: jinja2.Environment, name: str, context: Mapping[str, Any], where: str) -> str:
    try:
        return env.get_template(name).render(**context)
    except jinja2.TemplateNotFound as exc:
        raise RecipeError(f"{where}: no template {name} in postinstall/templates") from exc
    except (jinja2.TemplateError, UnsafeValue) as exc:
        raise RecipeError(f"{where}: template {name}: {exc}") from exc


def recipes_for(member: Member, engine_recipes: Sequence[str]) -> list[str]:
    """base, the profile's drivers, then the engine's own (for vLLM across nodes: vllm,
    then ray, whose units run from vLLM's venv)."""
    return ["base", *(f"driver-{d}" for d in member.drivers), *engine_recipes]


def _items(context: Mapping[str, Any], dotted: str, where: str) -> list[Any]:
    value: Any = context
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise RecipeError(f"{where}: each: {dotted!r} is not in the context")
        value = value[part]
    if not isinstance(value, list):
        raise RecipeError(f"{where}: each: {dotted!r} is not a list")
    return value


def _ip_of(url: str) -> str:
    """The control node's address in its URL ("" when the URL names a host, not an IP:
    the node firewall then has no control-node rule, and says so in a comment)."""
    host = urlsplit(url).hostname or ""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return ""


def context_for(
    cluster: Cluster,
    member: Member,
    members: Sequence[Member],
    *,
    control_url: str,
    artifact: Download | None,
    model: Download | None,
    engine_key: str = "",
    gateways: Sequence[str] = (),
    exporter_port: int = 9100,
    scrapers: Sequence[str] = (),
) -> dict[str, Any]:
    by_name = {m.hostname: m for m in members}
    head = by_name[cluster.head]
    workers = [by_name[w] for w in cluster.workers]
    rpc = [f"{w.address}:{cluster.rpc_port}" for w in workers]
    return {
        "node": {
            "hostname": member.hostname,
            "mac": member.mac,
            "address": member.address,
            "profile": member.profile,
            "role": cluster.role(member.hostname),
            "threads": member.threads,
            "engine_defaults": dict(member.engine_defaults or {}),
            "cache_disk": member.cache_disk,
            "gpu": dict(member.gpu or {}),
        },
        "cluster": {
            "name": cluster.name,
            "engine": cluster.engine,
            "model": cluster.model,
            "served": cluster.served()[0].name,  # the name its server answers to
            "head": {"hostname": head.hostname, "address": head.address},
            "workers": [{"hostname": w.hostname, "address": w.address} for w in workers],
            "rpc": ",".join(rpc),
            "rpc_port": cluster.rpc_port,
            "http_port": cluster.http_port,
            "options": dict(cluster.options),
            "members": [m.address for m in members],
        },
        # gateways: gateways on other hosts ([gateway] hosts), let in where the control is.
        "control": {"url": control_url, "address": _ip_of(control_url), "gateways": list(gateways)},
        # The node's firewall (base recipe): ports only the control node may reach (the
        # servers' APIs), ports only the head may reach (llama.cpp RPC); the engine sets them.
        "firewall": {"control_only": [], "head_only": []},
        # The node exporter's port (in the image), let in from the control node and the
        # Prometheus servers of [prometheus] hosts only, not from the cluster's members.
        "prometheus": {"port": exporter_port, "hosts": list(scrapers)},
        "keys": {"engine": engine_key},
        # The llama.cpp backend the member's build runs, and its environment (the GPUs it
        # may use: GGML_VK_VISIBLE_DEVICES...); the engine sets them from the profile.
        "accel": {"backend": "cpu", "env": {}},
        "artifact": artifact.__dict__ if artifact else None,
        "model": model.__dict__ if model else None,
    }


def plan(
    cluster: Cluster,
    members: Sequence[Member],
    *,
    control_url: str,
    artifact: Download | None,
    model: Download | None,
    engine_recipes: Sequence[str],
    recipes_dir: Path = DEFAULT_RECIPES,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
    engine_key: str = "",
    artifacts: Mapping[str, Download] | None = None,
    gateways: Sequence[str] = (),
    exporter_port: int = 9100,
    scrapers: Sequence[str] = (),
) -> list[NodePlan]:
    """Each member's steps. ``engine_recipes``: the engine's recipes after base and the
    drivers; ``extra``: more context per hostname (the engine's own: vLLM's served
    models, Ray's arguments, the firewall's ports); ``engine_key``: what the cluster's
    servers require (the head gets it in a 0600 file); ``artifacts``: a member's own
    artifact (hostname -> download) where members of different profiles run different
    builds, instead of ``artifact``; ``gateways``: more addresses that may reach the
    servers' API ports (gateways on other hosts); ``exporter_port``, ``scrapers``: the node
    exporter's port and the Prometheus servers besides the control node that may reach it."""
    env = template_env(recipes_dir)
    per_member = dict(artifacts or {})
    checks = [(artifact, "artifact"), (model, "model")]
    checks += [(d, f"artifact of {host}") for host, d in per_member.items()]
    for download, what in checks:
        if download is not None:
            check_download(download, what)
    recipes: dict[str, Recipe] = {}  # each read once per plan
    plans = []
    for member in members:
        role = cluster.role(member.hostname)
        context = context_for(
            cluster, member, members, control_url=control_url,
            artifact=per_member.get(member.hostname, artifact), model=model,
            engine_key=engine_key, gateways=gateways, exporter_port=exporter_port,
            scrapers=scrapers,
        )  # fmt: skip
        context.update((extra or {}).get(member.hostname, {}))
        steps: list[Step] = []
        for name in recipes_for(member, engine_recipes):
            if name not in recipes:
                recipes[name] = load_recipe(name, recipes_dir)
            recipe = recipes[name]
            for spec in recipe.steps:
                if role not in spec.roles:
                    continue
                if spec.each is None:
                    steps.append(compile_step(spec, recipe, env, context))
                    continue
                where = f"{recipe.source}:{spec.line}: step {spec.name!r}"
                for item in _items(context, spec.each, where):
                    one = {**context, "item": item}
                    named = replace(spec, name=_render(env, spec.name, one, where))
                    steps.append(compile_step(named, recipe, env, one))
        plans.append(NodePlan(member, role, tuple(steps)))
    return plans


@dataclass(frozen=True)
class Teardown:
    """What removing a cluster undoes on one member: its units, then clean-up commands."""

    units: tuple[str, ...]
    commands: tuple[str, ...] = ()

    def shell(self) -> str:
        """One shell line, best effort: every unit stopped, disabled and its file removed,
        every command run even if one before it failed, then systemd reloaded."""
        q = shlex.quote
        parts = [
            f"systemctl disable --now {q(u)} 2>/dev/null; rm -f {q(f'{UNIT_DIR}/{u}')}"
            for u in self.units
        ]
        parts += [f"{{ {c} ; }} 2>/dev/null" for c in self.commands]
        return " ; ".join([*parts, "systemctl daemon-reload", "true"])


def teardown(
    recipe_names: Sequence[str],
    role: str,
    context: Mapping[str, Any],
    recipes_dir: Path = DEFAULT_RECIPES,
) -> Teardown:
    """The ``teardown:`` entries of ``recipe_names`` for a member in ``role``, rendered
    with ``context`` (the cluster's, without downloads)."""
    if role not in ROLES:
        raise RecipeError(f"role {role!r}: one of {ROLES}")
    env = template_env(recipes_dir)
    units: list[str] = []
    commands: list[str] = []
    for name in recipe_names:
        recipe = load_recipe(name, recipes_dir)
        for spec in recipe.teardown:
            if role not in spec.roles:
                continue
            where = f"{recipe.source}:{spec.line}: teardown"
            items = [None] if spec.each is None else _items(context, spec.each, where)
            for item in items:
                one = {**context, "item": item}
                units += [_unit(_render(env, u, one, where).strip(), where) for u in spec.units]
                commands += [_render(env, c, one, where).strip() for c in spec.commands]
    return Teardown(tuple(dict.fromkeys(units)), tuple(dict.fromkeys(commands)))

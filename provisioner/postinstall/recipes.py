"""Post-install recipes: YAML in the top-level ``postinstall/`` folder, templates beside.

A recipe is a list of steps; each step is one of four kinds, and every kind has a check
(is it done already?), an action and a verification, so that a second run on a finished
node changes nothing and restarts nothing::

    name: llama-rpc
    description: ...
    steps:
      - name: llama.cpp runtime
        roles: [head, worker]           # default: every member
        fetch:                          # a file from the control node, sha256-checked
          url: "{{ artifact.url }}"
          sha256: "{{ artifact.sha256 }}"
          dest: /var/lib/provisioner/artifacts/{{ artifact.file }}
          unpack: /opt/llama.cpp        # optional: a tarball unpacked here
      - name: rpc firewall
        file:                           # a file rendered from a template (or content)
          path: /etc/provisioner/llama-rpc.nft
          template: llama-rpc.nft.j2
          mode: "0644"
        then: nft -f /etc/provisioner/llama-rpc.nft    # runs only when the file changed
      - name: rpc server
        unit:                           # a systemd unit: written, enabled, started;
          name: llama-rpc.service       # restarted only when its content changed
          template: llama-rpc.service.j2
      - name: "server {{ item.name }}"
        each: vllm.served               # one step per item of a list in the context,
        roles: [head]                   # the item as {{ item }} (names must differ)
        unit:
          name: "{{ item.unit }}"
          template: vllm.service.j2
      - name: packages
        packages: [nftables]            # named once: {{ packages }} in the commands, and
        repository: debian              # tests resolve them in the image's archive
        command:                        # anything else, as three shell commands
          check: dpkg -s {{ packages }}
          action: apt-get install -y {{ packages }}
    teardown:                           # what `cluster remove` undoes on a member:
      - roles: [worker]                 # default: every member
        units: [llama-rpc.service]      # stopped, disabled, their unit files removed
        commands:                       # then these (failures ignored: best effort)
          - nft delete table inet provisioner_llama_rpc
      - each: vllm.served               # as for steps: one entry per item
        units: ["{{ item.unit }}"]

The units a recipe's ``teardown:`` names are also the units smoke expects active, so a
recipe that adds a unit step lists it there too (a test holds every recipe to that).

Strings and templates are jinja2 (undefined names are errors). Loading is pure: YAML text
in, a Recipe or a RecipeError naming the file, the line and the reason out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml

from provisioner.errors import ProvisionerError

DEFAULT_RECIPES = Path(__file__).resolve().parents[2] / "postinstall"
KINDS = ("fetch", "file", "unit", "command")
ROLES = ("head", "worker")
_STEP_KEYS = frozenset(
    {"name", "roles", "then", "timeout", "packages", "repository", "each", *KINDS}
)
DEBIAN = "debian"  # packages from the image's own Debian archive (tests resolve them)
_KIND_KEYS = {
    "fetch": ({"url", "sha256", "dest"}, {"unpack"}),
    "file": ({"path"}, {"template", "content", "mode"}),
    "unit": ({"name"}, {"template", "content"}),
    "command": ({"check", "action"}, {"verify"}),
}


class RecipeError(ProvisionerError):
    """A post-install recipe that cannot be used: file, line and reason."""


@dataclass(frozen=True)
class StepSpec:
    """One step as written (its strings not yet rendered)."""

    name: str
    kind: str
    body: Mapping[str, str]
    roles: tuple[str, ...] = ROLES
    then: str | None = None
    timeout: float = 600.0
    line: int = 0
    packages: tuple[str, ...] = ()  # apt packages the step installs ({{ packages }})
    repository: str = DEBIAN  # where they come from: debian, or another archive's name
    each: str | None = None  # a list in the context ("vllm.served"): one step per item


@dataclass(frozen=True)
class TeardownSpec:
    """One ``teardown:`` entry as written: units to stop and remove, commands to run."""

    units: tuple[str, ...]
    commands: tuple[str, ...] = ()
    roles: tuple[str, ...] = ROLES
    each: str | None = None
    line: int = 0


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    steps: tuple[StepSpec, ...]
    source: Path
    teardown: tuple[TeardownSpec, ...] = ()


def _fail(source: Path, node: yaml.Node | None, reason: str) -> RecipeError:
    line = node.start_mark.line + 1 if node is not None else 1
    return RecipeError(f"{source}:{line}: {reason}")


def _mapping(node: yaml.Node) -> dict[str, yaml.Node]:
    assert isinstance(node, yaml.MappingNode)
    return {str(k.value): v for k, v in node.value}


def parse_recipe(text: str, source: Path) -> Recipe:
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(root, yaml.MappingNode):
        raise _fail(source, root, "a recipe is a mapping with name, description, steps")
    top = _mapping(root)
    unknown = sorted(set(top) - {"name", "description", "steps", "teardown"})
    if unknown:
        raise _fail(source, top[unknown[0]], f"unknown key {unknown[0]!r}")
    data: dict[str, Any] = yaml.safe_load(text)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(source, top.get("name", root), "name: a non-empty string")
    steps_node = top.get("steps")
    if not isinstance(steps_node, yaml.SequenceNode) or not steps_node.value:
        raise _fail(source, steps_node or root, "steps: a non-empty list")
    steps = []
    for raw, node in zip(data["steps"], steps_node.value, strict=True):
        steps.append(_step(source, raw, node))
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise _fail(source, steps_node, "two steps have the same name")
    teardown = _teardown(source, data.get("teardown"), top.get("teardown"))
    return Recipe(name, str(data.get("description", "")).strip(), tuple(steps), source, teardown)


def _teardown(source: Path, raw: Any, node: yaml.Node | None) -> tuple[TeardownSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not isinstance(node, yaml.SequenceNode):
        raise _fail(source, node, "teardown: a list of {units, commands, roles, each}")
    found = []
    for entry, item in zip(raw, node.value, strict=True):
        if not isinstance(entry, dict) or not set(entry) <= {"units", "commands", "roles", "each"}:
            raise _fail(source, item, "teardown: each entry has units, commands, roles, each")
        units, commands = entry.get("units", []), entry.get("commands", [])
        for key, value in (("units", units), ("commands", commands)):
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise _fail(source, item, f"teardown: {key}: a list of strings")
        if not units and not commands:
            raise _fail(source, item, "teardown: an entry names units or commands")
        roles = entry.get("roles", list(ROLES))
        if not isinstance(roles, list) or not roles or not set(roles) <= set(ROLES):
            raise _fail(source, item, f"teardown: roles among {ROLES}")
        each = entry.get("each")
        if each is not None and not (
            isinstance(each, str) and all(p.isidentifier() for p in each.split("."))
        ):
            raise _fail(source, item, "teardown: each: a dotted name")
        found.append(TeardownSpec(
            tuple(units), tuple(commands), tuple(roles), each, item.start_mark.line + 1
        ))  # fmt: skip
    return tuple(found)


def _step(source: Path, raw: Any, node: yaml.Node) -> StepSpec:
    if not isinstance(raw, dict):
        raise _fail(source, node, "a step is a mapping")
    keys = _mapping(node)
    unknown = sorted(set(raw) - _STEP_KEYS)
    if unknown:
        raise _fail(source, keys[unknown[0]], f"unknown step key {unknown[0]!r}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(source, node, "every step needs a name")
    kinds = [k for k in KINDS if k in raw]
    if len(kinds) != 1:
        raise _fail(source, node, f"step {name!r}: exactly one of {', '.join(KINDS)}")
    kind = kinds[0]
    body = raw[kind]
    if not isinstance(body, dict) or not all(isinstance(v, str) for v in body.values()):
        raise _fail(source, keys[kind], f"step {name!r}: {kind} is a mapping of strings")
    required, optional = _KIND_KEYS[kind]
    missing = sorted(required - set(body))
    extra = sorted(set(body) - required - optional)
    if missing:
        raise _fail(source, keys[kind], f"step {name!r}: {kind} needs {', '.join(missing)}")
    if extra:
        raise _fail(source, keys[kind], f"step {name!r}: {kind} has no key {extra[0]!r}")
    if kind in ("file", "unit") and ("template" in body) == ("content" in body):
        raise _fail(source, keys[kind], f"step {name!r}: give template or content, not both")
    roles = raw.get("roles", list(ROLES))
    if not isinstance(roles, list) or not roles or not set(roles) <= set(ROLES):
        raise _fail(source, keys.get("roles", node), f"step {name!r}: roles among {ROLES}")
    then = raw.get("then")
    if then is not None and (not isinstance(then, str) or kind not in ("file", "unit", "fetch")):
        raise _fail(source, keys.get("then", node), f"step {name!r}: then is a command")
    timeout = raw.get("timeout", 600)
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise _fail(source, keys.get("timeout", node), f"step {name!r}: timeout in seconds")
    packages = raw.get("packages", [])
    if not isinstance(packages, list) or not all(isinstance(p, str) and p for p in packages):
        raise _fail(source, keys.get("packages", node), f"step {name!r}: packages: a list of names")
    repository = raw.get("repository", DEBIAN)
    if not isinstance(repository, str) or not repository:
        raise _fail(source, keys.get("repository", node), f"step {name!r}: repository: a name")
    each = raw.get("each")
    if each is not None and (not isinstance(each, str) or not all(
        part.isidentifier() for part in each.split(".")
    )):  # fmt: skip
        raise _fail(source, keys.get("each", node), f"step {name!r}: each: a dotted name")
    return StepSpec(
        name, kind, dict(body), tuple(roles), then, float(timeout), node.start_mark.line + 1,
        tuple(packages), repository, each,
    )  # fmt: skip


def load_recipe(name: str, directory: Path = DEFAULT_RECIPES) -> Recipe:
    path = directory / f"{name}.yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        have = ", ".join(sorted(p.stem for p in directory.glob("*.yaml")))
        raise RecipeError(f"no recipe {name!r} in {directory} (have: {have})") from exc
    return parse_recipe(text, path)


def template_env(directory: Path = DEFAULT_RECIPES) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory / "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )

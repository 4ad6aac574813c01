r"""Post-install recipes: YAML in the top-level ``postinstall/`` folder, templates beside.

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

Escaping: every value is escaped for the language it lands in
--------------------------------------------------------------

Autoescape is off (it would escape for HTML). Instead each ``{{ ... }}`` names the
language of its place with one of these filters (:func:`template_env` installs them; a
value they cannot write safely raises :class:`provisioner.names.UnsafeValue`, which the
plan reports as a RecipeError with the file and step):

==================  =======================================================================
filter              what it writes
==================  =======================================================================
``sh``              one shell word (``shlex.quote``: plain words stay bare); a list: words
``systemd``         one ExecStart= argument (systemd.syntax(7), systemd.service(5)): plain
                    words bare, else ``"..."`` with ``\\`` and ``\"``; ``%`` -> ``%%``
                    (specifiers), ``$`` -> ``$$`` (no variable expansion); a list: argv
``systemd('exec')`` the same for the command itself: an absolute path (no ``-@+!:`` prefix)
``systemd('env')``  one ``Environment=`` assignment ``KEY=VALUE``: quoted as above, no ``$$``
                    (Environment= does not expand variables)
``systemd('text')`` free text in a setting or a comment (Description=, a comment):
                    ``%`` -> ``%%``; no trailing backslash (it would continue the line)
``systemd('name')`` a name inside a path (a log file's): letters, digits, ``._-``, as it is
``systemd('unit')`` a unit name (:data:`provisioner.names.UNIT`), as it is
``systemd('size')`` a size setting (MemoryMax=): ``N[KMGTPE]``, ``N%`` or ``infinity``
``nft``             an IPv4/IPv6 address, a port or a port range ``N-M``; a list: each
``nft('comment')``  text in a ``#`` comment line
==================  =======================================================================

(``ipxe``, for the boot scripts in ``bootconf/``, is in :mod:`provisioner.boot.ipxe`.)
Whatever the filter, ``finalize`` refuses a value with a line break or a control
character: in a unit, a rule file, a shell line or a boot script it would start a line of
its own. Inside a recipe's ``fetch:``, ``file:`` and ``unit:`` bodies values are data
(paths, URLs, unit names): :mod:`.plan` quotes them where it builds commands and checks
unit names and paths; in ``command:``, ``then:`` and ``teardown: commands:`` they are
shell and take ``| sh``. ``tests/security/test_hostile_templates.py`` holds every
template and recipe to this (a filter on every value, or a known-safe one it lists).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml

from provisioner.data import POSTINSTALL
from provisioner.errors import ProvisionerError
from provisioner.names import UnsafeValue, check_line, check_unit

DEFAULT_RECIPES = POSTINSTALL
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
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory / "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=finalize,
    )
    env.filters.update(sh=sh, systemd=systemd, nft=nft)
    return env


# ---------------------------------------------------------------- escaping filters


def finalize(value: Any) -> Any:
    """Every ``{{ ... }}``'s value: text that stays on its line (see the docstring)."""
    if isinstance(value, str):
        check_line(value, "template value")
    return value


def sh(value: Any) -> str:
    """One shell word (a list: one word each, joined by spaces)."""
    if isinstance(value, list | tuple):
        return " ".join(sh(v) for v in value)
    return shlex.quote(check_line(value, "sh"))


_SYSTEMD_BARE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SIZE = re.compile(r"[0-9]+(\.[0-9]+)?[%KMGTPE]?|infinity")
_PATH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SYSTEMD_KINDS = ("arg", "exec", "env", "text", "name", "unit", "size")


def systemd_word(value: Any, *, dollar: bool = True) -> str:
    """One word of a unit setting that unquotes (ExecStart=, Environment=): bare when
    it is plain, else double-quoted with ``\\`` and ``\"``; ``%%`` for ``%``, and with
    ``dollar`` (ExecStart=) ``$$`` for ``$``."""
    text = check_line(value, "systemd")
    escaped = text.replace("%", "%%")
    if dollar:
        escaped = escaped.replace("$", "$$")
    if _SYSTEMD_BARE.fullmatch(text):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd(value: Any, kind: str = "arg") -> str:
    """A value in a unit file, written for its ``kind`` of place (see the docstring)."""
    if kind == "arg" and isinstance(value, list | tuple):
        return " ".join(systemd_word(v) for v in value)
    if kind == "arg":
        return systemd_word(value)
    text = check_line(value, f"systemd({kind})")
    if kind == "exec":
        if not text.startswith("/"):
            raise UnsafeValue(f"systemd: the command {text!r} is not an absolute path")
        return systemd_word(text)
    if kind == "env":
        key, sep, _ = text.partition("=")
        if not sep or not _ENV_KEY.fullmatch(key):
            raise UnsafeValue(f"systemd: {text!r} is not an environment assignment KEY=VALUE")
        return systemd_word(text, dollar=False)
    if kind == "text":
        if text.endswith("\\"):
            raise UnsafeValue(f"systemd: {text!r} ends in a backslash (a continued line)")
        return text.replace("%", "%%")
    if kind == "name":
        if not _PATH_NAME.fullmatch(text):
            raise UnsafeValue(f"systemd: {text!r} is not a name for a path (letters, digits, ._-)")
        return text
    if kind == "unit":
        return check_unit(text)
    if kind == "size":
        if not _SIZE.fullmatch(text):
            raise UnsafeValue(f"systemd: {text!r} is not a size (N[KMGTPE], N% or infinity)")
        return text
    raise UnsafeValue(f"systemd: no kind {kind!r} (one of {', '.join(SYSTEMD_KINDS)})")


_PORT_RANGE = re.compile(r"([0-9]{1,5})-([0-9]{1,5})")


def nft(value: Any, kind: str = "value") -> Any:
    """An address, a port or a port range in an nftables rule (a list: each), checked
    and written as nft reads it; ``nft('comment')``: text in a ``#`` comment."""
    if kind == "comment":
        return check_line(value, "nft comment")
    if kind != "value":
        raise UnsafeValue(f"nft: no kind {kind!r} (value or comment)")
    if isinstance(value, list | tuple):
        return [nft(v) for v in value]
    text = check_line(value, "nft")
    if re.fullmatch(r"[0-9]{1,5}", text):
        return str(_port(int(text), value))
    if found := _PORT_RANGE.fullmatch(text):
        low, high = _port(int(found[1]), value), _port(int(found[2]), value)
        if low > high:
            raise UnsafeValue(f"nft: port range {text!r} runs backwards")
        return f"{low}-{high}"
    try:
        if "%" not in text:  # an IPv6 scope (fe80::1%eth0) is not an nft address
            return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    raise UnsafeValue(f"nft: {text!r} is not an address, a port or a port range")


def _port(number: int, value: Any) -> int:
    if not 0 <= number <= 65535:
        raise UnsafeValue(f"nft: {value!r} is not a port (0-65535)")
    return number

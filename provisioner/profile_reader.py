"""Read one profile file: the YAML composed (node API, so each problem knows its line) and
walked into a :class:`~provisioner.profile_model.Profile`, every problem collected as a
:class:`~provisioner.profile_model.ProfileProblem` (``file:line: key: reason``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import yaml

from provisioner import names
from provisioner.discovery import families, pciids
from provisioner.kernel_need import MIN_RE, KernelNeed
from provisioner.profile_model import (
    DMI_FIELDS,
    ENGINE_RULE_KEYS,
    GPU_KEYS,
    IMAGE_REF,
    NAME_RE,
    PCI_CLASS_RE,
    PCI_ID_RE,
    REQUIRED_KEYS,
    RULE_KINDS,
    TOP_KEYS,
    CpuRule,
    DmiRule,
    Engine,
    EngineDefaults,
    EngineRule,
    Gpu,
    MemoryRule,
    PciId,
    PciRule,
    Profile,
    ProfileProblem,
    Rule,
    Smoke,
)


def parse_profile(text: str, source: str) -> tuple[Profile | None, list[ProfileProblem]]:
    """One profile file's text; the profile is None when any problem was found."""
    reader = _Reader(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = getattr(exc, "problem", None) or str(exc)
        return None, [ProfileProblem(source, line, "yaml", f"not valid YAML: {problem}")]
    if root is None:
        return None, [ProfileProblem(source, 1, "file", "empty: expected a profile mapping")]
    profile = reader.profile(root)
    if reader.problems:
        return None, reader.problems
    return profile, []


_SCALAR_TAGS = {
    "str": "tag:yaml.org,2002:str",
    "int": "tag:yaml.org,2002:int",
    "float": "tag:yaml.org,2002:float",
    "bool": "tag:yaml.org,2002:bool",
    "null": "tag:yaml.org,2002:null",
}


class _Reader:
    """Walks the composed YAML nodes, collecting problems with their lines."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[ProfileProblem] = []

    def fail(self, node: yaml.Node, key: str, reason: str) -> None:
        self.problems.append(ProfileProblem(self.source, node.start_mark.line + 1, key, reason))

    def mapping(
        self, node: yaml.Node, key: str, allowed: Iterable[str]
    ) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        """{key: (key node, value node)}; unknown and repeated keys are problems."""
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, key, "expected a mapping")
            return None
        allowed = frozenset(allowed)
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            name = knode.value if isinstance(knode, yaml.ScalarNode) else str(knode.value)
            where = f"{key}.{name}" if key else name
            if name not in allowed:
                self.fail(knode, where, f"unknown key (allowed: {', '.join(sorted(allowed))})")
                continue
            if name in out:
                self.fail(knode, where, "repeated key")
                continue
            out[name] = (knode, vnode)
        return out

    def string(self, node: yaml.Node, key: str, *, empty: bool = False) -> str | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _SCALAR_TAGS["str"]:
            self.fail(node, key, "expected a string")
            return None
        value = str(node.value)
        if not empty and not value.strip():
            self.fail(node, key, "must not be empty")
            return None
        return value

    def number(
        self, node: yaml.Node, key: str, *, integer: bool = False, minimum: float = 0
    ) -> float | None:
        tags = [_SCALAR_TAGS["int"]] if integer else [_SCALAR_TAGS["int"], _SCALAR_TAGS["float"]]
        if not isinstance(node, yaml.ScalarNode) or node.tag not in tags:
            self.fail(node, key, "expected an integer" if integer else "expected a number")
            return None
        value = yaml.constructor.SafeConstructor().construct_object(node)
        assert isinstance(value, int | float)
        if value < minimum:
            self.fail(node, key, f"must be >= {minimum:g}, got {value}")
            return None
        return value

    def strings(self, node: yaml.Node, key: str, *, empty: bool = True) -> tuple[str, ...]:
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, key, "expected a list of strings")
            return ()
        if not node.value and not empty:
            self.fail(node, key, "must not be empty")
        values = [self.string(item, f"{key}[{i}]") for i, item in enumerate(node.value)]
        return tuple(v for v in values if v is not None)

    def regex(self, node: yaml.Node, key: str) -> re.Pattern[str] | None:
        text = self.string(node, key)
        if text is None:
            return None
        try:
            return re.compile(text)
        except re.error as exc:
            self.fail(node, key, f"bad regex {text!r}: {exc}")
            return None

    # ------------------------------------------------------------ the profile

    def profile(self, root: yaml.Node) -> Profile | None:
        top = self.mapping(root, "", TOP_KEYS)
        if top is None:
            return None
        for key in REQUIRED_KEYS:
            if key not in top:
                self.fail(root, key, "required key missing")
        v = {key: value for key, (_, value) in top.items()}
        name = self._name(v["name"]) if "name" in v else None
        version = (
            self.number(v["version"], "version", integer=True, minimum=1)
            if "version" in v
            else None
        )
        description = self.string(v["description"], "description") if "description" in v else None
        sources = self.strings(v["sources"], "sources", empty=False) if "sources" in v else ()
        all_of, any_of = self._match(v["match"]) if "match" in v else ((), ())
        drivers = self.strings(v["drivers"], "drivers") if "drivers" in v else ()
        kernel_args = self.strings(v["kernel_args"], "kernel_args") if "kernel_args" in v else ()
        for arg in kernel_args:
            try:
                names.check_kernel_arg(arg)
            except names.UnsafeValue as exc:
                self.fail(v["kernel_args"], "kernel_args", str(exc))
        image = self.string(v["image"], "image") if "image" in v else None
        if image is not None and not IMAGE_REF.match(image):
            self.fail(v["image"], "image", f"{image!r} is not an image name (name or name@version)")
        engine = Engine.NONE
        if (entry := top.get("engine")) is not None:
            text = self.string(entry[1], "engine")
            if text is not None:
                try:
                    engine = Engine(text)
                except ValueError:
                    choices = ", ".join(e.value for e in Engine)
                    self.fail(entry[1], "engine", f"{text!r} is not one of: {choices}")
        defaults = EngineDefaults()
        if (entry := top.get("engine_defaults")) is not None:
            defaults = self._engine_defaults(entry[1])
            if engine is Engine.NONE and (defaults.dtype or defaults.quantization):
                self.fail(entry[0], "engine_defaults", "given but engine is none")
        smoke = self._smoke(v["smoke"]) if "smoke" in v else Smoke()
        kernel = self._kernel(v["kernel"]) if "kernel" in v else None
        engines = self._engines(v["engines"]) if "engines" in v else ()
        gpu = self._gpu(v["gpu"]) if "gpu" in v else None
        if name is None or version is None or description is None:
            return None
        return Profile(
            name=name,
            version=int(version),
            description=description.strip(),
            sources=sources,
            all_of=all_of,
            any_of=any_of,
            drivers=drivers,
            engine=engine,
            engine_defaults=defaults,
            smoke=smoke,
            kernel_args=kernel_args,
            image=image,
            kernel=kernel,
            engines=engines,
            gpu=gpu,
            file=self.source,
            line=top["name"][0].start_mark.line + 1,
        )

    def _name(self, node: yaml.Node) -> str | None:
        name = self.string(node, "name")
        if name is not None and not NAME_RE.match(name):
            self.fail(node, "name", f"{name!r}: use lowercase letters, digits and '-'")
            return None
        return name

    def _gpu(self, node: yaml.Node) -> Gpu | None:
        got = self.mapping(node, "gpu", GPU_KEYS)
        if got is None:
            return None
        text = {k: self.string(v, f"gpu.{k}") for k, (_, v) in got.items() if "driver" not in k}
        branch = {
            k: self.number(v, f"gpu.{k}", integer=True, minimum=1)
            for k, (_, v) in got.items()
            if "driver" in k
        }
        modules = text.get("kernel_modules")
        if modules is not None and modules not in ("open", "proprietary"):
            self.fail(got["kernel_modules"][1], "gpu.kernel_modules", "open or proprietary")
        low, high = branch.get("driver_min"), branch.get("driver_max")
        if low is not None and high is not None and low > high:
            self.fail(node, "gpu.driver_min", f"impossible: {int(low)} > {int(high)}")
        return Gpu(
            text.get("architecture"),
            text.get("compute_capability"),
            modules,
            int(low) if low is not None else None,
            int(high) if high is not None else None,
        )

    def _engine_defaults(self, node: yaml.Node) -> EngineDefaults:
        got = self.mapping(node, "engine_defaults", ("dtype", "quantization"))
        if got is None:
            return EngineDefaults()
        values = {k: self.string(v, f"engine_defaults.{k}") for k, (_, v) in got.items()}
        return EngineDefaults(values.get("dtype"), values.get("quantization"))

    def _engines(self, node: yaml.Node) -> tuple[EngineRule, ...]:
        names = [e.value for e in Engine if e is not Engine.NONE]
        got = self.mapping(node, "engines", names)
        if got is None:
            return ()
        rules = []
        for name, (knode, vnode) in got.items():
            where = f"engines.{name}"
            if isinstance(vnode, yaml.ScalarNode) and vnode.value in ("", "~", "null"):
                rules.append(EngineRule(Engine(name)))
                continue
            fields_ = self.mapping(vnode, where, ENGINE_RULE_KEYS)
            if fields_ is None:
                continue
            values = {k: self.string(v, f"{where}.{k}") for k, (_, v) in fields_.items()}
            if any(v is None for v in values.values()):
                continue
            text = {k: str(v) for k, v in values.items()}
            refused, use = text.pop("refused", None), text.pop("use", None)
            use_engine = None
            if use is not None:
                if use not in names:
                    self.fail(fields_["use"][1], f"{where}.use", f"{use!r}: one of {names}")
                    continue
                use_engine = Engine(use)
            if (refused is None) != (use_engine is None):
                self.fail(knode, where, "refused and use go together (why, and what instead)")
                continue
            if refused is not None and text:
                self.fail(knode, where, "a refused engine has no settings")
                continue
            rules.append(EngineRule(Engine(name), refused, use_engine, tuple(sorted(text.items()))))
        for rule in rules:
            if rule.use is not None:
                target = next((r for r in rules if r.engine is rule.use), None)
                if target is None or target.refused is not None:
                    self.fail(node, f"engines.{rule.engine.value}.use",
                              f"{rule.use.value} must be listed, and not refused")  # fmt: skip
        return tuple(rules)

    def _kernel(self, node: yaml.Node) -> KernelNeed | None:
        got = self.mapping(node, "kernel", ("min", "why"))
        if got is None:
            return None
        v = {key: value for key, (_, value) in got.items()}
        for key in ("min", "why"):
            if key not in v:
                self.fail(node, f"kernel.{key}", "required key missing")
        least = self.string(v["min"], "kernel.min") if "min" in v else None
        if least is not None and not MIN_RE.match(least):
            self.fail(v["min"], "kernel.min", f"{least!r} is not a kernel release such as 6.14")
            least = None
        why = self.string(v["why"], "kernel.why") if "why" in v else None
        return KernelNeed(least, why.strip()) if least and why else None

    def _smoke(self, node: yaml.Node) -> Smoke:
        keys = ("reference_model", "min_tokens_per_s", "max_ttft_s")
        got = self.mapping(node, "smoke", keys)
        if got is None:
            return Smoke()
        v = {key: value for key, (_, value) in got.items()}
        model = (
            self.string(v["reference_model"], "smoke.reference_model")
            if "reference_model" in v
            else None
        )
        tps = (
            self.number(v["min_tokens_per_s"], "smoke.min_tokens_per_s")
            if "min_tokens_per_s" in v
            else None
        )
        ttft = self.number(v["max_ttft_s"], "smoke.max_ttft_s") if "max_ttft_s" in v else None
        if (tps is not None or ttft is not None) and model is None:
            self.fail(node, "smoke.reference_model", "floors need the model they were taken with")
        return Smoke(model, tps, ttft)

    def _match(self, node: yaml.Node) -> tuple[tuple[Rule, ...], tuple[Rule, ...]]:
        got = self.mapping(node, "match", ("all", "any"))
        if got is None:
            return (), ()
        groups: dict[str, tuple[Rule, ...]] = {"all": (), "any": ()}
        for group, (_, value) in got.items():
            key = f"match.{group}"
            if not isinstance(value, yaml.SequenceNode):
                self.fail(value, key, "expected a list of rules")
                continue
            if not value.value:
                self.fail(
                    value,
                    key,
                    f"empty {group}-of: a profile that can never match"
                    if group == "any"
                    else "empty all-of: leave it out instead",
                )
                continue
            rules: list[Rule] = []
            for i, item in enumerate(value.value):
                rules.extend(self._rule(item, f"{key}[{i}]"))
            groups[group] = tuple(rules)
        return groups["all"], groups["any"]

    def _rule(self, node: yaml.Node, key: str) -> list[Rule]:
        got = self.mapping(node, key, RULE_KINDS)
        if got is None:
            return []
        if len(got) != 1:
            if got:
                self.fail(node, key, f"one rule per item, got {', '.join(sorted(got))}")
            else:
                self.fail(node, key, f"empty rule: expected one of {', '.join(RULE_KINDS)}")
            return []
        [(kind, (_, value))] = got.items()
        where = f"{key}.{kind}"
        line = node.start_mark.line + 1
        if kind == "pci":
            pci = self._pci(value, where, line)
            return [pci] if pci is not None else []
        if kind == "cpu_model":
            pattern = self.regex(value, where)
            return [CpuRule(pattern, line)] if pattern is not None else []
        if kind == "memory_min_gib":
            gib = self.number(value, where)
            return [MemoryRule(gib, line)] if gib is not None else []
        return list(self._dmi(value, where))

    def _pci(self, node: yaml.Node, key: str, line: int) -> PciRule | None:
        got = self.mapping(node, key, ("ids", "class", "family", "min", "max"))
        if got is None:
            return None
        if sum(k in got for k in ("ids", "class", "family")) != 1:
            self.fail(node, key, "give exactly one of ids, class or family")
            return None
        ids: list[PciId] = []
        classes: list[str] = []
        family = self.string(got["family"][1], f"{key}.family") if "family" in got else None
        if "family" in got:
            ids.extend(self._family_ids(got["family"][1], f"{key}.family", family))
        elif "ids" in got:
            value = got["ids"][1]
            for i, text in enumerate(self.strings(value, f"{key}.ids", empty=False)):
                found = PCI_ID_RE.match(text.strip())
                if found is None:
                    item = value.value[i] if isinstance(value, yaml.SequenceNode) else value
                    self.fail(
                        item,
                        f"{key}.ids[{i}]",
                        f"{text!r}: expected 'vvvv:dddd' or 'vvvv:dddd rev rr' (hex)",
                    )
                    continue
                vendor, device, rev = found.groups()
                ids.append(PciId(vendor.lower(), device.lower(), rev.lower() if rev else None))
        else:
            value = got["class"][1]
            for i, text in enumerate(self.strings(value, f"{key}.class", empty=False)):
                if not PCI_CLASS_RE.match(text):
                    item = value.value[i] if isinstance(value, yaml.SequenceNode) else value
                    self.fail(
                        item,
                        f"{key}.class[{i}]",
                        f"{text!r}: expected 4 hex digits (base class + subclass, e.g. '0302')",
                    )
                    continue
                classes.append(text.lower())
        high = self.number(got["max"][1], f"{key}.max", integer=True) if "max" in got else None
        default_min = 0 if high == 0 else 1  # ``max: 0`` alone says "none of these"
        low = (
            self.number(got["min"][1], f"{key}.min", integer=True) if "min" in got else default_min
        )
        if low is not None and high is not None and low > high:
            self.fail(
                got["min"][1] if "min" in got else node,
                f"{key}.min",
                f"impossible: min {int(low)} > max {int(high)}",
            )
            return None
        if low is None or (high is None and "max" in got) or not (ids or classes):
            return None
        return PciRule(
            tuple(ids),
            tuple(classes),
            int(low),
            int(high) if high is not None else None,
            line,
            family,
        )

    def _family_ids(self, node: yaml.Node, key: str, name: str | None) -> list[PciId]:
        """Every id of GPU family ``name`` (hwprofiles/gpu-families.yaml, by pci.ids name)."""
        if name is None:
            return []
        try:
            table = families.table_for(self.source)
        except (OSError, families.FamilyTableError) as exc:
            self.fail(node, key, f"the GPU family table cannot be read: {exc}")
            return []
        if table.get(name) is None:
            known = ", ".join(f.name for f in table.families)
            self.fail(node, key, f"{name!r}: no such GPU family (gpu-families.yaml: {known})")
            return []
        found = [PciId(v, d) for v, d in table.member_ids(name, pciids.default())]
        if not found:
            self.fail(node, key, f"{name!r}: pci.ids names no device of this family")
        return found

    def _dmi(self, node: yaml.Node, key: str) -> Iterator[DmiRule]:
        got = self.mapping(node, key, DMI_FIELDS)
        if got is None:
            return
        if not got:
            self.fail(node, key, "empty: name at least one DMI field")
        for name, (_, value) in got.items():
            where = f"{key}.{name}"
            line = value.start_mark.line + 1
            if isinstance(value, yaml.MappingNode):
                inner = self.mapping(value, where, ("regex",))
                if inner is None or "regex" not in inner:
                    if inner is not None:
                        self.fail(value, where, "expected a string or {regex: ...}")
                    continue
                pattern = self.regex(inner["regex"][1], f"{where}.regex")
                if pattern is not None:
                    yield DmiRule(name, None, pattern, line)
            else:
                text = self.string(value, where)
                if text is not None:
                    yield DmiRule(name, text.strip(), None, line)

"""The hardware profile's model: the rules a profile matches with and what follows from a
match (:class:`Profile`), the set they form (:class:`ProfileSet`), and the problems a bad
file gives (:class:`ProfileProblem`). :mod:`provisioner.profile_reader` makes them from YAML;
:mod:`provisioner.profiles` loads folders of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from enum import StrEnum

from provisioner.discovery.model import Dmi
from provisioner.errors import ProvisionerError
from provisioner.kernel_need import KernelNeed

SCHEMA = "provisioner.profile/1"
NOT_PROFILES = frozenset({"accelerators.yaml", "gpu-families.yaml"})
DMI_FIELDS = tuple(f.name for f in fields(Dmi))  # system_vendor, board_name, ...
REQUIRED_KEYS = ("name", "version", "description", "sources", "match")
OPTIONAL_KEYS = (
    "drivers", "engine", "engine_defaults", "engines", "smoke", "kernel_args", "image",
    "kernel", "gpu",
)  # fmt: skip
GPU_KEYS = ("architecture", "compute_capability", "kernel_modules", "driver_min", "driver_max")
ENGINE_RULE_KEYS = (
    "refused", "use", "backend", "gpu_arch", "cpu_baseline", "dtype", "quantization",
    "min_compute_capability", "visible_devices",
)  # fmt: skip
TOP_KEYS = frozenset(REQUIRED_KEYS + OPTIONAL_KEYS)
RULE_KINDS = ("pci", "cpu_model", "memory_min_gib", "dmi")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
IMAGE_REF = re.compile(r"^[a-z0-9][a-z0-9-]*(@[1-9][0-9]*)?$")
PCI_ID_RE = re.compile(r"^([0-9a-f]{4}):([0-9a-f]{4})(?: rev ([0-9a-f]{2}))?$", re.IGNORECASE)
PCI_CLASS_RE = re.compile(r"^[0-9a-f]{4}$", re.IGNORECASE)
GIB = 1024**3


class Engine(StrEnum):
    VLLM = "vllm"
    LLAMA_RPC = "llama-rpc"
    NONE = "none"


@dataclass(frozen=True)
class ProfileProblem:
    file: str
    line: int
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}: {self.reason}"


class ProfileError(ProvisionerError):
    """Profiles refused at load: carries every :class:`ProfileProblem` found."""

    def __init__(self, problems: list[ProfileProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# ---------------------------------------------------------------- rules


@dataclass(frozen=True)
class PciId:
    vendor: str
    device: str
    revision: str | None = None

    def __str__(self) -> str:
        rev = f" rev {self.revision}" if self.revision else ""
        return f"{self.vendor}:{self.device}{rev}"


@dataclass(frozen=True)
class PciRule:
    """Count the PCI devices with one of ``ids`` (or of ``classes``); min <= count <= max."""

    ids: tuple[PciId, ...] = ()
    classes: tuple[str, ...] = ()
    min: int = 1
    max: int | None = None
    line: int = 0
    family: str | None = None  # the GPU family ``ids`` were expanded from (families.py)

    def describe(self) -> str:
        if self.family:
            what = f"family {self.family}: {len(self.ids)} ids"
        elif self.ids:
            what = ", ".join(str(i) for i in self.ids)
        else:
            what = "class " + ", ".join(self.classes)
        if self.max is None:
            bound = f">= {self.min}"
        elif self.min == self.max:
            bound = f"== {self.min}"
        else:
            bound = f"{self.min}..{self.max}"
        return f"pci [{what}] count {bound}"


@dataclass(frozen=True)
class CpuRule:
    pattern: re.Pattern[str]
    line: int = 0

    def describe(self) -> str:
        return f"cpu_model ~ /{self.pattern.pattern}/"


@dataclass(frozen=True)
class MemoryRule:
    min_gib: float
    line: int = 0

    @property
    def min_bytes(self) -> int:
        return int(self.min_gib * GIB)

    def describe(self) -> str:
        return f"memory >= {self.min_gib:g} GiB"


@dataclass(frozen=True)
class DmiRule:
    field: str
    exact: str | None = None
    pattern: re.Pattern[str] | None = None
    line: int = 0

    def describe(self) -> str:
        if self.pattern is not None:
            return f"dmi.{self.field} ~ /{self.pattern.pattern}/"
        return f"dmi.{self.field} == {self.exact!r}"


Rule = PciRule | CpuRule | MemoryRule | DmiRule


# ---------------------------------------------------------------- profiles


@dataclass(frozen=True)
class EngineDefaults:
    dtype: str | None = None
    quantization: str | None = None


@dataclass(frozen=True)
class EngineRule:
    """What a profile says of one engine: how it runs there, or why it does not."""

    engine: Engine
    refused: str | None = None  # the reason it does not run on this hardware
    use: Engine | None = None  # the engine to use instead (with ``refused``)
    settings: tuple[tuple[str, str], ...] = ()  # backend, gpu_arch, dtype, quantization...

    def setting(self, key: str) -> str | None:
        return dict(self.settings).get(key)


@dataclass(frozen=True)
class Gpu:
    """What a GPU profile says of its cards: what drivers and builds follow from them."""

    architecture: str | None = None
    compute_capability: str | None = None  # NVIDIA: "8.6"
    kernel_modules: str | None = None  # NVIDIA: "open" (Turing on) or "proprietary"
    driver_min: int | None = None  # the oldest driver branch that runs the cards
    driver_max: int | None = None  # the newest (580: the last for Pascal and Volta)


@dataclass(frozen=True)
class Smoke:
    reference_model: str | None = None
    min_tokens_per_s: float | None = None
    max_ttft_s: float | None = None


@dataclass(frozen=True)
class Profile:
    name: str
    version: int
    description: str
    sources: tuple[str, ...]
    all_of: tuple[Rule, ...] = ()
    any_of: tuple[Rule, ...] = ()
    drivers: tuple[str, ...] = ()
    engine: Engine = Engine.NONE
    engine_defaults: EngineDefaults = field(default_factory=EngineDefaults)
    smoke: Smoke = field(default_factory=Smoke)
    kernel_args: tuple[str, ...] = ()
    image: str | None = None  # the image its nodes boot (None: the config's default)
    kernel: KernelNeed | None = None  # the kernel its hardware needs (kernel_need.py)
    engines: tuple[EngineRule, ...] = ()  # empty: no engine is ruled out
    gpu: Gpu | None = None
    file: str = ""
    line: int = 1

    def engine_rule(self, engine: Engine) -> EngineRule | None:
        return next((r for r in self.engines if r.engine is engine), None)

    def refuses(self, engine: Engine) -> tuple[str, Engine | None] | None:
        """Why ``engine`` does not run on this profile and what to use instead, or None."""
        if not self.engines:
            return None
        rule = self.engine_rule(engine)
        if rule is None:
            listed = ", ".join(r.engine.value for r in self.engines if r.refused is None)
            fallback = self.engine if self.engine is not Engine.NONE else None
            return (f"profile {self.name} lists no {engine.value} (it runs: {listed})", fallback)
        if rule.refused is not None:
            return (rule.refused, rule.use)
        return None

    @property
    def family(self) -> str | None:
        """The GPU family its PCI rule names (a family profile), else None."""
        rules = (*self.all_of, *self.any_of)
        return next((r.family for r in rules if isinstance(r, PciRule) and r.family), None)

    @property
    def anchor(self) -> PciRule | DmiRule | None:
        """What indexes the profile: its first required PCI-id rule needing a device, else
        its first required exact DMI rule; None when it must be checked on every inventory."""
        for rule in self.all_of:
            if isinstance(rule, PciRule) and rule.ids and rule.min >= 1:
                return rule
        for rule in self.all_of:
            if isinstance(rule, DmiRule) and rule.exact is not None:
                return rule
        return None


class ProfileSet:
    """Loaded profiles by name, indexed by their anchor (PCI ids, or an exact DMI value)."""

    def __init__(self, profiles: Iterable[Profile] = ()) -> None:
        self.profiles: tuple[Profile, ...] = tuple(sorted(profiles, key=lambda p: p.name))
        self._by_name = {p.name: p for p in self.profiles}
        unanchored: list[int] = []
        by_ids: dict[tuple[str, str], list[int]] = {}
        by_dmi: dict[tuple[str, str], list[int]] = {}
        for i, profile in enumerate(self.profiles):
            anchor = profile.anchor
            if isinstance(anchor, PciRule):
                for key in {(pid.vendor, pid.device) for pid in anchor.ids}:
                    by_ids.setdefault(key, []).append(i)
            elif isinstance(anchor, DmiRule) and anchor.exact is not None:
                by_dmi.setdefault((anchor.field, anchor.exact), []).append(i)
            else:
                unanchored.append(i)
        self.anchored = {k: tuple(v) for k, v in by_ids.items()}
        self.dmi_anchored = {k: tuple(v) for k, v in by_dmi.items()}
        self.unanchored: tuple[int, ...] = tuple(unanchored)

    def __iter__(self) -> Iterator[Profile]:
        return iter(self.profiles)

    def __len__(self) -> int:
        return len(self.profiles)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str) -> Profile | None:
        return self._by_name.get(name)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.profiles]


# ---------------------------------------------------------------- loading

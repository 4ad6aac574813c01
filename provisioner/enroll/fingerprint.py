"""Fingerprint: one inventory x the profile set -> the most specific matching profile, and why.

Pure and deterministic: no clock, no randomness, and no I/O once the accelerator table and
pci.ids are loaded (pass ``table``/``db`` to make that explicit; by default both are read
once per process). Lookups of devices in those tables are remembered per process, which
changes no answer. The inventory is read once into
:class:`Facts` (PCI id, revision and class counts; CPU model; memory; DMI); each profile's
rules are then checked against those facts.

A profile matches when every ``all`` rule passes and, if it has ``any`` rules, at least one
of them passes. Among matching profiles the most specific wins. Specificity is the tuple
``(PCI-id rules, DMI rules, PCI-class rules, CPU rules, memory rules)`` counting the rules
that passed (PCI rules only when they asked for at least one device), compared in that
order: a profile that names the exact PCI ids beats one that names only the board, which
beats one that names only the CPU. ``generic-cpu`` has no rules, so ``(0, 0, 0, 0, 0)``: it
wins only when nothing else matches. At the same specificity a profile that lists its cards
beats a family profile (``pci: {family: ...}``: every card of an architecture), so the
seeds' specific profiles win where they apply. Two matching profiles with the same highest
specificity otherwise are a conflict: ``profile`` is None and ``conflict`` names them.

Speed: a profile anchored on PCI ids (a required ``pci: {ids: ...}`` rule) is only checked
when one of those ids is present, one anchored on an exact DMI value only when that value
is (:class:`ProfileSet` indexes both); the others always are. Candidates are the profiles
checked that matched or passed at least one rule. ``explain_all=True`` checks and lists
every profile, for ``profile match --explain``.

Devices that a dump names without ids (``sycl-ls``, ``inxi``, plain ``lspci``) count under
the ids the accelerator table resolves their name to (unambiguous names only, as in
:mod:`provisioner.discovery.accelerators`); other name-only devices have no ids to match.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property

from provisioner.discovery import accelerators as acc
from provisioner.discovery import pciids
from provisioner.discovery.model import Inventory, PciDevice
from provisioner.profiles import (
    GIB,
    CpuRule,
    DmiRule,
    MemoryRule,
    PciRule,
    Profile,
    ProfileSet,
    Rule,
)

Specificity = tuple[int, int, int, int, int]
LEAST: Specificity = (0, 0, 0, 0, 0)


@dataclass(frozen=True)
class RuleResult:
    group: str  # "all" | "any"
    rule: str  # the rule as written, e.g. "pci [10de:1b38] count >= 1"
    passed: bool
    observed: str  # what the inventory had, e.g. "1 (10de:1b38 x1)" or "unknown"
    line: int  # the rule's line in the profile file


@dataclass(frozen=True)
class Candidate:
    """One profile checked against one inventory. ``rules`` (with what was observed) are
    spelled out on first use: ranking needs only pass/fail."""

    profile: str
    matched: bool
    specificity: Specificity
    checks: tuple[tuple[str, Rule, bool], ...]  # (group, rule, passed) in file order
    facts: Facts = field(compare=False, repr=False)
    passed_count: int = field(default=0, compare=False, repr=False)
    family: bool = field(default=False, compare=False)  # a family profile: loses a tie

    @property
    def name(self) -> str:
        """The profile's name (alias of ``profile``)."""
        return self.profile

    @cached_property
    def rules(self) -> tuple[RuleResult, ...]:
        return tuple(
            RuleResult(group, rule.describe(), ok, check(rule, self.facts)[1], rule.line)
            for group, rule, ok in self.checks
        )

    @property
    def passed(self) -> tuple[RuleResult, ...]:
        return tuple(r for r in self.rules if r.passed)

    @property
    def failed(self) -> tuple[RuleResult, ...]:
        return tuple(r for r in self.rules if not r.passed)


@dataclass(frozen=True)
class Match:
    profile: str | None
    accelerators: tuple[acc.Accelerator, ...]
    candidates: tuple[Candidate, ...]  # matched first (most specific first), then the rest
    conflict: tuple[str, ...] = ()  # names of equally specific matches; profile is None

    @property
    def matched(self) -> bool:
        return self.profile is not None


@dataclass(frozen=True)
class Facts:
    """What rules look at, read once per inventory."""

    ids: Counter[tuple[str, str]]
    revs: Counter[tuple[str, str, str]]
    classes: Counter[str]
    cpu_model: str | None
    memory_bytes: int | None
    dmi: dict[str, str | None]
    accelerators: tuple[acc.Accelerator, ...] = ()


AccKey = tuple[str, str, str, str | None, bool]  # slug, vendor, device, family, ids from dump


class _Lookups:
    """Memo of table lookups, name resolutions and pci.ids names for one (table, db) pair.

    Same answers as :func:`provisioner.discovery.accelerators.resolve`, remembered: a fleet
    repeats the same few devices, so each is looked up once per process.
    """

    def __init__(self, table: acc.Table, db: pciids.PciIds) -> None:
        self.table, self.db = table, db
        self.by_ids: dict[tuple[str, str, str | None], acc.Entry | None] = {}
        self.by_name: dict[tuple[str | None, str | None, str, str | None], acc.Entry | None] = {}
        self.names: dict[tuple[str, str], str | None] = {}

    def entry(self, dev: PciDevice) -> acc.Entry | None:
        if dev.vendor and dev.device:
            key = (dev.vendor, dev.device, dev.revision)
            if key not in self.by_ids:
                self.by_ids[key] = self.table.lookup(dev.vendor, dev.device, dev.revision)
            return self.by_ids[key]
        if not dev.device_name:
            return None
        nkey = (dev.vendor, dev.vendor_name, dev.device_name, dev.revision)
        if nkey not in self.by_name:
            self.by_name[nkey] = acc.resolve(dev, self.table, self.db)[0]
        return self.by_name[nkey]

    def name(self, vendor: str, device: str) -> str | None:
        if (vendor, device) not in self.names:
            self.names[vendor, device] = self.db.name(vendor, device)
        return self.names[vendor, device]


_memo: list[_Lookups] = []


def _lookups(table: acc.Table, db: pciids.PciIds) -> _Lookups:
    if not _memo or _memo[0].table is not table or _memo[0].db is not db:
        _memo[:] = [_Lookups(table, db)]
    return _memo[0]


_short_cache: dict[str, str] = {}


def _short(address: str) -> str:
    """'0000:01:00.0' / '00000000:01:00.0' / '01:00.0' -> '01:00.0' (as accelerators does)."""
    short = _short_cache.get(address)
    if short is None:
        lower = address.lower()
        domain, sep, rest = lower.partition(":")
        short = rest if sep and rest.count(":") == 1 and not domain.strip("0") else lower
        if len(_short_cache) < 65536:
            _short_cache[address] = short
    return short


def facts(inventory: Inventory, table: acc.Table, db: pciids.PciIds) -> Facts:
    """One pass over the PCI devices: counts by ids, revision and class; accelerators."""
    look = _lookups(table, db)
    by_ids = look.by_ids
    ids: Counter[tuple[str, str]] = Counter()
    revs: Counter[tuple[str, str, str]] = Counter()
    classes: Counter[str] = Counter()
    found: Counter[AccKey] = Counter()
    printed: dict[AccKey, str | None] = {}
    seen: set[str] = set()
    for dev in inventory.pci:
        if dev.address:
            address = _short_cache.get(dev.address) or _short(dev.address)
            if address in seen:
                continue
            seen.add(address)
        if dev.pci_class:
            classes[dev.pci_class] = classes.get(dev.pci_class, 0) + 1
        vendor, device = dev.vendor, dev.device
        exact = bool(vendor and device)
        if vendor and device:
            id_key = (vendor, device, dev.revision)
            entry = by_ids[id_key] if id_key in by_ids else look.entry(dev)
        else:
            entry = look.entry(dev)
            if entry is None:
                continue
            vendor, device = entry.vendor, entry.device
        pair = (vendor, device)
        ids[pair] = ids.get(pair, 0) + 1
        if dev.revision:
            triple = (vendor, device, dev.revision)
            revs[triple] = revs.get(triple, 0) + 1
        if entry is not None:
            key = (entry.slug, entry.vendor, entry.device, entry.family, exact)
            found[key] += 1
            printed.setdefault(key, dev.device_name)
    named = [
        acc.Accelerator(
            slug,
            vendor,
            device,
            (look.name(vendor, device) if exact else None) or printed[key] or f"{vendor}:{device}",
            count,
            family,
            exact,
        )
        for key, count in found.items()
        for slug, vendor, device, family, exact in [key]
    ]
    named.sort(key=lambda a: (a.slug, a.vendor, a.device))
    dmi = inventory.dmi
    return Facts(
        ids=ids,
        revs=revs,
        classes=classes,
        cpu_model=inventory.cpu.model_name if inventory.cpu else None,
        memory_bytes=inventory.memory_bytes,
        dmi={
            "system_vendor": dmi.system_vendor,
            "system_product": dmi.system_product,
            "system_serial": dmi.system_serial,
            "board_vendor": dmi.board_vendor,
            "board_name": dmi.board_name,
            "bios_vendor": dmi.bios_vendor,
            "bios_version": dmi.bios_version,
        },
        accelerators=tuple(named),
    )


def check(rule: Rule, found: Facts) -> tuple[bool, str]:
    """Does ``rule`` pass on these facts, and what was observed."""
    if isinstance(rule, PciRule):
        if rule.ids:
            hits: list[str] = []
            count = 0
            for pid in rule.ids:
                n = (
                    found.revs[pid.vendor, pid.device, pid.revision]
                    if pid.revision
                    else found.ids[pid.vendor, pid.device]
                )
                if n:
                    count += n
                    hits.append(f"{pid} x{n}")
        else:
            hits = [f"{c} x{found.classes[c]}" for c in rule.classes if found.classes[c]]
            count = sum(found.classes[c] for c in rule.classes)
        ok = count >= rule.min and (rule.max is None or count <= rule.max)
        return ok, f"{count} ({', '.join(hits)})" if hits else str(count)
    if isinstance(rule, CpuRule):
        if found.cpu_model is None:
            return False, "unknown"
        return rule.pattern.search(found.cpu_model) is not None, repr(found.cpu_model)
    if isinstance(rule, MemoryRule):
        if found.memory_bytes is None:
            return False, "unknown"
        return found.memory_bytes >= rule.min_bytes, f"{found.memory_bytes / GIB:.1f} GiB"
    assert isinstance(rule, DmiRule)
    value = found.dmi.get(rule.field)
    if value is None:
        return False, "unknown"
    value = value.strip()
    if rule.pattern is not None:
        return rule.pattern.search(value) is not None, repr(value)
    return value == rule.exact, repr(value)


def passes(rule: Rule, found: Facts) -> bool:
    """Does ``rule`` pass on these facts (the fast half of :func:`check`)."""
    if isinstance(rule, PciRule):
        if rule.ids:
            count = 0
            for pid in rule.ids:
                if pid.revision:
                    count += found.revs.get((pid.vendor, pid.device, pid.revision), 0)
                else:
                    count += found.ids.get((pid.vendor, pid.device), 0)
        else:
            count = sum(found.classes.get(c, 0) for c in rule.classes)
        return count >= rule.min and (rule.max is None or count <= rule.max)
    if isinstance(rule, DmiRule):
        value = found.dmi.get(rule.field)
        if value is None:
            return False
        if rule.pattern is not None:
            return rule.pattern.search(value.strip()) is not None
        return value.strip() == rule.exact
    if isinstance(rule, CpuRule):
        return found.cpu_model is not None and rule.pattern.search(found.cpu_model) is not None
    return found.memory_bytes is not None and found.memory_bytes >= rule.min_bytes


def _weight(rule: Rule) -> int:
    """Index into the specificity tuple for a passed rule; -1 when it does not count."""
    if isinstance(rule, PciRule):
        if rule.min < 1:
            return -1
        return 0 if rule.ids else 2
    if isinstance(rule, DmiRule):
        return 1
    if isinstance(rule, CpuRule):
        return 3
    return 4


Checked = tuple[bool, Specificity, int, tuple[tuple[str, Rule, bool], ...]]


def _check_profile(profile: Profile, found: Facts) -> Checked:
    """(matched, specificity, rules passed, (group, rule, passed) per rule)."""
    checks: list[tuple[str, Rule, bool]] = []
    score = [0, 0, 0, 0, 0]
    all_ok = True
    any_ok = not profile.any_of
    passed = 0
    for group, rules in (("all", profile.all_of), ("any", profile.any_of)):
        for rule in rules:
            ok = passes(rule, found)
            checks.append((group, rule, ok))
            if ok:
                passed += 1
                any_ok = any_ok or group == "any"
                slot = _weight(rule)
                if slot >= 0:
                    score[slot] += 1
            elif group == "all":
                all_ok = False
    spec: Specificity = (score[0], score[1], score[2], score[3], score[4])
    return all_ok and any_ok, spec, passed, tuple(checks)


def evaluate(profile: Profile, found: Facts) -> Candidate:
    """Every rule of ``profile`` checked against ``found``."""
    matched, spec, passed, checks = _check_profile(profile, found)
    return Candidate(profile.name, matched, spec, checks, found, passed, profile.family is not None)


def fingerprint(
    inventory: Inventory,
    profiles: ProfileSet,
    *,
    explain_all: bool = False,
    table: acc.Table | None = None,
    db: pciids.PciIds | None = None,
) -> Match:
    """The most specific profile matching ``inventory`` (None when none or in conflict)."""
    table = table or acc.default_table()
    db = db if db is not None else pciids.default()
    found = facts(inventory, table, db)
    if explain_all:
        chosen: list[int] = list(range(len(profiles.profiles)))
    else:
        picked = set(profiles.unanchored)
        for key in found.ids:
            picked.update(profiles.anchored.get(key, ()))
        for item in found.dmi.items():
            if item[1] is not None:
                picked.update(profiles.dmi_anchored.get((item[0], item[1].strip()), ()))
        chosen = sorted(picked)
    kept: list[Candidate] = []
    for i in chosen:
        profile_i = profiles.profiles[i]
        ok, spec, passed, checks = _check_profile(profile_i, found)
        # Without explain_all, a profile that passed no rule at all is no candidate.
        if explain_all or passed or ok:
            family = profile_i.family is not None
            kept.append(Candidate(profile_i.name, ok, spec, checks, found, passed, family))
    candidates = sorted(kept, key=_rank)
    matched = [c for c in candidates if c.matched]
    profile: str | None = None
    conflict: tuple[str, ...] = ()
    if matched:
        best = matched[0].specificity
        tied = tuple(c.profile for c in matched if c.specificity == best and not c.family)
        tied = tied or tuple(c.profile for c in matched if c.specificity == best)
        if len(tied) > 1:
            conflict = tied
        else:
            profile = tied[0]
    return Match(profile, found.accelerators, tuple(candidates), conflict)


def _rank(c: Candidate) -> tuple[bool, int, int, int, int, int, bool, int, str]:
    """Matched first, most specific first, a card's profile before a family's, then most
    rules passed, then by name."""
    spec = c.specificity
    n = c.passed_count
    return (
        not c.matched,
        -spec[0],
        -spec[1],
        -spec[2],
        -spec[3],
        -spec[4],
        c.family,
        -n,
        c.profile,
    )

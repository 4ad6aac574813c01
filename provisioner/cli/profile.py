"""``provisioner profile ...``: list, show, validate, match dumps, scaffold a new profile.

Mounted by :mod:`provisioner.cli` with :func:`add_profile_commands`; each subcommand sets
``func`` to a callable taking the parsed Namespace and returning the exit status (the
scheme of :mod:`provisioner.cli.common`; these print their own errors). Thin:
the work is in :mod:`provisioner.profiles` and :mod:`provisioner.enroll.fingerprint`.

The profiles directory is ``--profiles DIR``, else ``$PROVISIONER_HWPROFILES``, else the
``hwprofiles/`` next to the package.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provisioner.cli.common import Exit, config_path
from provisioner.config import load_config
from provisioner.data import HWPROFILES
from provisioner.discovery import pciids
from provisioner.discovery.accelerators import name_candidates
from provisioner.discovery.dumps import DumpResult, parse_dump
from provisioner.discovery.model import Inventory
from provisioner.enroll.fingerprint import Candidate, Match, fingerprint
from provisioner.enroll.scaffold import scaffold
from provisioner.profiles import (
    NAME_RE,
    CpuRule,
    DmiRule,
    MemoryRule,
    PciRule,
    Profile,
    ProfileError,
    ProfileProblem,
    ProfileSet,
    Rule,
    load_profiles,
    validate,
)

ENV_VAR = "PROVISIONER_HWPROFILES"


def default_profiles_dir(args: argparse.Namespace | None = None) -> Path:
    """The profiles ``serve`` reads: the configuration's ``[cluster] profiles`` when one is
    in force (--config, $PROVISIONER_CONFIG, the system's), else $PROVISIONER_HWPROFILES,
    else the hwprofiles/ shipped with the package."""
    if args is not None:
        path = config_path(args, lab_fallback=False)
        if path.exists():
            return load_config(path).cluster.profiles_dir
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    return HWPROFILES


SubParsers = argparse._SubParsersAction  # the type argparse's add_subparsers() returns


def add_profile_commands(subparsers: Any) -> SubParsers[argparse.ArgumentParser]:
    """Register ``profile list|show|validate|match|new`` on a top-level subparsers object;
    returns the ``profile`` subparsers so the caller can mount more (``reload``)."""
    profile: argparse.ArgumentParser = subparsers.add_parser(
        "profile", help="hardware profiles (hwprofiles/*.yaml)"
    )
    sub = profile.add_subparsers(dest="profile_command", required=True)

    def with_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument("--profiles", metavar="DIR", help=f"profiles directory (${ENV_VAR})")

    plist = sub.add_parser("list", help="every profile: name, version, engine, file")
    with_dir(plist)
    plist.add_argument("--json", action="store_true")
    plist.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="one profile in full")
    with_dir(show)
    show.add_argument("name")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)

    check = sub.add_parser("validate", help="report every problem as file:line: key: reason")
    check.add_argument("paths", nargs="*", metavar="PATH", help="files or directories")
    check.add_argument(
        "--json", action="store_true", help="{paths, ok, problems: [{file, line, key, reason}]}"
    )
    check.set_defaults(func=cmd_validate)

    match = sub.add_parser("match", help="which profile a hardware dump gets, and why")
    with_dir(match)
    match.add_argument("files", nargs="+", metavar="FILE", help="dump files; - reads stdin")
    match.add_argument("--explain", action="store_true", help="every profile, rule by rule")
    match.add_argument("--json", action="store_true", help="a JSON array, one object per file")
    match.set_defaults(func=cmd_match)

    new = sub.add_parser("new", help="scaffold a profile from a real dump's accelerators")
    new.add_argument("name")
    new.add_argument("--from", dest="dump", required=True, metavar="DUMP", help="- is stdin")
    new.add_argument("--out", metavar="FILE", help="write here instead of printing")
    new.add_argument("--force", action="store_true", help="overwrite --out")
    new.set_defaults(func=cmd_new)
    return sub


# ---------------------------------------------------------------- helpers


def _load(args: argparse.Namespace) -> ProfileSet | None:
    directory = Path(args.profiles) if args.profiles else default_profiles_dir(args)
    try:
        return load_profiles(directory)
    except ProfileError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def _with_profiles(
    command: Callable[[argparse.Namespace, ProfileSet], int],
) -> Callable[[argparse.Namespace], int]:
    """A command that needs the profiles: it runs with them loaded, or exits 1 once
    :func:`_load` has printed why they could not be."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        profiles = _load(args)
        return 1 if profiles is None else command(args, profiles)

    return run


def _print_json(data: object) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _read(name: str) -> str:
    if name == "-":
        return sys.stdin.read()
    return Path(name).read_text(encoding="utf-8", errors="replace")


def rule_to_dict(rule: Rule) -> dict[str, object]:
    if isinstance(rule, PciRule):
        pci: dict[str, object] = (
            {"ids": [str(i) for i in rule.ids]} if rule.ids else {"class": list(rule.classes)}
        )
        pci["min"] = rule.min
        if rule.max is not None:
            pci["max"] = rule.max
        return {"pci": pci}
    if isinstance(rule, CpuRule):
        return {"cpu_model": rule.pattern.pattern}
    if isinstance(rule, MemoryRule):
        return {"memory_min_gib": rule.min_gib}
    assert isinstance(rule, DmiRule)
    value: object = rule.exact if rule.pattern is None else {"regex": rule.pattern.pattern}
    return {"dmi": {rule.field: value}}


def profile_to_dict(profile: Profile) -> dict[str, object]:
    match: dict[str, object] = {}
    if profile.all_of:
        match["all"] = [rule_to_dict(r) for r in profile.all_of]
    if profile.any_of:
        match["any"] = [rule_to_dict(r) for r in profile.any_of]
    smoke = profile.smoke
    return {
        "name": profile.name,
        "version": profile.version,
        "description": profile.description,
        "sources": list(profile.sources),
        "match": match,
        "drivers": list(profile.drivers),
        "engine": profile.engine.value,
        "engine_defaults": {
            "dtype": profile.engine_defaults.dtype,
            "quantization": profile.engine_defaults.quantization,
        },
        "smoke": {
            "reference_model": smoke.reference_model,
            "min_tokens_per_s": smoke.min_tokens_per_s,
            "max_ttft_s": smoke.max_ttft_s,
        },
        "kernel_args": list(profile.kernel_args),
        "file": profile.file,
    }


def candidate_to_dict(c: Candidate) -> dict[str, object]:
    def one(r: Any) -> dict[str, object]:
        return {"group": r.group, "rule": r.rule, "observed": r.observed, "line": r.line}

    return {
        "profile": c.profile,
        "matched": c.matched,
        "specificity": list(c.specificity),
        "passed": [one(r) for r in c.passed],
        "failed": [one(r) for r in c.failed],
    }


def match_to_dict(name: str, dump: DumpResult, m: Match) -> dict[str, object]:
    inv = dump.inventory
    return {
        "file": name,
        "format": dump.format,
        "sections": [s.as_dict() for s in dump.sections],
        "skipped": list(dump.skipped),
        "carriers": list(dump.carriers),
        "profile": m.profile,
        "conflict": list(m.conflict),
        "accelerators": [
            {
                "vendor": a.vendor,
                "device": a.device,
                "name": a.name,
                "count": a.count,
                "slug": a.slug,
                "family": a.family,
                "ids_from_dump": a.ids_from_dump,
            }
            for a in m.accelerators
        ],
        "candidates": [candidate_to_dict(c) for c in m.candidates],
        "partial": inv.partial,
        "problems": list(inv.problems),
    }


# ---------------------------------------------------------------- commands


@_with_profiles
def cmd_list(args: argparse.Namespace, profiles: ProfileSet) -> int:
    if args.json:
        _print_json(
            [
                {
                    "name": p.name,
                    "version": p.version,
                    "engine": p.engine.value,
                    "description": p.description,
                    "file": p.file,
                }
                for p in profiles
            ]
        )
        return 0
    for p in profiles:
        first = p.description.split(". ")[0].rstrip(".")
        print(f"{p.name:<22} v{p.version:<3} {p.engine.value:<10} {first}")
    return 0


@_with_profiles
def cmd_show(args: argparse.Namespace, profiles: ProfileSet) -> int:
    profile = profiles.get(args.name)
    if profile is None:
        print(f"no profile {args.name!r}; known: {', '.join(profiles.names)}", file=sys.stderr)
        return Exit.NOT_FOUND
    data = profile_to_dict(profile)
    if args.json:
        _print_json(data)
        return 0
    print(f"{profile.name} (version {profile.version}, {profile.file}:{profile.line})")
    print(f"  {profile.description}")
    for group, rules in (("all of", profile.all_of), ("any of", profile.any_of)):
        for rule in rules:
            print(f"  match {group}: {rule.describe()}")
    if not profile.all_of and not profile.any_of:
        print("  match: anything (no rules)")
    print(f"  engine: {profile.engine.value}", end="")
    defaults = profile.engine_defaults
    extra = [
        f"{k}={v}"
        for k, v in (("dtype", defaults.dtype), ("quantization", defaults.quantization))
        if v
    ]
    print(f" ({', '.join(extra)})" if extra else "")
    if profile.drivers:
        print(f"  drivers: {', '.join(profile.drivers)}")
    if profile.kernel_args:
        print(f"  kernel args: {' '.join(profile.kernel_args)}")
    smoke = profile.smoke
    if smoke.reference_model:
        print(
            f"  smoke: {smoke.reference_model}: >= {smoke.min_tokens_per_s} tokens/s, "
            f"TTFT <= {smoke.max_ttft_s} s"
        )
    for source in profile.sources:
        print(f"  source: {source}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.paths] or [default_profiles_dir(args)]
    missing = [ProfileProblem(str(p), 0, "path", "does not exist") for p in paths if not p.exists()]
    problems = [*missing, *validate([p for p in paths if p.exists()])]
    if args.json:
        _print_json(
            {
                "paths": [str(p) for p in paths],
                "ok": not problems,
                "problems": [dataclasses.asdict(p) for p in problems],
            }
        )
        return 1 if problems else 0
    for problem in missing:
        print(problem, file=sys.stderr)
    for problem in problems[len(missing) :]:
        print(problem)
    if problems:
        return 1
    print(f"ok: {', '.join(str(p) for p in paths)}")
    return 0


@_with_profiles
def cmd_match(args: argparse.Namespace, profiles: ProfileSet) -> int:
    status = 0
    results: list[dict[str, object]] = []
    for name in args.files:
        try:
            text = _read(name)
        except OSError as exc:
            print(f"{name}: cannot read: {exc.strerror or exc}", file=sys.stderr)
            status = 1
            continue
        dump = parse_dump(text)
        if dump.format is None:
            status = 1
        m = fingerprint(dump.inventory, profiles, explain_all=args.explain)
        if dump.format is None:  # nothing was read: no profile, not even the fallback
            m = Match(None, m.accelerators, m.candidates, ())
        if args.json:
            results.append(match_to_dict(name, dump, m))
        else:
            _print_match(name, dump, m, profiles, explain=args.explain)
    if args.json:
        _print_json(results)
    return status


def _print_match(
    name: str, dump: DumpResult, m: Match, profiles: ProfileSet, *, explain: bool
) -> None:
    fmt, inv = dump.format, dump.inventory
    if m.profile is not None:
        verdict = m.profile
    elif m.conflict:
        verdict = f"none: conflict between {', '.join(m.conflict)} (equally specific)"
    else:
        verdict = "none (unmatched)"
    print(f"{name}: {fmt or 'unknown format'}: profile {verdict}")
    if explain or len(dump.sections) > 1:
        if dump.carriers:
            print(f"  undone first: {', '.join(dump.carriers)}")
        for s in dump.sections:
            print(f"  section lines {s.first}-{s.last}: {s.format}, {s.pci_devices} PCI devices")
        for skipped in dump.skipped if explain else ():
            print(f"  {skipped}")
    for line in _names_resolved(inv) if explain else ():
        print(f"  {line}")
    for a in m.accelerators:
        print(f"  accelerator: {a.slug} {a.vendor}:{a.device} {a.name!r} x{a.count}")
    for problem in inv.problems if fmt is None else ():
        print(f"  problem: {problem}")
    for c in m.candidates:
        state = "matched" if c.matched else "no match"
        spec = ".".join(str(n) for n in c.specificity)
        where = profiles.get(c.profile)
        place = f"  {where.file}" if explain and where is not None else ""
        print(f"  candidate {c.profile}: {state}, specificity {spec}{place}")
        if not explain:
            continue
        if not c.rules:
            print("    (no rules: matches anything)")
        for r in c.rules:
            mark = "pass" if r.passed else "FAIL"
            print(f"    {mark} {r.group}-of line {r.line}: {r.rule}; observed {r.observed}")


def _names_resolved(inv: Inventory) -> list[str]:
    """For each device the dump named without ids: the ids its name resolved to, and how."""
    db = pciids.default()
    lines: list[str] = []
    seen: set[tuple[str | None, str]] = set()
    for dev in inv.pci:
        if (dev.vendor and dev.device) or not dev.device_name:
            continue
        if (dev.vendor, dev.device_name) in seen:
            continue
        seen.add((dev.vendor, dev.device_name))
        found, how = name_candidates(dev, db)
        if not found:
            lines.append(f"name {dev.device_name!r}: no pci.ids name matches")
            continue
        shown = ", ".join(f"{v}:{d}" for v, d in found[:8]) + (" ..." if len(found) > 8 else "")
        lines.append(f"name {dev.device_name!r} -> {len(found)} ids by {how}: {shown}")
    return lines


def cmd_new(args: argparse.Namespace) -> int:
    if not NAME_RE.match(args.name):
        print(f"{args.name!r}: use lowercase letters, digits and '-'", file=sys.stderr)
        return Exit.USAGE
    try:
        text = _read(args.dump)
    except OSError as exc:
        print(f"{args.dump}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return 1
    dump = parse_dump(text)
    if dump.format is None:
        print(f"{args.dump}: {'; '.join(dump.inventory.problems)}", file=sys.stderr)
        return 1
    try:
        body = scaffold(args.name, args.dump, dump.format, dump.inventory)
    except ValueError as exc:
        print(f"{args.dump}: {exc}", file=sys.stderr)
        return 1
    if not args.out:
        sys.stdout.write(body)
        return 0
    out = Path(args.out)
    if out.exists() and not args.force:
        print(f"{out} exists; --force overwrites it", file=sys.stderr)
        return Exit.REFUSED
    out.write_text(body, encoding="utf-8")
    print(f"wrote {out}; now: provisioner profile validate {out}")
    return 0

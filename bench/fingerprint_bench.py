"""Benchmark fingerprinting: 10,000 inventories x 50 profiles (run on demand, not a test).

The issue's bar is under 1 s. Inventories are the real parsed dumps (../shared/fixtures/hw,
when present, and the pastes in tests/fixtures/pastes: mixed, quoted, name-only) and the
lab's agent reports, cycled with a different serial each, so every
inventory is a distinct object. Profiles are the shipped ones plus synthetic ones up to 50:
four in five anchored on accelerator ids from hwprofiles/accelerators.yaml (with a DMI or
memory rule), one in five unanchored (CPU regex and memory, or a DMI regex), which are
checked against every inventory: with generic-cpu, 9 of the 50 profiles are checked on
every inventory (--unanchored-every N changes the share).

Baseline: there is no outside tool that does this job, so the comparison is our own naive
path: the same fingerprint with ``explain_all=True`` (every rule of every profile checked,
no PCI-id index), on the same inventories in the same run. Median of --repeat rounds.

    .venv/bin/python bench/fingerprint_bench.py [--inventories 10000] [--profiles 50]
        [--unanchored-every 5] [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

from provisioner.discovery import pciids
from provisioner.discovery.accelerators import default_table
from provisioner.discovery.dumps import parse_dump
from provisioner.discovery.model import Inventory
from provisioner.enroll.fingerprint import fingerprint
from provisioner.profiles import ProfileSet, load_profiles, parse_profile

ROOT = Path(__file__).resolve().parents[1]
HW = ROOT.parent / "shared" / "fixtures" / "hw"


def inventories(count: int) -> list[Inventory]:
    sources = sorted((ROOT / "tests" / "fixtures" / "agent").glob("*.txt"))
    sources += sorted((ROOT / "tests" / "fixtures" / "pastes").glob("*.txt"))
    if HW.is_dir():
        sources += sorted(p for p in HW.iterdir() if "__" in p.name)
    parsed = [
        parse_dump(p.read_text(encoding="utf-8", errors="replace")).inventory for p in sources
    ]
    out = []
    for i in range(count):
        base = parsed[i % len(parsed)]
        dmi = dataclasses.replace(base.dmi, system_serial=f"SN{i:06d}")
        out.append(dataclasses.replace(base, dmi=dmi, problems=list(base.problems)))
    return out


def profile_set(total: int, unanchored_every: int = 5) -> ProfileSet:
    shipped = list(load_profiles(ROOT / "hwprofiles"))
    entries = default_table().entries
    head = "version: 1\ndescription: synthetic\nsources: [bench]\n"
    extra = []
    for i in range(total - len(shipped)):
        name = f"synthetic-{i:02d}"
        if i % unanchored_every == unanchored_every - 1:
            rules = (
                f"[{{cpu_model: '(?i)(xeon|epyc|ryzen).*{i}'}}, {{memory_min_gib: {i}}}]"
                if i % 2
                else f"[{{dmi: {{system_product: {{regex: '^PowerEdge R{i}'}}}}}}]"
            )
        else:
            entry = entries[i % len(entries)]
            other = entries[(i * 7 + 3) % len(entries)]
            rules = (
                f"[{{pci: {{ids: ['{entry.vendor}:{entry.device}', "
                f"'{other.vendor}:{other.device}'], min: 1}}}}, "
                + ("{dmi: {board_vendor: ASRock}}]" if i % 2 else "{memory_min_gib: 16}]")
            )
        profile, problems = parse_profile(f"name: {name}\n{head}match: {{all: {rules}}}\n", name)
        assert profile is not None, problems
        extra.append(profile)
    return ProfileSet(shipped + extra)


def timed(invs: list[Inventory], profiles: ProfileSet, explain_all: bool) -> float:
    table, db = default_table(), pciids.default()
    start = time.perf_counter()
    for inv in invs:
        fingerprint(inv, profiles, explain_all=explain_all, table=table, db=db)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inventories", type=int, default=10_000)
    parser.add_argument("--profiles", type=int, default=50)
    parser.add_argument("--unanchored-every", type=int, default=5, metavar="N")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    invs = inventories(args.inventories)
    profiles = profile_set(args.profiles, args.unanchored_every)
    timed(invs[:200], profiles, False)  # warm: pci.ids parsed, name cache filled
    ours, naive = [], []
    for _ in range(args.repeat):
        ours.append(timed(invs, profiles, False))
        naive.append(timed(invs, profiles, True))
    ours_s, naive_s = statistics.median(ours), statistics.median(naive)
    result = {
        "inventories": len(invs),
        "profiles": len(profiles),
        "indexed_s": round(ours_s, 3),
        "indexed_per_s": round(len(invs) / ours_s),
        "naive_all_profiles_s": round(naive_s, 3),
        "naive_per_s": round(len(invs) / naive_s),
        "speedup": round(naive_s / ours_s, 2),
        "under_1s": ours_s < 1.0,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{len(invs)} inventories x {len(profiles)} profiles: "
            f"{ours_s:.3f} s ({len(invs) / ours_s:,.0f} inventories/s) with the PCI-id index; "
            f"naive (every profile, every rule): {naive_s:.3f} s "
            f"({len(invs) / naive_s:,.0f}/s); index speedup {naive_s / ours_s:.2f}x; "
            f"under 1 s: {'yes' if ours_s < 1.0 else 'NO'}"
        )
    return 0 if ours_s < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())

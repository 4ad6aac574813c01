"""``/proc/cpuinfo``: the agent report's reader, plus a check that no processor is missing."""

from __future__ import annotations

from collections import Counter

from provisioner.discovery import report
from provisioner.discovery.dumps.clean import to_int
from provisioner.discovery.model import Cpu, Inventory


def parse(lines: list[str], notes: list[str]) -> Inventory:
    problems = list(notes)
    parsed = report.parse_cpuinfo(lines)
    if parsed is None:
        return Inventory(problems=[*problems, "no processor entries"], partial=True)
    cpu = Cpu(
        vendor=parsed.vendor,
        model_name=parsed.model_name,
        sockets=parsed.sockets,
        cores=parsed.cores,
        threads=parsed.threads,
        flags=parsed.flags,
    )
    # Each block says how many logical CPUs its package has ("siblings"): fewer blocks
    # than that for a package means the dump was cut.
    seen: Counter[str] = Counter()
    siblings: dict[str, int] = {}
    block: dict[str, str] = {}
    for line in [*lines, ""]:
        key, sep, value = line.partition(":")
        if sep:
            block[key.strip()] = value.strip()
            continue
        if not line.strip() and "processor" in block:
            package = block.get("physical id", "0")
            seen[package] += 1
            count = to_int(block.get("siblings"))
            if count:
                siblings[package] = count
            block = {}
    partial = False
    for package, count in siblings.items():
        if seen[package] < count:
            partial = True
            problems.append(f"package {package}: {seen[package]} of {count} logical CPUs listed")
    return Inventory(cpu=cpu, partial=partial, problems=problems)

"""``provisioner profile new NAME --from DUMP``: a profile YAML that matches a dump, to
edit (pure: an inventory in, YAML text out). It names the dump's accelerators by their
PCI ids (with the revision where the accelerator table tells revisions apart), else its
DMI system, and cites where each id comes from."""

from __future__ import annotations

import json

from provisioner.discovery import accelerators as acc
from provisioner.discovery import pciids
from provisioner.discovery.model import Inventory


def scaffold(
    name: str,
    dump_name: str,
    fmt: str,
    inventory: Inventory,
    table: acc.Table | None = None,
    db: pciids.PciIds | None = None,
) -> str:
    """A profile YAML matching this dump's accelerators (else its DMI system), to edit."""
    table = table or acc.default_table()
    db = db if db is not None else pciids.default()
    found = acc.accelerators(inventory, table, db)
    ids: list[str] = []
    sources: list[str] = []
    for a in found:
        revisions = {
            e.revision
            for e in table.entries
            if (e.vendor, e.device) == (a.vendor, a.device) and e.revision
        }
        seen = {
            d.revision
            for d in inventory.pci
            if (d.vendor, d.device) == (a.vendor, a.device) and d.revision in revisions
        }
        ids.extend(f"{a.vendor}:{a.device} rev {r}" for r in sorted(seen))
        if not seen:
            ids.append(f"{a.vendor}:{a.device}")
        entry = table.lookup(a.vendor, a.device)
        cited = entry.source if entry is not None else f"pci.ids {a.vendor} {a.device}"
        how = "" if a.ids_from_dump else " (the dump printed only the name; check the ids)"
        sources.append(f"{cited}{how}")
    lines = [
        f"# Scaffolded by `provisioner profile new {name} --from {dump_name}` ({fmt}).",
        "# Edit the description, engine and smoke floors; cite every id; then run",
        f"# `provisioner profile validate` and `provisioner profile match {dump_name} --explain`.",
        f"name: {name}",
        "version: 1",
        "description: "
        + json.dumps(f"TODO what this machine is, why this engine ({_names(found)})"),
        "sources:",
    ]
    dmi = inventory.dmi
    if ids:
        lines += [f"  - {json.dumps(s)}" for s in sources]
        lines += [
            "match:",
            "  all:",
            "    - pci:",
            f"        ids: {json.dumps(ids)}",
            "        min: 1",
        ]
    elif dmi.system_vendor and dmi.system_product:
        lines += [
            f"  - {json.dumps(f'DMI of {dump_name}')}",
            "match:",
            "  all:",
            "    - dmi:",
            f"        system_vendor: {json.dumps(dmi.system_vendor.strip())}",
            f"        system_product: {json.dumps(dmi.system_product.strip())}",
        ]
    else:
        raise ValueError("no accelerator and no DMI system in this dump: nothing to match on")
    lines += ["drivers: []", "engine: none", "kernel_args: []", ""]
    return "\n".join(lines)


def _names(found: list[acc.Accelerator]) -> str:
    if not found:
        return "no accelerator"
    return ", ".join(f"{a.count} x {a.name}" for a in found)

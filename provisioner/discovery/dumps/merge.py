"""Several tools' views of one machine, merged into one inventory. Pure (pci.ids passed in).

A mixed paste often shows one GPU twice: ``lspci`` lists it at ``3b:00.0`` and
``nvidia-smi`` at ``00000000:3B:00.0``; ``sycl-ls`` names it with no address at all. The
merged inventory counts each device once:

- devices with a bus address are one device per address (``0000:3b:00.0``, ``3b:00.0``
  and ``00000000:3B:00.0`` are the same), their fields filled from every view;
- devices without one (``nvidia-smi -L``, ``sycl-ls``, ``clinfo``) add only what the
  other views do not already show: per identity (the ids, or every id pci.ids gives the
  name, or the name itself), the most any one view counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import fields, replace

from provisioner.discovery import pciids
from provisioner.discovery.model import Cpu, Dmi, Inventory, PciDevice


def short_address(address: str) -> str:
    """'0000:01:00.0' / '00000000:01:00.0' / '01:00.0' -> '01:00.0'; a path keeps its last hop."""
    lower = address.lower().rsplit("/", 1)[-1] if "/" in address else address.lower()
    domain, sep, rest = lower.partition(":")
    if sep and rest.count(":") == 1 and not domain.strip("0"):
        return rest
    return lower


def _fill(base: object, other: object) -> object:
    """``base`` with each of its None (or empty) fields taken from ``other`` (dataclasses)."""
    changes = {
        f.name: getattr(other, f.name)
        for f in fields(base)  # type: ignore[arg-type]
        if getattr(base, f.name) in (None, (), "") and getattr(other, f.name) not in (None, ())
    }
    return replace(base, **changes) if changes else base  # type: ignore[type-var]


def identity(dev: PciDevice, db: pciids.PciIds) -> frozenset[tuple[str, str]]:
    """What says two views show the same kind of device: the ids, else every id pci.ids
    gives the name, else the normalised name (as ``("name", ...)``)."""
    if dev.vendor and dev.device:
        return frozenset({(dev.vendor, dev.device)})
    name = dev.device_name or ""
    if not name:
        return frozenset()
    vendors = [dev.vendor] if dev.vendor else None
    found = db.ids_for_name(name, vendors)
    if found:
        return frozenset(found)
    return frozenset({("name", pciids.normalise(pciids.bracketed(name) or name))})


def _same(a: frozenset[tuple[str, str]], b: frozenset[tuple[str, str]]) -> bool:
    return bool(a & b)


def merge_pci(views: Sequence[Sequence[PciDevice]], db: pciids.PciIds) -> tuple[PciDevice, ...]:
    """Each device once (see the module's docstring), in the order first seen."""
    by_address: dict[str, int] = {}
    merged: list[PciDevice] = []
    for view in views:
        for dev in view:
            if not dev.address:
                continue
            key = short_address(dev.address)
            if key in by_address:
                i = by_address[key]
                filled = _fill(merged[i], dev)
                assert isinstance(filled, PciDevice)
                merged[i] = filled
            else:
                by_address[key] = len(merged)
                merged.append(dev)
    known = [identity(d, db) for d in merged]
    for view in views:
        loose = [d for d in view if not d.address]
        groups: list[tuple[frozenset[tuple[str, str]], list[PciDevice]]] = []
        for dev in loose:
            ident = identity(dev, db)
            for group_ident, members in groups:
                if _same(group_ident, ident) or (not ident and not group_ident):
                    members.append(dev)
                    break
            else:
                groups.append((ident, [dev]))
        for ident, members in groups:
            shown = sum(1 for k in known if ident and _same(k, ident))
            for dev in members[shown:]:
                merged.append(dev)
                known.append(ident)
    return tuple(merged)


def _first(values: Iterable[object]) -> object:
    return next((v for v in values if v is not None), None)


def merge(parts: Sequence[Inventory], db: pciids.PciIds) -> Inventory:
    """One inventory from several views of the same machine (``parts`` in text order)."""
    if len(parts) == 1:
        return parts[0]
    cpu: Cpu | None = None
    for part in parts:
        if part.cpu is None:
            continue
        if cpu is None or (cpu.model_name is None and part.cpu.model_name is not None):
            cpu = part.cpu if cpu is None else replace(part.cpu)
        else:
            filled = _fill(cpu, part.cpu)
            assert isinstance(filled, Cpu)
            cpu = filled
    dmi = Dmi()
    for part in parts:
        filled_dmi = _fill(dmi, part.dmi)
        assert isinstance(filled_dmi, Dmi)
        dmi = filled_dmi
    nics = {n.mac or n.name or str(i): n for i, n in enumerate(x for p in parts for x in p.nics)}
    disks = {d.name or str(i): d for i, d in enumerate(x for p in parts for x in p.disks)}
    memory = _first(p.memory_bytes for p in parts)
    return Inventory(
        pci=merge_pci([p.pci for p in parts], db),
        cpu=cpu,
        memory_bytes=memory if isinstance(memory, int) else None,
        dmi=dmi,
        nics=tuple(nics.values()),
        disks=tuple(disks.values()),
        firmware=next((p.firmware for p in parts if p.firmware), None),
        kernel=next((p.kernel for p in parts if p.kernel), None),
        hostname=next((p.hostname for p in parts if p.hostname), None),
        ssh_host_keys=next((p.ssh_host_keys for p in parts if p.ssh_host_keys), ()),
        partial=any(p.partial for p in parts),
        problems=[problem for p in parts for problem in p.problems],
    )

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provisioner.discovery.dumps import parse_dump
from provisioner.discovery.schema import (
    InventorySchemaError,
    check,
    from_json,
    inventory_schema,
    to_json,
)
from tests.shared_fixtures import hw_params

ROOT = Path(__file__).resolve().parents[2]


def test_the_documented_schema_is_the_one_in_force() -> None:
    documented = json.loads((ROOT / "docs" / "inventory.schema.json").read_text())
    assert documented == inventory_schema(), "run: provisioner inventory schema > docs/..."


def dumps() -> list[object]:
    agent = sorted((ROOT / "tests" / "fixtures" / "agent").glob("*.txt"))
    return [*agent, *hw_params(".txt", ".xml", ".json")]


@pytest.mark.parametrize("path", dumps(), ids=lambda p: p.name[:50])
def test_every_parsed_dump_fits_the_schema_and_round_trips(path: Path) -> None:
    inventory = parse_dump(path.read_text(errors="replace")).inventory
    assert from_json(json.loads(json.dumps(to_json(inventory)))) == inventory


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({}, "schema"),
        ({"schema": "provisioner.inventory/2"}, "schema"),
        ({"schema": "provisioner.inventory/1", "pci": [{"vendor": "10DE"}]}, "pci/0/vendor"),
        ({"schema": "provisioner.inventory/1", "firmware": "coreboot"}, "firmware"),
        ({"schema": "provisioner.inventory/1", "nics": [{"mac": "zz"}]}, "nics/0/mac"),
        ({"schema": "provisioner.inventory/1", "gpu": 1}, "gpu"),
        ([], "(top)"),
        # what the security issue demonstrated: a NIC name that adds a unit directive
        ({"schema": "provisioner.inventory/1",
          "nics": [{"name": "eth0\nExecStartPre=/bin/touch /tmp/pwned"}]},
         "nics/0/name: 'eth0\\nExecStartPre=/bin/touch /tmp/pwned' is not an interface name"),
        ({"schema": "provisioner.inventory/1", "nics": [{"name": "eth0;id"}]}, "nics/0/name"),
        ({"schema": "provisioner.inventory/1", "nics": [{"name": "e" * 16}]}, "nics/0/name"),
        ({"schema": "provisioner.inventory/1", "hostname": "n0;touch /tmp/h"},
         "hostname: 'n0;touch /tmp/h' is not a hostname"),
        ({"schema": "provisioner.inventory/1", "hostname": "$(id)"}, "hostname"),
        # `$` alone would let a final newline through (jsonschema uses Python's re)
        ({"schema": "provisioner.inventory/1", "nics": [{"mac": "52:54:00:00:00:01\n"}]},
         "nics/0/mac"),
        ({"schema": "provisioner.inventory/1", "nics": [{"name": "eth0\n"}]}, "nics/0/name"),
    ],
)  # fmt: skip
def test_what_does_not_fit_is_named(data: object, where: str) -> None:
    with pytest.raises(InventorySchemaError) as info:
        from_json(data)
    assert where in str(info.value)


@pytest.mark.parametrize("name", ["eth0;touch /tmp/x", "$(id)", "eth0%n"])
def test_an_agent_report_is_held_to_the_schema_too(name: str) -> None:
    text = (ROOT / "tests" / "fixtures" / "agent" / "qemu-q35-uefi.txt").read_text()
    inventory = parse_dump(text.replace("==> net eth0 <==", f"==> net {name} <==")).inventory
    assert [n.name for n in inventory.nics] == [name]
    with pytest.raises(InventorySchemaError, match=r"nics/0/name: .* is not an interface name"):
        check(inventory)
    fine = parse_dump(text).inventory
    assert check(fine) is fine

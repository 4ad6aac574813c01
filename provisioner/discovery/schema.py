"""The inventory's JSON form and its versioned JSON Schema (``provisioner.inventory/1``).

The schema is derived from the dataclasses in :mod:`provisioner.discovery.model`, so the
two cannot drift; ``docs/inventory.schema.json`` is a copy a test keeps equal. JSON
inventories POSTed to the API are checked against it (jsonschema) and refused with the
path and the reason (422) when they do not fit.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Mapping
from typing import Any

from provisioner.discovery.model import (
    SCHEMA,
    Cpu,
    Disk,
    Dmi,
    Inventory,
    Nic,
    PciDevice,
    SshHostKey,
)
from provisioner.errors import ProtocolError
from provisioner.names import HOSTNAME_MAX, INTERFACE, REPORTED_HOSTNAME, RULES, json_pattern

HEX4 = json_pattern("[0-9a-f]{4}")
PATTERNS = {
    "PciDevice.vendor": HEX4,
    "PciDevice.device": HEX4,
    "PciDevice.subsystem_vendor": HEX4,
    "PciDevice.subsystem_device": HEX4,
    "PciDevice.pci_class": HEX4,
    "PciDevice.prog_if": json_pattern("[0-9a-f]{2}"),
    "Nic.name": json_pattern(INTERFACE),
    "Nic.mac": json_pattern("[0-9a-f]{2}(:[0-9a-f]{2}){5}"),
    "Inventory.hostname": json_pattern(REPORTED_HOSTNAME),
    "SshHostKey.fingerprint": json_pattern("SHA256:[A-Za-z0-9+/]{43}"),
    "SshHostKey.public_key": json_pattern("[A-Za-z0-9+/]+={0,2}"),
}
MAX_LENGTHS = {"Inventory.hostname": HOSTNAME_MAX}
# What a pattern asks for, in words, for the error that refuses a value.
RULE_OF = {
    PATTERNS["Nic.name"]: f"an interface name: {RULES['interface']}",
    PATTERNS["Inventory.hostname"]: "a hostname (RFC 1123: letters, digits and '-' in labels "
    "of 1-63, no '-' at either end, joined by '.') or (none)",
    PATTERNS["Nic.mac"]: "a MAC address: six lower-case hex pairs joined by ':'",
    HEX4: "4 lower-case hex digits",
}
ENUMS: dict[str, list[str]] = {"Inventory.firmware": ["bios", "uefi"]}
NESTED: dict[str, type[Any]] = {
    "pci": PciDevice,
    "cpu": Cpu,
    "dmi": Dmi,
    "nics": Nic,
    "ssh_host_keys": SshHostKey,
    "disks": Disk,
}


class InventorySchemaError(ProtocolError):
    """A JSON inventory that does not fit the schema: where and why."""


def _type_schema(name: str, hint: Any) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        one = _type_schema(name, inner[0])
        kind = one.get("type")
        if isinstance(kind, str):
            one["type"] = [kind, "null"]
            if "enum" in one:
                one["enum"] = [*one["enum"], None]
            return one
        return {"anyOf": [one, {"type": "null"}]}
    if origin in (tuple, list):
        item = args[0]
        return {"type": "array", "items": _type_schema(name, item)}
    if dataclasses.is_dataclass(hint):
        return object_schema(hint)
    base = {str: "string", int: "integer", bool: "boolean"}[hint]
    schema: dict[str, Any] = {"type": base}
    if name in PATTERNS:
        schema["pattern"] = PATTERNS[name]
    if name in MAX_LENGTHS:
        schema["maxLength"] = MAX_LENGTHS[name]
    if name in ENUMS:
        schema["enum"] = [v for v in ENUMS[name] if v is not None]
    return schema


def object_schema(cls: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    props = {
        f.name: _type_schema(f"{cls.__name__}.{f.name}", hints[f.name])
        for f in dataclasses.fields(cls)
    }
    return {"type": "object", "properties": props, "additionalProperties": False}


def inventory_schema() -> dict[str, Any]:
    schema = object_schema(Inventory)
    schema["properties"]["schema"] = {"const": SCHEMA}
    schema["required"] = ["schema"]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://provisioner.invalid/schemas/{SCHEMA}",
        "title": "provisioner hardware inventory",
        **schema,
    }


@functools.cache
def _validator() -> Any:
    # jsonschema (and the referencing library under it) takes ~90 ms to import: loaded on
    # the first inventory checked, so that commands that never read one start fast.
    import jsonschema

    return jsonschema.Draft202012Validator(inventory_schema())


def to_json(inventory: Inventory) -> dict[str, Any]:
    data = dataclasses.asdict(inventory)
    data["schema"] = SCHEMA
    return data


def from_json(data: object) -> Inventory:
    """An Inventory from its JSON form; InventorySchemaError names the path and reason."""
    from jsonschema.exceptions import best_match

    error = best_match(_validator().iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top)"
        rule = RULE_OF.get(error.validator_value) if error.validator == "pattern" else None
        reason = f"{error.instance!r} is not {rule}" if rule else error.message
        raise InventorySchemaError(f"{where}: {reason}")
    assert isinstance(data, Mapping)
    inventory: Inventory = _build(Inventory, {k: v for k, v in data.items() if k != "schema"})
    return inventory


def check(inventory: Inventory) -> Inventory:
    """``inventory`` (parsed from an agent's text report, say) held to the schema, as a
    JSON one is: returned as it is, or InventorySchemaError with the path and reason."""
    from_json(json.loads(json.dumps(to_json(inventory))))  # tuples become JSON arrays
    return inventory


def _build(cls: Any, data: Mapping[str, Any]) -> Any:
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.name in NESTED and value is not None:
            nested = NESTED[f.name]
            if isinstance(value, list):
                value = tuple(_build(nested, v) for v in value)
            else:
                value = _build(nested, value)
        elif isinstance(value, list) and f.name != "problems":
            value = tuple(value)
        values[f.name] = value
    return cls(**values)


def inventory_of(document: str) -> Inventory | None:
    """The inventory a stored agent document holds (``{"inventory": ...}`` in this
    schema), or None if it does not fit."""
    try:
        return from_json(json.loads(document).get("inventory"))
    except (ValueError, AttributeError, InventorySchemaError):
        return None

"""The patterns of every name a node or a user gives us, said once (pure).

A name ends up in places where a stray character changes what runs: a hostname in a
shell command, a NIC name in a unit's ``Environment=``, a cluster or served-model name in
a unit's file name and log path. So each kind of name has one pattern here, checked where
it enters (the inventory schema, ``cluster create``, ``--serve``, the model store, the
config's hostname pattern) and again, as a last line, where it is rendered (the filters
in :mod:`provisioner.postinstall.recipes` and :mod:`provisioner.boot.ipxe`).

- interface (a NIC, from the inventory): ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}``; Linux
  allows more (IFNAMSIZ: 15 bytes, no '/', ':' or whitespace), this is the conservative
  subset (and no '-' first: it would read as an option);
- hostname (a node's, in the registry; the config's hostname pattern): RFC 1123,
  lower-case labels of letters, digits and '-' (1-63, no '-' at either end) joined by
  '.', 253 characters at most;
- reported hostname (what the agent saw, informational): the same in any case, or the
  kernel's ``(none)``;
- cluster: ``[a-z0-9][a-z0-9-]{0,30}``;
- model (the store's) and served model (``--serve NAME=...``):
  ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``;
- unit (systemd, in plans): letters, digits, '_', '.', '-' and a unit type suffix;
- kernel argument (a profile's ``kernel_args``, the config's): one word of
  ``[A-Za-z0-9_.,:=/+@-]``, not starting with a sign;
- cluster option (``--option KEY=VALUE``): ``[a-z][a-z0-9_]{0,31}`` = up to 64 of
  ``[A-Za-z0-9._%+:,-]``, starting with a letter, a digit or '-' and a digit (``-1``).

Patterns are matched whole (``re.fullmatch``: ``$`` alone would let a final newline
through). :func:`json_pattern` writes one for a JSON Schema (ECMA 262 and Python's ``re``
read it alike). Every ``check_*`` returns the value or raises :class:`UnsafeValue` naming
the kind, the value and the rule.
"""

from __future__ import annotations

import re

from provisioner.errors import ProvisionerError

INTERFACE = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
HOSTNAME = rf"{_LABEL}(?:\.{_LABEL})*"
HOSTNAME_MAX = 253
_ANY_CASE_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
REPORTED_HOSTNAME = rf"\(none\)|{_ANY_CASE_LABEL}(?:\.{_ANY_CASE_LABEL})*"
CLUSTER = r"[a-z0-9][a-z0-9-]{0,30}"
MODEL = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
SERVED = MODEL  # a served name defaults to its model's name
UNIT = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,240}\.(?:service|socket|timer|target|path)"
KERNEL_ARG = r"[A-Za-z0-9_][A-Za-z0-9_.,:=/+@-]*"
OPTION_KEY = r"[a-z][a-z0-9_]{0,31}"
OPTION_VALUE = r"(?:(?:-?[0-9]|[A-Za-z0-9])[A-Za-z0-9._%+:,-]{0,62})?"

RULES = {
    "interface": "1-15 letters, digits, '_', '.' and '-', not starting with '.' or '-'",
    "hostname": "RFC 1123: lower-case letters, digits and '-' in labels of 1-63 (no '-' "
    f"at either end) joined by '.', {HOSTNAME_MAX} characters at most",
    "cluster": "1-31 lower-case letters, digits and '-', starting with a letter or digit",
    "model": "1-128 letters, digits, '.', '_' and '-', starting with a letter or digit",
    "served": "1-128 letters, digits, '.', '_' and '-', starting with a letter or digit",
    "unit": "a systemd unit name: letters, digits, '_', '.', '-' and a unit type suffix",
    "kernel argument": "one word of letters, digits and '_', '.', ',', ':', '=', '/', '+', "
    "'@', '-' (it goes on a line of an iPXE script)",
    "option key": "1-32 lower-case letters, digits and '_', starting with a letter",
    "option value": "up to 64 letters, digits and '.', '_', '%', '+', ':', ',', '-', "
    "starting with a letter or a digit (or '-' and a digit)",
}


class UnsafeValue(ProvisionerError, ValueError):
    """A name or value from a node or a user that breaks its pattern, or that cannot be
    written safely into a unit, a shell line, a firewall rule or a boot script."""


def json_pattern(body: str) -> str:
    """``body`` anchored at both ends for a JSON Schema ``pattern`` (``(?![\\s\\S])`` is
    the end of the text in ECMA 262 and Python; ``$`` also matches before a final
    newline in Python, which jsonschema uses)."""
    return rf"^(?:{body})(?![\s\S])"


def _matches(pattern: str, value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(pattern, value) is not None


def is_hostname(value: object) -> bool:
    return _matches(HOSTNAME, value) and len(str(value)) <= HOSTNAME_MAX


def _check(kind: str, pattern: str, value: object, *, limit: int | None = None) -> str:
    if not _matches(pattern, value) or (limit is not None and len(str(value)) > limit):
        raise UnsafeValue(f"{kind} {value!r}: {RULES[kind]}")
    assert isinstance(value, str)
    return value


def check_interface(value: object) -> str:
    return _check("interface", INTERFACE, value)


def check_hostname(value: object) -> str:
    return _check("hostname", HOSTNAME, value, limit=HOSTNAME_MAX)


def check_cluster(value: object) -> str:
    return _check("cluster", CLUSTER, value)


def check_model(value: object) -> str:
    return _check("model", MODEL, value)


def check_served(value: object) -> str:
    return _check("served", SERVED, value)


def check_unit(value: object) -> str:
    return _check("unit", UNIT, value)


def check_kernel_arg(value: object) -> str:
    """One kernel argument (a profile's ``kernel_args``, the config's ``boot.kernel_args``
    split at whitespace): the boot script renders it into the ``kernel`` line."""
    return _check("kernel argument", KERNEL_ARG, value)


def check_option(key: object, value: object) -> tuple[str, str]:
    """A cluster option (``--option KEY=VALUE``): both parts checked."""
    return _check("option key", OPTION_KEY, key), _check("option value", OPTION_VALUE, value)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_line(value: object, where: str) -> str:
    """``value`` (a string or a number) as text that stays on its line: no line break,
    tab or other control character, in any language we render into. The templates'
    ``finalize`` (every ``{{ ... }}``) and each escaping filter start with it."""
    if value is None or isinstance(value, bool) or not isinstance(value, str | int | float):
        raise UnsafeValue(f"{where}: {value!r} is not a string or a number")
    text = str(value)
    if _CONTROL.search(text):
        raise UnsafeValue(f"{where}: {text!r} holds a line break or a control character")
    return text

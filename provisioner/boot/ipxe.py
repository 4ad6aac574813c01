"""Renders iPXE boot scripts from the templates in ``bootconf/``.

Every ``{{ ... }}`` in them takes the ``ipxe`` filter. iPXE reads a script a line at a
time, expands ``${...}`` settings anywhere in it (there is no escape for ``$``), splits
the line at whitespace, takes ``||`` and ``&&`` as operators and a word that starts with
``#`` as the start of a comment, and joins a line that ends in a backslash to the next.
So a value is checked rather than escaped:

- ``ipxe``: one word (an image name, a file, a URL, the MAC, the token): no whitespace,
  line break or control character, ``$`` or backslash; not ``||`` or ``&&``; no ``#``
  at its start;
- ``ipxe('words')``: words (a kernel command line, a reason to ``echo``): each word so.

A value that breaks the rule raises :class:`provisioner.names.UnsafeValue`: no script is
better than one that runs what a name smuggled in. ``finalize`` refuses a line break in
any value, filtered or not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jinja2

from provisioner.boot.policy import BootSpec
from provisioner.data import BOOTCONF
from provisioner.names import UnsafeValue, check_line
from provisioner.states import NodeState

DEFAULT_BOOTCONF = BOOTCONF
RETRY_SECONDS = 15
IPXE_KINDS = ("word", "words")


def bootconf_dir() -> Path:
    return Path(os.environ.get("PROVISIONER_BOOTCONF", DEFAULT_BOOTCONF))


def _word(word: str, text: str) -> None:
    if "$" in word or "\\" in word:
        raise UnsafeValue(f"ipxe: {text!r}: '$' (settings) and '\\' are not written into a script")
    if word in ("||", "&&") or word.startswith("#"):
        raise UnsafeValue(f"ipxe: {text!r}: {word!r} would be an operator or a comment")


def ipxe(value: Any, kind: str = "word") -> str:
    """``value`` checked for its place in an iPXE script (see the docstring), as it is."""
    text = check_line(value, "ipxe")
    if kind == "word":
        if not text or text.split() != [text]:
            raise UnsafeValue(f"ipxe: {text!r} is not one word")
        _word(text, text)
    elif kind == "words":
        for word in text.split():
            _word(word, text)
    else:
        raise UnsafeValue(f"ipxe: no kind {kind!r} (one of {', '.join(IPXE_KINDS)})")
    return text


def finalize(value: Any) -> Any:
    """Every ``{{ ... }}``'s value stays on its line, whatever its filter."""
    if isinstance(value, str):
        check_line(value, "boot script value")
    return value


class ScriptRenderer:
    def __init__(self, directory: Path | None = None):
        self.directory = directory or bootconf_dir()
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(self.directory),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            finalize=finalize,
        )
        self.env.filters["ipxe"] = ipxe

    def render(
        self,
        spec: BootSpec,
        *,
        mac: str,
        state: NodeState,
        base: str,
        token: str,
        console_port: int | None = None,
    ) -> str:
        """The script for ``spec``; UnsafeValue when a value cannot be written into it.
        ``console_port``: the kernel is told to send its messages there (netconsole)."""
        template = self.env.get_template(spec.template)
        return template.render(
            spec=spec,
            mac=mac,
            state=state.value,
            base=base,
            token=token,
            retry_seconds=RETRY_SECONDS,
            console_port=str(console_port) if console_port else "",
        )

"""The `provisioner` command, one module per command group: they parse argv, call the
domain modules and print; nothing outside this package imports it.

:mod:`.app` builds the parser and runs :func:`main`; :mod:`.common` is what the command
modules share (the config, the registry, tables, JSON, progress lines).
"""

from __future__ import annotations

from provisioner.cli.app import build_parser, main

__all__ = ["build_parser", "main"]

"""Renders iPXE boot scripts from the templates in ``bootconf/``."""

from __future__ import annotations

import os
from pathlib import Path

import jinja2

from provisioner.boot.policy import BootSpec
from provisioner.states import NodeState

DEFAULT_BOOTCONF = Path(__file__).resolve().parents[2] / "bootconf"
RETRY_SECONDS = 15


def bootconf_dir() -> Path:
    return Path(os.environ.get("PROVISIONER_BOOTCONF", DEFAULT_BOOTCONF))


class ScriptRenderer:
    def __init__(self, directory: Path | None = None):
        self.directory = directory or bootconf_dir()
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(self.directory),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
        )

    def render(self, spec: BootSpec, *, mac: str, state: NodeState, base: str, token: str) -> str:
        template = self.env.get_template(spec.template)
        return template.render(
            spec=spec,
            mac=mac,
            state=state.value,
            base=base,
            token=token,
            retry_seconds=RETRY_SECONDS,
        )

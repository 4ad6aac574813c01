"""``docs/cli.md``, written from the parser: every command, its arguments and options,
the global options and the exit statuses (``scripts/gen-cli-doc`` writes it;
tests/unit/test_cli_reference.py fails when the file and the parser disagree).

The usage lines are built here, not by argparse's formatter, so that the text depends
neither on the terminal's width nor on the Python version's formatting.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from provisioner.cli.common import EXIT_STATUSES, is_leaf, walk

GLOBAL_DESTS = frozenset({"help", "config", "log_level"})
HEADER = """\
# The `provisioner` command

<!-- Written by scripts/gen-cli-doc from the parser (provisioner/cli/); do not edit:
     change the parser's help texts and run scripts/gen-cli-doc. -->

Every command is `provisioner COMMAND [SUBCOMMAND] [ARGUMENTS]`; `provisioner COMMAND
--help` says the same as this page. Run it as root (a minimal Debian has no `sudo`; with
it, `sudo provisioner ...` works the same).

Shell completion: `provisioner completion bash > /etc/bash_completion.d/provisioner`, or
`provisioner completion zsh > "${fpath[1]}/_provisioner"`.
"""


def _metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        return str(action.metavar)
    if action.choices is not None:
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    return action.dest.upper() if action.option_strings else action.dest


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def _usage_word(action: argparse.Action) -> str:
    """One argument as a usage line shows it."""
    name = _metavar(action)
    if not action.option_strings:
        if action.nargs == "+":
            return f"{name} [{name} ...]"
        if action.nargs == "*":
            return f"[{name} ...]"
        if action.nargs == "?":
            return f"[{name}]"
        if action.nargs == argparse.REMAINDER:
            return "..."
        return name
    flag = (
        action.option_strings[-1]
        if action.option_strings[-1].startswith("--")
        else (action.option_strings[0])
    )
    word = f"{flag} {name}" if _takes_value(action) else flag
    return word if action.required else f"[{word}]"


def _own_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if a.dest not in GLOBAL_DESTS and not isinstance(a, argparse._SubParsersAction)
        and a.help != argparse.SUPPRESS
    ]  # fmt: skip


def _help_of(parent: argparse.ArgumentParser, name: str) -> str:
    for action in parent._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if choice.dest == name:
                    return str(choice.help or "")
    return ""


def _option_line(action: argparse.Action) -> str:
    if action.option_strings:
        value = f" {_metavar(action)}" if _takes_value(action) else ""
        shown = ", ".join(f"`{o}{value}`" for o in action.option_strings)
    else:
        shown = f"`{_usage_word(action)}`"
    text = (action.help or "").replace("\n", " ")
    if action.required and action.option_strings:
        text = f"(required) {text}".rstrip()
    return f"- {shown}" + (f": {text}" if text else "")


def _commands(top: argparse.ArgumentParser) -> Iterator[str]:
    parents = {path: parser for path, parser in walk(top)}
    for path, parser in walk(top):
        if not path:
            continue
        words = " ".join(path)
        heading = "##" if len(path) == 1 or not is_leaf(parser) else "###"
        yield f"\n{heading} `provisioner {words}`\n"
        help_text = _help_of(parents[path[:-1]], path[-1])
        if help_text:
            yield f"\n{help_text}\n"
        if not is_leaf(parser):
            continue
        actions = _own_actions(parser)
        usage = " ".join(["provisioner", *path, *(_usage_word(a) for a in actions)])
        yield f"\n    {usage}\n"
        if actions:
            yield "\n" + "\n".join(_option_line(a) for a in actions) + "\n"


def render(top: argparse.ArgumentParser) -> str:
    """docs/cli.md for the parser ``top`` (``provisioner.cli.build_parser()``)."""
    globals_ = [a for a in top._actions if a.dest in GLOBAL_DESTS - {"help"}]
    parts = [HEADER, "\n## Global options\n\n"]
    parts.append(
        "Taken before or after the command (`provisioner --config F node list` and "
        "`provisioner node list --config F` are the same; the last one given wins):\n\n"
    )
    parts.append("\n".join(_option_line(a) for a in globals_) + "\n")
    parts.append("\n## Exit statuses\n\nThe same for every command:\n\n")
    parts.append("| status | meaning |\n|---:|---|\n")
    parts.append("".join(f"| {int(code)} | {text} |\n" for code, text in EXIT_STATUSES.items()))
    parts.append(
        "\nA command that acts on several nodes at once (`power`, `enroll`, `node enroll`) "
        "reports each node and exits 1 when any failed. `--json` prints the result as JSON "
        "on stdout (progress and failures go to stderr).\n"
    )
    parts.append("\n# Commands\n")
    parts.extend(_commands(top))
    return "".join(parts)

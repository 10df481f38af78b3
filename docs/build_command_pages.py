"""Write docs/commands/<command>.md, one page per `lesion` command, from the commands' own --help.

The pages are generated so that they never drift from the code: `tests/test_docs.py` fails when a
page differs from what this script writes. Run it after changing a command's options or help:

    python docs/build_command_pages.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

HERE = Path(__file__).resolve().parent
OUT = HERE / "commands"


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name in sorted(group.commands):
        command = group.commands[name]
        path = prefix + (name,)
        if isinstance(command, click.Group):
            yield from _commands(command, path)
        else:
            yield path, command


def help_text(path: tuple[str, ...]) -> str:
    from deeplesion_cli.cli import main

    # the group's context settings (-h as well as --help), as a real invocation inherits them
    settings = dict(main.context_settings, max_content_width=100, terminal_width=100)
    ctx = click.Context(main, info_name="lesion", **settings)
    command: click.Command = main
    for name in path:
        ctx = click.Context(command.commands[name], info_name=name, parent=ctx, **settings)
        command = command.commands[name]
    return command.get_help(ctx)


def pages() -> dict[Path, str]:
    from deeplesion_cli.cli import main

    out: dict[Path, str] = {}
    index = ["# Commands", "", "One page per command, generated from its `--help` "
             "(`python docs/build_command_pages.py`).", ""]
    for path, command in _commands(main):
        title = "lesion " + " ".join(path)
        name = "-".join(path) + ".md"
        summary = (command.get_short_help_str(limit=100) or "").rstrip(".")
        index.append(f"* [`{title}`]({name}): {summary}")
        out[OUT / name] = (f"# `{title}`\n\n{summary}.\n\n```text\n{help_text(path).rstrip()}\n"
                           "```\n\nSee also the [user guide](../user-guide.md).\n")
    out[OUT / "README.md"] = "\n".join(index) + "\n"
    return out


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for path, text in pages().items():
        path.write_text(text)
        print(f"wrote {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

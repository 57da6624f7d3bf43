"""How ``--help`` reads: descriptions wrapped to the terminal, examples kept as written."""

from __future__ import annotations

import argparse
import copy
import textwrap
from collections.abc import Callable, Iterable
from typing import Any


class Verbatim(str):
    """Text that ``--help`` prints line for line (examples), where prose would be re-wrapped."""


class OldFormAction(argparse.Action):
    """An option that still parses an older spelling of its value(s).

    ``--help`` shows only the documented form: ``documented_nargs`` replaces ``nargs`` when
    the option is displayed, so the old form stays accepted without being advertised.
    """

    documented_nargs: int | str | None = None


class HelpFormatter(argparse.HelpFormatter):
    """Wraps description paragraphs to the terminal width (``COLUMNS``); keeps Verbatim text.

    Lines break at spaces only, so a flag such as --no-remove-mean-direction is never
    split at one of its hyphens.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if isinstance(text, Verbatim):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return "\n\n".join(
            "\n".join(indent + line for line in self._split_lines(paragraph, width))
            for paragraph in text.split("\n\n")
        )

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def add_usage(
        self,
        usage: str | None,
        actions: Iterable[argparse.Action],
        groups: Iterable[Any],
        prefix: str | None = None,
    ) -> None:
        super().add_usage(usage, [_documented(action) for action in actions], groups, prefix)

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(_documented(action))


def _documented(action: argparse.Action) -> argparse.Action:
    if not isinstance(action, OldFormAction):
        return action
    shown = copy.copy(action)
    shown.nargs = action.documented_nargs
    return shown


def printable(text: str) -> str:
    """``text`` as plain-text output shows it: as is when every character prints, else
    quoted with Python's escapes (``'a\\nb'``), so that an id holding a newline or a tab
    cannot break a listing's layout. JSON output keeps the exact text."""
    return text if text.isprintable() else repr(text)


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines and tabs too) made one space."""
    return " ".join(text.split())


def add_command(
    commands: argparse._SubParsersAction,
    name: str,
    *,
    summary: str,
    description: str,
    examples: str | None = None,
) -> argparse.ArgumentParser:
    """A subcommand parser whose help wraps ``description`` and prints ``examples`` as is."""
    return commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=Verbatim(textwrap.dedent(examples)) if examples else None,
        formatter_class=HelpFormatter,
    )


def add_actions(
    parser: argparse.ArgumentParser,
    actions: dict[str, str],
    *,
    common: Callable[[argparse.ArgumentParser, Any], None],
    quiet_help: str,
) -> dict[str, argparse.ArgumentParser]:
    """Sub-actions of a command (``stores list|remove``), the first being the default:
    ``actions`` maps each name to its help. ``common(parser, default)`` adds the options
    every action takes, on the command itself (``default`` their default) and again on
    each action, with ``argparse.SUPPRESS``: an option given before the action is then not
    reset by the action's parser. Each action also takes -q/--quiet."""
    common(parser, None)
    names = list(actions)
    subparsers = parser.add_subparsers(
        dest="action", metavar="ACTION", help=f"{names[0]} (the default) or {', '.join(names[1:])}"
    )
    parsers = {}
    for name, help_text in actions.items():
        subparser = subparsers.add_parser(name, help=help_text, formatter_class=HelpFormatter)
        common(subparser, argparse.SUPPRESS)
        subparser.add_argument(
            "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=quiet_help
        )
        parsers[name] = subparser
    return parsers

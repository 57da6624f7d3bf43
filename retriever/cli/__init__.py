"""The ``retriever`` command: a thin shell over the Python API.

One module per subcommand (``add_parser`` declares it, ``run`` carries it out); the option
groups several of them share live in :mod:`retriever.cli.options`. Heavy imports (torch,
transformers, faiss) happen inside ``run``, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence

from retriever.cli import add, bench, delete, encode, index, lens, search
from retriever.cli import eval as evaluate  # the module; `eval` is a builtin
from retriever.cli.formatting import HelpFormatter
from retriever.cli.options import DEFAULT_MODEL
from retriever.errors import RetrieverError

__all__ = ["DEFAULT_MODEL", "main"]

_COMMANDS = (index, encode, add, delete, search, lens, evaluate, bench)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retriever",
        description="Dense retrieval with LLM embeddings and an EmbedFilter-reduced FAISS index.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="only warnings and errors: no info lines, no progress bars (also accepted after "
        "the command)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        command.add_parser(commands)
    for subparser in commands.choices.values():
        # Also after the subcommand (`retriever search ... -q`); SUPPRESS keeps a -q given
        # before it.
        subparser.add_argument(
            "-q",
            "--quiet",
            action="store_true",
            default=argparse.SUPPRESS,
            help="only warnings and errors: no info lines, no progress bars",
        )
    return parser


def _configure_logging(quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="[retriever] %(message)s")
    # Also set here: basicConfig does nothing when logging is already configured (a host
    # program, a test run), and progress bars follow this logger's level.
    logging.getLogger("retriever").setLevel(level)
    # Third-party chatter (faiss's loader, transformers' load reports, BEIR's metric
    # printout in the bench cross-check) would drown the few lines that matter.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("beir").setLevel(logging.WARNING)
    for chatty in ("milvus_lite", "pymilvus", "ray", "bm25s"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    # Milvus Lite's in-process server lacks AllocTimestamp; pymilvus asks, is refused and
    # carries on, but the server side logs the refusal as an error with a traceback.
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    # Copying a collection (add, delete on a server) asks for a timestamp that Milvus Lite's
    # server does not give; pymilvus warns and uses its own, which is right for a copy.
    logging.getLogger("pymilvus.client.iterator.query_iterator").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``retriever ARGV``; returns the exit status (2 for a user mistake)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # The command line as typed: results files record how they were made.
    typed = argparse.Namespace(command_line="retriever " + shlex.join(argv))
    args = _build_parser().parse_args(argv, namespace=typed)
    _configure_logging(args.quiet)
    try:
        return args.run(args)
    except RetrieverError as exc:
        print(f"retriever: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("retriever: interrupted; nothing was written", file=sys.stderr)
        return 130

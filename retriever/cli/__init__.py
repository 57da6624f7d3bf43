"""The ``retriever`` command: a thin shell over the Python API.

One module per subcommand (``add_parser`` declares it, ``run`` carries it out); the option
groups several of them share live in :mod:`retriever.cli.options`. Heavy imports (torch,
transformers, faiss) happen inside ``run``, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import shlex
import sys
from collections.abc import Sequence

from retriever.cli import (
    add,
    bench,
    check,
    datasets,
    delete,
    encode,
    export,
    index,
    info,
    lens,
    scaling,
    search,
    serve,
    stores,
)
from retriever.cli import eval as evaluate  # the module; `eval` is a builtin
from retriever.cli.formatting import HelpFormatter
from retriever.core.errors import RetrieverError
from retriever.core.spec import DEFAULT_MODEL

__all__ = ["DEFAULT_MODEL", "main"]

_COMMANDS = (
    index,
    encode,
    stores,
    datasets,
    add,
    delete,
    search,
    lens,
    serve,
    evaluate,
    bench,
    scaling,
    export,
    info,
    check,
)


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


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """The parsed command line (a spelling an earlier release recorded is read as the
    command it became); argparse exits with status 2 on a malformed one."""
    # The command line as typed: results files record how they were made.
    typed = argparse.Namespace(command_line="retriever " + shlex.join(argv))
    return _build_parser().parse_args(scaling.old_spelling(list(argv)), namespace=typed)


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
    args = parse_arguments(argv)
    _configure_logging(args.quiet)
    try:
        return args.run(args)
    except RetrieverError as exc:
        print(f"retriever: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("retriever: interrupted; nothing was written", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`retriever search ... | head`): nothing to say,
        # and stdout goes to /dev/null so that the interpreter's last flush is quiet too.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        # The system refused a read or write (a full disk, a read-only or foreign folder):
        # the user's to fix, so one line; writers publish atomically, so nothing is lost.
        logging.getLogger("retriever").debug("the system refused", exc_info=True)
        print(f"retriever: error: {_describe_os_error(exc, args)}", file=sys.stderr)
        return 2


# What to do about the errors the system gives most (anything else: its own words).
_OS_ADVICE = {
    errno.ENOSPC: "free some space and rerun; an index being replaced is intact",
    errno.EDQUOT: "free some space or raise the quota, and rerun; an index being replaced is "
    "intact",
    errno.EFBIG: "the file system's file size limit was reached: use another folder",
    errno.EACCES: "choose a folder you can write to, or fix its permissions",
    errno.EPERM: "choose a folder you can write to, or fix its permissions",
    errno.EROFS: "choose a folder on a writable file system",
    errno.EIO: "the device failed: check it, then rerun",
}


def _describe_os_error(exc: OSError, args: argparse.Namespace) -> str:
    """One line for an error the system gave: what, where, and what to do."""
    text = str(exc).strip().splitlines()
    what = exc.strerror.lower() if exc.strerror else (text[0] if text else type(exc).__name__)
    # An error on a file descriptor names no file: the command's own target is the place.
    where = exc.filename or next(
        (getattr(args, name) for name in ("out", "index") if getattr(args, name, None)), None
    )
    line = f"{what}: {where}" if where else what
    advice = _OS_ADVICE.get(exc.errno)
    return f"{line} ({advice})" if advice else line

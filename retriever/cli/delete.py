"""``retriever delete``: remove documents from an index by id."""

from __future__ import annotations

import argparse
from pathlib import Path

from retriever.cli.formatting import add_command
from retriever.core.errors import RetrieverError


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands,
        "delete",
        summary="remove documents from an index by id",
        description="Remove documents from every part of an index in a new generation, "
        "swapped in atomically; no model is loaded. An id the index does not hold is an "
        "error and nothing is deleted.",
    )
    parser.add_argument("index", help="index path built by `retriever index`")
    parser.add_argument("ids", nargs="*", metavar="ID", help="document ids to remove")
    parser.add_argument("--ids-file", metavar="FILE", help="a file of document ids, one per line")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from retriever.index.build import delete_documents

    ids = list(args.ids)
    if args.ids_file:
        try:
            text = Path(args.ids_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RetrieverError(f"cannot read --ids-file {args.ids_file}: {exc}") from None
        ids += [line.strip() for line in text.splitlines() if line.strip()]
    removed = delete_documents(args.index, ids)
    print(f"{args.index}: {removed} deleted")
    return 0

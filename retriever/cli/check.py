"""``retriever check``: read every byte of an index and say what is wrong, one line each."""

from __future__ import annotations

import argparse
import json

from retriever.cli.formatting import add_command


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands,
        "check",
        summary="verify every file and part of an index; the first step when something looks wrong",
        description="Compare every file of the index's current generation with the size "
        "and SHA-256 its manifest recorded, then check the parts against each other: each "
        "docstore record decodes and its id leads back to its key, and the dense index, "
        "the rescore vectors, the sparse and the BM25 index hold exactly the docstore's "
        "keys. Prints one line per problem and exits 1 if there is any (0: all good). No "
        "model loads. Indexes written before manifests recorded their files (version 2) "
        "get the part checks only.",
        examples="""\
            examples:
              retriever check indexes/scifact
              retriever check indexes/scifact --json
            """,
    )
    parser.add_argument("index", help="index path built by `retriever index`")
    parser.add_argument(
        "--json", action="store_true", help='print {"index", "problems": [...]} as JSON'
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from retriever.index.integrity import check_index
    from retriever.index.manifest import current_manifest

    manifest = current_manifest(args.index)
    problems = check_index(manifest.folder, manifest)
    if args.json:
        print(json.dumps({"index": str(manifest.folder), "problems": problems}, indent=2))
    else:
        for problem in problems:
            print(problem)
        if not problems:
            checked = len(manifest.files)
            print(f"{args.index}: {checked} files and every part check out")
    return 1 if problems else 0

"""``retriever stores``: list the embedding stores, or remove some."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from retriever.cli.formatting import add_actions, add_command, printable


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands,
        "stores",
        summary="list the embedding stores (size, documents, encoding, indexes), or remove some",
        description="List every embedding store under the stores folder (the cache's "
        "embeddings/ folder, or --root): its folder, size on disk, documents, whether every "
        "shard is written, what it encodes (model, dtype, prompt, max length, documents or "
        "queries) and the indexes built from it that still exist.\n\n"
        "`remove` deletes stores by folder path or by a unique prefix of the folder name. "
        "An index built from a store keeps working without it (an index never reads its "
        "store after the build); only a new build from the same corpus encodes again.",
        examples="""\
            examples:
              retriever stores
              retriever stores list --root /data/stores --json
              retriever stores remove 3f2a9c
            """,
    )
    actions = add_actions(
        parser,
        {
            "list": "list the stores (the default)",
            "remove": "remove stores by folder or name prefix",
        },
        common=_add_common_options,
        quiet_help="only warnings and errors",
    )
    actions["remove"].add_argument(
        "stores", nargs="+", metavar="STORE", help="a store folder, or a unique prefix of its name"
    )
    parser.set_defaults(run=run)


def _add_common_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--root",
        metavar="DIR",
        default=default,
        help="the folder holding the stores (default: the cache's embeddings/ folder)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default if default is argparse.SUPPRESS else False,
        help="print JSON instead of text",
    )


def run(args: argparse.Namespace) -> int:
    root = Path(args.root) if args.root else None
    if args.action == "remove":
        return _remove(args.stores, root, as_json=args.json)
    return _list(root, as_json=args.json)


def _list(root: Path | None, *, as_json: bool) -> int:
    from retriever.core.sizes import size_text
    from retriever.index.stores import list_stores
    from retriever.store.embeddings import stores_root

    summaries = list_stores(root)
    if as_json:
        print(json.dumps([summary.to_dict() for summary in summaries], indent=2))
        return 0
    if not summaries:
        print(f"no embedding stores under {root or stores_root()}")
    for summary in summaries:
        data = summary.to_dict()
        shards = data["shards"]
        state = "complete" if data["complete"] else "partial"
        print(
            f"{printable(data['folder'])}  {size_text(data['bytes'])}  {data['documents']:,} "
            f"{data['kind']}  {state} ({shards['written']}/{shards['expected']} shards)"
        )
        print(
            f"  {printable(data['model']['name'])}  {data['dtype']}  prompt {data['prompt']}  "
            f"max length {data['max_length']}  {'+'.join(data['poolings'])} pooling  "
            f"{data['precision']}  chunks of {data['chunk_size']:,}"
        )
        for index in data["indexes"]:
            print(f"  index {printable(index)}")
    return 0


def _remove(names: list[str], root: Path | None, *, as_json: bool) -> int:
    from retriever.index.stores import remove_store
    from retriever.store.embeddings import find_store

    # Every name is resolved before anything is removed: one bad name removes nothing.
    folders = list(dict.fromkeys(find_store(name, root) for name in names))
    removed = [remove_store(folder) for folder in folders]
    if as_json:
        rows = [
            {
                "folder": str(store.folder),
                "indexes": [str(index) for index in store.indexes],
                "kept": store.kept,
            }
            for store in removed
        ]
        print(json.dumps(rows, indent=2))
        return 0
    for store in removed:
        notes = [f"removed {store.folder}"]
        if store.indexes:
            notes.append("built from it, still working: " + ", ".join(map(str, store.indexes)))
        if store.kept:
            shown = ", ".join(store.kept[:5]) + (" ..." if len(store.kept) > 5 else "")
            notes.append(f"kept {len(store.kept)} file(s) it did not write: {shown}")
        print(printable("; ".join(notes)))
    return 0

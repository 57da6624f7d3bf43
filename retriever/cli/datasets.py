"""``retriever datasets``: list the BEIR datasets known by name, or download some ahead."""

from __future__ import annotations

import argparse
import json
from typing import Any

from retriever.cli.formatting import add_actions, add_command, printable


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands,
        "datasets",
        summary="list the BEIR datasets known by name (beir:NAME), or download some ahead",
        description="List the BEIR datasets that every command takes by name, as "
        "beir:NAME wherever a dataset folder goes (index, encode, add, eval, bench, lens "
        "--texts): the zip's size, the documents, and whether the dataset is in the cache "
        "(with its folder and qrels splits, which eval and bench take with --split).\n\n"
        "A name's first use downloads BEIR's zip (resuming a broken download), checks it "
        "against the MD5 BEIR publishes and unzips it into the cache's datasets/ folder "
        "(RETRIEVER_CACHE moves the cache); later uses read that folder, with no network. "
        "RETRIEVER_BEIR_URL points the download at a mirror: the base URL that holds "
        "NAME.zip. Without a network, place the unzipped NAME/ folder at the path the "
        "listing shows.\n\n"
        "`get` downloads datasets now, so that a later build starts at once.",
        examples="""\
            examples:
              retriever datasets
              retriever datasets list --json
              retriever datasets get scifact nfcorpus
              retriever index beir:scifact --out indexes/scifact
              retriever eval indexes/scifact beir:scifact --split train
            """,
    )
    actions = add_actions(
        parser,
        {"list": "list the datasets (the default)", "get": "download and unzip datasets now"},
        common=_add_json_option,
        quiet_help="only warnings and errors (no progress bars)",
    )
    actions["get"].add_argument(
        "names", nargs="+", metavar="NAME", help="a dataset name, as NAME or beir:NAME"
    )
    parser.set_defaults(run=run)


def _add_json_option(parser: argparse.ArgumentParser, default: Any) -> None:
    json_default = default if default is argparse.SUPPRESS else False
    parser.add_argument("--json", action="store_true", default=json_default, help="print JSON")


def run(args: argparse.Namespace) -> int:
    if args.action == "get":
        return _get(args.names, as_json=args.json)
    return _list(as_json=args.json)


def _list(*, as_json: bool) -> int:
    from retriever.data.catalog import BEIR_DATASETS, describe

    rows = [describe(entry) for entry in BEIR_DATASETS.values()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print("  ".join(_columns(row)))
        if row["forums"]:
            print(f"  forums ({row['name']}/FORUM): {', '.join(row['forums'])}")
    return 0


def _columns(row: dict[str, Any]) -> list[str]:
    from retriever.core.sizes import size_text

    size = f"{size_text(row['zip_bytes'])} zip" if row["zip_bytes"] else "size unknown"
    documents = f"{row['documents']:,} documents" if row["documents"] else ""
    folder = printable(row["folder"])
    if row["cached"]:
        splits = f" (splits: {', '.join(row['splits'])})" if row["splits"] else ""
        state = f"cached at {folder}{splits}"
    elif row["partial_bytes"]:
        state = f"partly downloaded ({size_text(row['partial_bytes'])}), unzips to {folder}"
    else:
        state = f"not cached, unzips to {folder}"
    return [f"{row['name']:<22}", f"{size:>13}", f"{documents:>20}", state]


def _get(names: list[str], *, as_json: bool) -> int:
    from retriever.data.catalog import PREFIX, entry_named, fetch

    # Every name is checked before anything is downloaded: one typo downloads nothing.
    entries = [entry_named(name) for name in names]
    folders = [(entry, fetch(entry)) for entry in dict.fromkeys(entries)]
    if as_json:
        rows = [{"name": PREFIX + e.name, "folder": str(f)} for e, f in folders]
        print(json.dumps(rows, indent=2))
        return 0
    for entry, folder in folders:
        print(f"{PREFIX}{entry.name}  {printable(str(folder))}")
    return 0

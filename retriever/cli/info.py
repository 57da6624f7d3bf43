"""``retriever info``: what an index is and holds, read from its manifest alone."""

from __future__ import annotations

import argparse
import json
from typing import Any

from retriever.cli.formatting import add_command
from retriever.core.sizes import size_text


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands,
        "info",
        summary="show an index's spec, generation, counts, bytes, model and filter",
        description="Print everything needed to reproduce an index and what it holds: the "
        "spec it was built by (model, encoder, filter, dense, sparse and BM25 settings), "
        "its current generation, the documents and bytes of each part, and the model and "
        "filter the build found. Reads the manifest only: no model loads.",
        examples="""\
            examples:
              retriever info indexes/scifact
              retriever info indexes/scifact --json | jq .spec.dense
            """,
    )
    parser.add_argument("index", help="index path built by `retriever index`")
    parser.add_argument("--json", action="store_true", help="print it as one JSON object")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from retriever.api.index import Index

    described = Index(args.index).describe()
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    for line in _lines(described):
        print(line)
    return 0


def _lines(described: dict[str, Any]) -> list[str]:
    model = described["model"]
    lines = [
        f"index       {described['path']}",
        f"generation  {described['generation']} (built {described['created']})",
        f"documents   {described['documents']:,}",
        f"model       {model['name']} (sha256 {model['weights_sha256'][:12]}..., "
        f"{model['dtype']}, hidden size {model['hidden_size']})",
        f"filter      {described['filter'].get('name')}: {described['filter']['model_dim']} -> "
        f"{described['filter']['dim']} dimensions",
        "parts",
    ]
    for part, found in described["parts"].items():
        size = found["bytes"]
        shown = size_text(size) if size is not None else "on a server"
        lines.append(f"  {part:<8}  {found['count']:,} documents, {shown}")
    lines.append("spec")
    lines += [f"  {line}" for line in json.dumps(described["spec"], indent=2).splitlines()[1:-1]]
    return lines

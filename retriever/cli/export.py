"""``retriever export``: the index's encoder as a sentence-transformers model folder."""

from __future__ import annotations

import argparse

from retriever.cli.formatting import add_command, printable


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands,
        "export",
        summary="write the index's encoder as a sentence-transformers model folder",
        description="Write OUT, a folder that sentence-transformers loads and that encodes "
        "exactly as the dense index INDEX does: the model's files (weights, config, "
        "tokenizer), the filter, and the settings the index was built with (prompt, "
        "pooling, max length, query and document instructions, dtype). encode_query and "
        "encode_document give the index's unit vectors, so MTEB or any sentence-transformers "
        "code can evaluate the encoder outside retriever.\n\n"
        "The folder holds no code: its one module, retriever.st_module.RetrieverEncoder, is "
        "imported from the installed retriever package. sentence-transformers 6 imports a "
        "module from outside its own package only with trust_remote_code=True, which here "
        "lets it import that package and runs nothing from the folder. OUT is written beside "
        "itself and renamed into place when complete; an existing OUT is refused, unless "
        "--overwrite and it is an earlier export.",
        examples="""\
            examples:
              retriever export indexes/scifact exports/scifact
              retriever export indexes/scifact exports/scifact --overwrite

            then, in Python:
              from sentence_transformers import SentenceTransformer
              model = SentenceTransformer("exports/scifact", trust_remote_code=True)
              model.encode_query(["vitamin D and bone density"])   # the index's query vectors
              model.encode_document(["Vitamin D deficiency ..."])  # its document vectors

              import mteb                                           # mteb>=2.0
              mteb.evaluate(model, mteb.get_tasks(tasks=["SciFact"]))
            """,
    )
    parser.add_argument(
        "index", metavar="INDEX", help="index path built by `retriever index` (with a dense part)"
    )
    parser.add_argument(
        "out", metavar="OUT", help="the folder to write (must not exist, see --overwrite)"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="copy this model instead of the one named in the manifest (its weights must be "
        "the same, e.g. a local copy)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUT when it holds an earlier export"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from retriever.export.st_folder import export_index

    out = export_index(args.index, args.out, model=args.model, overwrite=args.overwrite)
    print(f"exported {printable(str(args.index))} to {printable(str(out))}")
    return 0

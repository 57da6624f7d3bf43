"""Which space should the token lens show a person: raw ``W h`` or filtered ``W F^T F h``?

For the first N SciFact documents (default model and settings), the alignment metrics of
each space, raw and through the paper's EmbedFilter and the default one (mean direction
removed), including ``displayed_hit_at_10``: the content Hit@10 of exactly the words the
lens displays (whole words, no stopwords or punctuation). Also the displayed top 10 of the
demo query in each space. The lens's default display space is the one with the higher
displayed Hit@10 for the default filter.

    python benchmarks/lens_display.py --docs 500 --out benchmarks/results/lens-display
"""

from __future__ import annotations

import argparse

from inputs import SCIFACT, dataset_path
from report import encoder_machine_record, markdown_table, write_report

from retriever import Encoder, EncoderConfig
from retriever.core.spec import DEFAULT_MODEL, FilterSpec
from retriever.data.datasets import load_texts
from retriever.encode.embedfilter import EmbedFilter
from retriever.encode.lens import TokenLens, alignment_metrics

DEMO_QUERY = "Vitamin D deficiency is associated with bone disease."


FILTERS = {
    "embedfilter": FilterSpec(tau=2, remove_mean_direction=False),
    "embedfilter-nomean (default)": FilterSpec(tau=2),
}


def measure(encoder: Encoder, texts: list[str]) -> list[dict]:
    """Per filter and space: the alignment metrics of ``texts`` and the demo query's
    displayed top 10."""
    embeddings = encoder.encode_documents(texts)
    token_ids = encoder.text_token_ids(texts)
    query = encoder.encode_queries([DEMO_QUERY])
    unembedding = encoder.unembedding()
    rows = []
    for name, spec in FILTERS.items():
        embed_filter = EmbedFilter.from_unembedding(unembedding, spec)
        lens = TokenLens(unembedding, embed_filter, encoder.tokenizer)
        for space in ("raw", "filtered"):
            metrics = alignment_metrics(lens, embeddings, token_ids, space)
            shown = lens.top_tokens(query, space, 10, words_only=True)[0]
            rows.append(
                {"filter": name, "space": space, **metrics, "demo_query": [t.token for t in shown]}
            )
    return rows


def report_body(args: argparse.Namespace, documents: int, rows: list[dict]) -> list[str]:
    table = markdown_table(
        [
            "filter",
            "space",
            "Hit@10",
            "content Hit@10",
            "junk@10",
            "displayed Hit@10",
            "demo query, displayed top 10",
        ],
        (
            [
                r["filter"],
                r["space"],
                f"{r['hit_at_10']:.3f}",
                f"{r['content_hit_at_10']:.3f}",
                f"{r['junk_at_10']:.3f}",
                f"{r['displayed_hit_at_10']:.3f}",
                " ".join(repr(t) for t in r["demo_query"]),
            ]
            for r in rows
        ),
    )
    model = "SmolLM2-135M" if args.model == DEFAULT_MODEL else args.model
    return [
        f"First {documents} SciFact documents, {model} ({args.dtype}), PromptEOL, mean "
        "pooling, tau 2. *content Hit@10*: a non-stopword of the document among the top 10 "
        "tokens; *displayed Hit@10*: the same over the 10 words the lens displays (whole "
        "words, no stopwords or punctuation). Demo query: "
        f'"{DEMO_QUERY}".',
        "",
        *table,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", type=dataset_path, default=SCIFACT, help="BEIR folder or JSONL"
    )
    parser.add_argument("--docs", type=int, default=500, help="first N documents")
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="model alias or folder (default: %(default)s)"
    )
    parser.add_argument("--dtype", default="bfloat16", help="weights dtype (default: %(default)s)")
    parser.add_argument("--out", default="benchmarks/results/lens-display", help="results folder")
    args = parser.parse_args()

    encoder = Encoder.load(args.model, EncoderConfig(), dtype=args.dtype)
    texts = load_texts(args.dataset, limit=args.docs)
    rows = measure(encoder, texts)
    write_report(
        args.out,
        "lens_display",
        {"rows": rows},
        report_body(args, len(texts), rows),
        title="What the token lens shows, space by space",
        machine=encoder_machine_record(encoder),
    )


if __name__ == "__main__":
    main()

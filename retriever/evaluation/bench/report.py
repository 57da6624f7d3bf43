"""The benchmark's report: results.md (tables per setting) and plot.png."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retriever.evaluation.machine import machine_line


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _ratio_interval(row: dict[str, Any], name: str) -> str:
    """A ratio with its 95% interval, ``3.51 [3.02, 4.06]``, where the row has one."""
    if row.get(name) is None:
        return ""
    if row.get(f"{name}_low") is None:
        return _ratio(row[name])
    return f"{row[name]:.2f} [{row[f'{name}_low']:.2f}, {row[f'{name}_high']:.2f}]"


def _machine(meta: dict[str, Any]) -> str:
    """The machine line; results from before the record existed hold a few words."""
    machine = meta.get("machine")
    if isinstance(machine, dict):
        return machine_line(machine)
    return f"Machine not recorded (the run noted: {machine})."


def markdown_report(
    rows: list[dict[str, Any]], meta: dict[str, Any], alignment: Sequence[dict[str, Any]] = ()
) -> str:
    lines = [
        f"# Benchmark: {meta['model']} on {Path(meta['dataset']).name}",
        "",
        _machine(meta),
        "",
        "Produced by:",
        "",
        "```",
        meta["command"] or "(called from Python)",
        "```",
        "",
        f"{meta['documents']} documents, {meta['queries']} judged queries ({meta['split']}), "
        f"max length {meta['max_length']}, dtype {rows[0]['dtype'] if rows else '?'}. "
        "Ratios are to the unfiltered row of the same setting and index type, measured in "
        "the same run; an nDCG ratio's brackets hold its 95% paired bootstrap interval over "
        "the queries (1,000 resamples, seed 0). Every row is an index folder built by the build "
        "pipeline and searched through `Searcher`. Latency: one query at a time, search only "
        "(the filter, the index search and any fusion; median of up to 100 queries after "
        "warm-up); query encoding is listed per setting.",
        "",
        "Dense searches were timed on: "
        + "; ".join(
            f"{place} ({n} rows)"
            for place, n in Counter(
                r.get("ran_on", "CPU") for r in rows if r["family"] == "dense"
            ).items()
        )
        + ".",
        "",
    ]
    settings = dict.fromkeys((r["prompt"], r["pooling"]) for r in rows)
    for prompt, pooling in settings:
        everything = [r for r in rows if r["prompt"] == prompt and r["pooling"] == pooling]
        group = [r for r in everything if r["family"] == "dense"]
        head = next(r for r in group if r["method"] == "unfiltered")
        ours, beir = head["search_ms_per_query_batched"], head["beir_search_ms_per_query"]
        encode = head["encode_ms_p50"]
        verdict = "match" if head["beir_matches"] else "MISMATCH"
        lines += [
            f"## {prompt}, {pooling} pooling",
            "",
            f"Query encoding (LLM forward + filter): median {encode:.1f} ms, "
            f"p95 {head['encode_ms_p95']:.1f} ms per query.",
            "Peer cross-check: BEIR `DenseRetrievalExactSearch` on the unfiltered embeddings "
            f"gives nDCG@10 {head['beir_ndcg_at_10']:.4f} vs ours {head['ndcg_at_10']:.4f} "
            f"({verdict} to 0.001). Search per query, batched (median of 3 runs over all "
            f"queries): ours {ours:.3f} ms vs BEIR "
            f"{beir:.3f} ms (ratio {ours / beir:.3f}); end to end with query encoding, "
            f"ratio {(encode + ours) / (encode + beir):.3f}.",
            "",
            "| method | band | tau | dim | index | nDCG@10 | nDCG@100 | R@100 | nDCG ratio | "
            "search p50 ms | p95 ms | latency ratio | index bytes | storage ratio |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in group:
            lines.append(
                f"| {r['method']} | {r['band'] or ''} | {r['tau']:g} | {r['dim']} | "
                f"{r['index_type']} | {r['ndcg_at_10']:.4f} | {r['ndcg_at_100']:.4f} | "
                f"{r['recall_at_100']:.4f} | {_ratio_interval(r, 'ndcg_ratio')} | "
                f"{r['search_ms_p50']:.3f} | {r['search_ms_p95']:.3f} | "
                f"{_ratio(r['latency_ratio'])} | {r['index_bytes']:,} | "
                f"{_ratio(r['storage_ratio'])} |"
            )
        lines.append("")
        others = [r for r in everything if r["family"] != "dense"]
        if others:
            lines += _other_rows_table(others)
        entries = [a for a in alignment if (a["prompt"], a["pooling"]) == (prompt, pooling)]
        if entries:
            lines += _alignment_table(entries)
    return "\n".join(lines)


def _other_rows_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "Key-token sparse indexes (each built from the named dense variant's vectors), BM25, "
        "and hybrids of the dense index with each. *Share of dense* is nDCG@10 over the "
        "dense Flat index of the same vectors; *nDCG ratio* is over the unfiltered dense "
        "row. Search latency includes building the sparse query (its top-M aligned tokens) "
        "but not the LLM forward, which BM25 alone does without; hybrids add both searches "
        "and the fusion.",
        "",
        "| method | from | band | tau | fusion | nDCG@10 | R@100 | share of dense | "
        "nDCG ratio | search p50 ms | batch QPS | index bytes | storage ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tau = "" if r["tau"] is None else f"{r['tau']:g}"
        lines.append(
            f"| {r['method']} | {r['source'] or ''} | {r['band'] or ''} | {tau} | "
            f"{r['fusion'] or ''} | {r['ndcg_at_10']:.4f} | {r['recall_at_100']:.4f} | "
            f"{_ratio_interval(r, 'share_of_dense_ndcg')} | {_ratio_interval(r, 'ndcg_ratio')} | "
            f"{r['search_ms_p50']:.3f} | {r['batch_qps']:.0f} | {r['index_bytes']:,} | "
            f"{_ratio(r['storage_ratio'])} |"
        )
    return [*lines, ""]


def _alignment_table(entries: list[dict[str, Any]]) -> list[str]:
    texts = entries[0]["texts"]
    lines = [
        f"Token alignment of the {texts} documents (`retriever.encode.lens.alignment_metrics`): "
        "Hit@10 = share of documents with one of their own words among their 10 best-aligned "
        "words; content Hit@10 = the same without stopwords and punctuation; local rate = "
        "mean share of a document's words among its |T| best-aligned; "
        "global rate = share of the collection's distinct words aligned in a document "
        "holding them; junk@10 = share of stopwords and punctuation in the top 10; "
        "displayed Hit@10 = content Hit@10 of exactly the 10 words the lens displays (whole "
        "words, no stopwords or punctuation). *raw* reads W h, the filters read W F^T F h.",
        "",
        "| embedding | band | tau | Hit@10 | content Hit@10 | local rate | global rate | "
        "junk@10 | displayed Hit@10 | top 10 tokens of the first document | "
        "displayed top 10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        example = " ".join(f"`{token.strip() or repr(token)}`" for token in e["examples"][0])
        shown = " ".join(f"`{token.strip()}`" for token in e["displayed_examples"][0])
        lines.append(
            f"| {e['space']} | {e['band'] or ''} | {e['tau']:g} | {e['hit_at_10']:.3f} | "
            f"{e['content_hit_at_10']:.3f} | {e['local_alignment_rate']:.3f} | "
            f"{e['global_alignment_rate']:.3f} | "
            f"{e['junk_at_10']:.3f} | {e['displayed_hit_at_10']:.3f} | {example} | {shown} |"
        )
    return [*lines, ""]


def _series_label(row: dict[str, Any]) -> str:
    return f"{row['method']} {row['band']}" if row["method"] == "embedfilter" else row["method"]


def plot_results(rows: list[dict[str, Any]], path: Path) -> None:
    """nDCG@10 and search latency against dimension, one line per method, per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys((r["prompt"], r["pooling"]) for r in rows))
    fig, axes = plt.subplots(len(settings), 2, figsize=(12, 4.2 * len(settings)), squeeze=False)
    for (prompt, pooling), (ax_ndcg, ax_latency) in zip(settings, axes, strict=True):
        group = [r for r in rows if r["prompt"] == prompt and r["pooling"] == pooling]
        flat = [r for r in group if r["index_type"] == group[0]["index_type"]]
        unfiltered = next(r for r in flat if r["method"] == "unfiltered")
        for label in dict.fromkeys(_series_label(r) for r in flat if r["method"] != "unfiltered"):
            series = sorted((r for r in flat if _series_label(r) == label), key=lambda r: r["dim"])
            dims = [r["dim"] for r in series]
            ax_ndcg.plot(dims, [r["ndcg_at_10"] for r in series], marker="o", label=label)
            ax_latency.plot(dims, [r["search_ms_p50"] for r in series], marker="o", label=label)
        for ax, key in ((ax_ndcg, "ndcg_at_10"), (ax_latency, "search_ms_p50")):
            ax.axhline(unfiltered[key], color="black", linestyle="--", label="unfiltered")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("dimension")
        ax_ndcg.set_ylabel("nDCG@10")
        ax_latency.set_ylabel(f"search ms p50 ({group[0]['index_type']})")
        ax_ndcg.set_title(f"{prompt}, {pooling} pooling: nDCG@10")
        ax_latency.set_title(f"{prompt}, {pooling} pooling: search latency")
        ax_ndcg.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

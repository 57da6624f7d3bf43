#!/usr/bin/env bash
# The main job on the embedded defaults: build a filtered SciFact index with SmolLM2-135M
# (PromptEOL, mean pooling, EmbedFilter edge band at tau 2 with the mean direction removed,
# the default) with its key-token sparse index
# and BM25 beside it, then run example searches (dense, hybrid, explained), the token
# lens, and the Python API. Reuses the index if it is already built with all three parts.
#
# SciFact comes as beir:scifact: downloaded once from BEIR (MD5-checked) into the cache.
# SCIFACT=FOLDER uses a local copy instead (corpus.jsonl, queries.jsonl, qrels/test.tsv).
set -euo pipefail
cd "$(dirname "$0")/.."

dataset=${SCIFACT:-beir:scifact}
index=${INDEX:-indexes/scifact-smollm2}
retriever=.venv/bin/retriever

echo "== retriever index (built once: dense, key-token sparse and BM25; reused after)"
if ! grep -qs '"bm25": {' "$index/manifest.json" || ! grep -qs '"sparse": {' "$index/manifest.json" \
    || ! grep -qs '"name": "embedfilter-nomean"' "$index/manifest.json"; then
    "$retriever" index "$dataset" --out "$index" --sparse --bm25 --overwrite
else
    echo "$index (already built)"
fi

query="Vitamin D deficiency is associated with bone disease."
echo "== retriever search (command line, dense)"
"$retriever" --quiet search "$index" "$query" -k 5

echo "== retriever search --method dense+bm25 --explain (hybrid, with shared key tokens)"
"$retriever" --quiet search "$index" "$query" -k 3 --method dense+bm25 --explain

echo "== retriever lens (top aligned tokens, raw vs filtered)"
"$retriever" --quiet lens "$index" "$query" --top 10

echo "== Searcher (Python API)"
.venv/bin/python - "$index" "$dataset" <<'PY'
import logging
import sys

from retriever import Searcher
from retriever.data.datasets import load_qrels, load_queries

logging.basicConfig(level=logging.WARNING)
index, dataset = sys.argv[1], sys.argv[2]
searcher = Searcher.load(index)
queries, qrels = load_queries(dataset), load_qrels(dataset)
judged = {query_id: queries[query_id] for query_id in qrels}
run = searcher.batch_search(judged, k=10)
found = [q for q in judged if set(run[q].ids) & set(qrels[q])]
print(f"a gold document is in the top 10 for {len(found)} of {len(judged)} test queries")
missed = next(q for q in judged if q not in found)
for query_id in [*found[:2], missed]:
    hits = searcher.search(queries[query_id], k=10)
    ranks = [rank for rank, hit in enumerate(hits, 1) if hit.id in qrels[query_id]]
    print(f"\nquery {query_id}: {queries[query_id]}")
    for rank, hit in enumerate(hits[:3], 1):
        print(f"  {rank}. {hit.score:.3f} {hit.id} {hit.title[:90]}")
    print(f"  gold document rank in top 10: {ranks[0] if ranks else 'not in top 10'}")
PY

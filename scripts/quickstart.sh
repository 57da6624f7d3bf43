#!/usr/bin/env bash
# A first result in about a minute on any CPU: index the 48 short paragraphs that ship in
# examples/quickstart with the embedded model (dense index and BM25), then search them,
# each hit with the words it shares with the query. Run scripts/setup.sh once first.
set -euo pipefail
cd "$(dirname "$0")/.."

index=${INDEX:-indexes/quickstart}
retriever=${RETRIEVER:-.venv/bin/retriever}
query=${QUERY:-"How do plants make sugar from sunlight?"}

"$retriever" index examples/quickstart --out "$index" --bm25 --overwrite
echo
echo "== retriever search $index \"$query\" -k 3 --explain"
"$retriever" --quiet search "$index" "$query" -k 3 --explain
echo
echo "== the same query, dense fused with BM25"
"$retriever" --quiet search "$index" "$query" -k 3 --method dense+bm25

"""`retriever export`: a sentence-transformers folder that encodes as its index does."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from retriever import EncoderConfig, Searcher, build_index
from retriever.cli import export as export_cli
from retriever.core.errors import RetrieverError
from retriever.core.spec import IndexSpec, ModelSpec
from retriever.export.st_folder import EXPORT_CONFIG, MODULE_CLASS, export_index
from tests.conftest import TOY_DOCS, write_jsonl

pytest.importorskip("sentence_transformers")

# At max length 64 this is cut to its head and tail: truncation is compared too.
LONG = " ".join(["Dense retrieval encodes queries and documents into vectors."] * 30)
QUERIES = ["vitamin D and bone disease", "the quick brown fox", "Café 東京 ☕", LONG]
DOCS = [*TOY_DOCS, {"_id": "long", "title": "Long", "text": LONG}]
TEXTS = [f"{d['title']} {d['text']}".strip() for d in DOCS]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(
    scope="module",
    params=[("prompteol", "mean"), ("echo", "mean"), ("prompteol", "last"), ("echo", "last")],
    ids=lambda p: "-".join(p),
)
def exported(request, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """An index with a query instruction, its export, and both loaded."""
    from sentence_transformers import SentenceTransformer

    prompt, pooling = request.param
    root = tmp_path_factory.mktemp(f"st-{prompt}-{pooling}")
    config = EncoderConfig(
        prompt=prompt, pooling=pooling, max_length=64, query_instruction="Find: "
    )
    index = build_index(
        write_jsonl(root / "docs.jsonl", DOCS),
        root / "idx",
        IndexSpec(model=ModelSpec(name=str(tiny_model), dtype="float32"), encoder=config),
    )
    out = export_index(index, root / "st")
    searcher = Searcher.load(index)
    model = SentenceTransformer(str(out), device="cpu", trust_remote_code=True)
    yield request.param, index, out, searcher, model
    searcher.close()


def test_queries_match_the_searcher(exported) -> None:
    (prompt, pooling), _, _, searcher, model = exported
    got = model.encode_query(QUERIES)
    expected = searcher.embed_queries(QUERIES)
    assert got.shape == expected.shape == (len(QUERIES), searcher.filter.dim)
    cosines = _cosines(got, expected)
    # pytest -s shows how close they are.
    print(
        f"{prompt}/{pooling} queries: min cosine {cosines.min():.9f}, max |diff| "
        f"{np.abs(got - expected).max():.1e}"
    )
    assert cosines.min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_documents_match_the_searcher_and_the_stored_vectors(exported) -> None:
    (prompt, pooling), _, _, searcher, model = exported
    got = model.encode_document(TEXTS)
    expected = searcher.filter.transform(searcher.encoder.encode_documents(TEXTS))
    cosines = _cosines(got, expected)
    print(
        f"{prompt}/{pooling} documents: min cosine {cosines.min():.9f}, max |diff| "
        f"{np.abs(got - expected).max():.1e}"
    )
    assert cosines.min() >= 0.9999
    # The index's own (Flat, float32) scores are dot products with the stored vectors.
    rows = {d["_id"]: i for i, d in enumerate(DOCS)}
    query = model.encode_query(QUERIES[:1])[0]
    ranking = searcher.search(QUERIES[0], k=len(DOCS))
    ours = np.array([got[rows[hit.id]] @ query for hit in ranking])
    np.testing.assert_allclose(ours, ranking.scores, atol=1e-4)
    # Plain encode() is the document side, as the index encodes documents.
    np.testing.assert_allclose(model.encode(TEXTS), got, atol=1e-6)


def test_the_instruction_is_the_sentence_transformers_prompt(exported) -> None:
    (prompt, _), _, out, searcher, model = exported
    assert model.prompts["query"] == "Find: " and model.prompts["document"] == ""
    assert model.similarity_fn_name == "cosine"
    assert model.get_embedding_dimension() == searcher.filter.dim
    assert model.max_seq_length == 64
    # With an instruction the query side differs from the document side.
    assert _cosines(model.encode_query(QUERIES[:1]), model.encode_document(QUERIES[:1]))[0] < 1


def test_the_folder_holds_no_code_and_names_an_installed_class(exported) -> None:
    _, _, out, _, _ = exported
    assert not [p for p in out.rglob("*") if p.suffix in (".py", ".pyc")]
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"] for m in modules] == [MODULE_CLASS]
    assert MODULE_CLASS.startswith("retriever.") and MODULE_CLASS.count(".") == 2
    assert {"model", "filter", EXPORT_CONFIG, "README.md"} <= {p.name for p in out.iterdir()}


def test_refusals_are_one_line(exported, tmp_path: Path) -> None:
    _, index, _, _, _ = exported
    out = export_index(index, tmp_path / "first")
    with pytest.raises(RetrieverError, match="exists; pass --overwrite") as caught:
        export_index(index, out)
    assert "\n" not in str(caught.value)
    assert export_index(index, out, overwrite=True) == out  # an earlier export is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first"]  # nothing left beside it
    other = tmp_path / "not-an-export"
    other.mkdir()
    with pytest.raises(RetrieverError, match="is not a retriever export"):
        export_index(index, other, overwrite=True)
    assert other.is_dir()  # never deleted
    with pytest.raises(RetrieverError, match="is not a retriever index"):
        export_index(tmp_path / "nothing", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_index_without_a_dense_part_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    index = build_index(
        write_jsonl(tmp_path / "docs.jsonl", TOY_DOCS),
        tmp_path / "idx",
        IndexSpec(model=ModelSpec(name=str(tiny_model), dtype="float32"), dense=None, bm25=True),
    )
    with pytest.raises(RetrieverError, match="holds no dense index"):
        export_index(index, tmp_path / "out")


def test_the_command_writes_the_folder(exported, tmp_path: Path, capsys) -> None:
    _, index, _, _, _ = exported
    parser = argparse.ArgumentParser()
    export_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["export", str(index), str(tmp_path / "cli")])
    assert args.run(args) == 0
    assert "exported" in capsys.readouterr().out
    assert (tmp_path / "cli" / EXPORT_CONFIG).is_file()
    with pytest.raises(RetrieverError, match="exists"):
        args.run(args)

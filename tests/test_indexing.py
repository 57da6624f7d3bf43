from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retriever import (
    EmbedFilter,
    Encoder,
    EncoderConfig,
    FilterSpec,
    RetrieverError,
    Searcher,
    build_index,
)
from retriever.cli import main
from retriever.core.spec import IndexSpec, ModelSpec
from retriever.data.datasets import scan_corpus
from retriever.index.options import BuildOptions
from retriever.parts import docstore as docstore_module
from retriever.store.encoding import encode_corpus
from tests.conftest import TOY_DOCS, synthetic_docs, write_jsonl
from tests.test_cli_options import COMMANDS


@pytest.fixture(scope="module")
def tiny_index(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("index")
    corpus = write_jsonl(root / "docs.jsonl", TOY_DOCS)
    return build_index(
        corpus,
        root / "toy",
        IndexSpec(model=ModelSpec(name=str(tiny_model), dtype="float32"), filter=FilterSpec(tau=2)),
        BuildOptions(batch_size=4),
    )


def test_index_folder_is_self_describing(tiny_index: Path, tiny_model: Path) -> None:
    assert tiny_index.is_symlink()  # to its immutable generation folder
    assert sorted(p.name for p in tiny_index.iterdir()) == [
        "READERS",
        "docstore",
        "filter.json",
        "filter.npy",
        "index.faiss",
        "manifest.json",
    ]
    manifest = json.loads((tiny_index / "manifest.json").read_text())
    assert manifest["model"]["name"] == str(tiny_model)
    assert len(manifest["model"]["weights_sha256"]) == 64
    assert manifest["manifest_version"] == 3
    # The spec as written: every setting, defaults included, the store's fixed ones filled.
    spec = manifest["spec"]
    assert IndexSpec.from_dict(spec).to_dict() == spec
    assert spec["model"] == {
        "name": str(tiny_model),
        "revision": None,
        "dtype": "float32",
        "unembedding_from": None,
    }
    assert spec["encoder"]["prompt"] == "prompteol" and spec["encoder"]["pooling"] == "mean"
    assert spec["dense"] == {
        "backend": "faiss",
        "index_type": "Flat",
        "storage": None,
        "bits": None,
        "binary_centre": "documents",
        "rescore_vectors": "int8",
        "ef_construction": None,
        "milvus_uri": None,
        "collection": "retriever",
        "search": {"nprobe": None, "ef_search": None, "rescore": None},
    }
    assert spec["sparse"] is None and spec["bm25"] is False
    assert manifest["filter"]["rows"] == [8, 24] and manifest["filter"]["dim"] == 16
    assert manifest["dense"] == {
        "metric": "inner_product",
        "normalized": True,
        "dim": 16,
        "count": 6,
        "backend": {
            "backend": "faiss",
            "file": "index.faiss",
            "storage": "float32",
            "rescore": False,
        },
    }
    documents = manifest["documents"]
    assert documents["count"] == 6 and documents["next_key"] == 6
    assert documents["history"][0]["op"] == "build"
    assert documents["history"][0]["skipped_empty"] == 0
    assert len(documents["content_sha256"]) == 64
    assert manifest["versions"]["faiss-cpu"] or manifest["versions"]["faiss-gpu"]
    sizes = manifest["build"]["bytes"]
    assert sizes["dense"] == (tiny_index / "index.faiss").stat().st_size
    assert sizes["total"] >= sizes["dense"] + sizes["docstore"] + sizes["filter"]
    generations = tiny_index.parent / ".toy.generations"
    assert [p.name for p in generations.iterdir()] == [tiny_index.resolve().name]


def test_search_finds_a_document_by_its_own_text(tiny_index: Path) -> None:
    searcher = Searcher.load(tiny_index, dtype="float32")
    assert len(searcher) == 6
    for doc in TOY_DOCS:
        text = f"{doc['title']} {doc['text']}".strip()
        hits = searcher.search(text, k=3)
        assert hits[0].id == doc["_id"]
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert hits[0].title == doc["title"] and hits[0].text == doc["text"]
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert searcher.search("Café", k=100)[5].key in range(6)  # k larger than the index


def test_batch_search_is_beir_shaped_and_matches_search(tiny_index: Path) -> None:
    searcher = Searcher.load(tiny_index, dtype="float32")
    queries = {"q1": "bone disease", "q2": "a fox"}
    run = searcher.batch_search(queries, k=4).to_beir()
    assert set(run) == {"q1", "q2"} and all(len(v) == 4 for v in run.values())
    single = searcher.search("bone disease", k=4)
    assert list(run["q1"]) == [h.id for h in single]
    np.testing.assert_allclose(list(run["q1"].values()), [h.score for h in single], rtol=1e-5)
    assert set(searcher.batch_search(["x", "y"], k=1)) == {"0", "1"}


def test_empty_query_and_bad_k_are_refused(tiny_index: Path) -> None:
    searcher = Searcher.load(tiny_index, dtype="float32")
    with pytest.raises(RetrieverError, match="empty query"):
        searcher.search("   ")
    with pytest.raises(RetrieverError, match="k must be at least 1"):
        searcher.search("fox", k=0)


def test_loading_with_other_weights_is_refused(tiny_index: Path, other_tiny_model: Path) -> None:
    with pytest.raises(
        RetrieverError, match="was built with weights sha256 .* embeddings would not be"
    ):
        Searcher.load(tiny_index, model=str(other_tiny_model), dtype="float32")


def test_tau_one_index_scores_are_cosines_of_raw_embeddings(
    tiny_model: Path, toy_corpus: Path, tmp_path: Path
) -> None:
    folder = build_index(
        toy_corpus,
        tmp_path / "raw",
        IndexSpec(model=ModelSpec(name=str(tiny_model), dtype="float32"), filter=FilterSpec(tau=1)),
    )
    searcher = Searcher.load(folder, dtype="float32")
    docs = searcher.encoder.encode_documents(
        [f"{d['title']} {d['text']}".strip() for d in TOY_DOCS], show_progress=False
    )
    query = searcher.encoder.encode_queries(["bone disease"])[0]
    cosines = docs @ query / np.linalg.norm(docs, axis=1) / np.linalg.norm(query)
    hits = searcher.search("bone disease", k=6)
    expected = [TOY_DOCS[i]["_id"] for i in np.argsort(-cosines)]
    assert [h.id for h in hits] == expected
    np.testing.assert_allclose([h.score for h in hits], np.sort(cosines)[::-1], rtol=1e-4)


def test_failed_build_leaves_nothing(
    tiny_model: Path, toy_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_put(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(docstore_module.DocStoreWriter, "put", broken_put)
    with pytest.raises(OSError, match="disk full"):
        build_index(
            toy_corpus,
            tmp_path / "idx",
            IndexSpec(model=ModelSpec(name=str(tiny_model), dtype="float32")),
        )
    assert _visible(tmp_path) == ["docs.jsonl"]
    assert not (tmp_path / ".idx.generations").exists()


def test_existing_destinations(tiny_model: Path, toy_corpus: Path, tmp_path: Path) -> None:
    first = build_index(
        toy_corpus,
        tmp_path / "idx",
        IndexSpec(model=ModelSpec(name=str(tiny_model), dtype="float32")),
    )
    with pytest.raises(RetrieverError, match="already holds an index; pass --overwrite"):
        build_index(
            toy_corpus, first, IndexSpec(model=ModelSpec(name=str(tiny_model), dtype="float32"))
        )
    build_index(
        toy_corpus,
        first,
        IndexSpec(model=ModelSpec(name=str(tiny_model), dtype="float32"), filter=FilterSpec(tau=4)),
        BuildOptions(overwrite=True),
    )
    assert json.loads((first / "manifest.json").read_text())["dense"]["dim"] == 8
    assert _visible(tmp_path) == ["docs.jsonl", "idx"]
    assert len(list((tmp_path / ".idx.generations").iterdir())) == 1  # the old one is gone
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(RetrieverError, match="is not a retriever index link"):
        build_index(
            toy_corpus,
            tmp_path / "notes",
            IndexSpec(model=ModelSpec(name=str(tiny_model))),
            BuildOptions(overwrite=True),
        )
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_echo_last_token_settings_round_trip(
    tiny_model: Path, toy_corpus: Path, tmp_path: Path
) -> None:
    config = EncoderConfig(
        prompt="echo", pooling="last", max_length=64, query_instruction="Query: "
    )
    folder = build_index(
        toy_corpus,
        tmp_path / "echo",
        IndexSpec(
            model=ModelSpec(name=str(tiny_model), dtype="float32"),
            encoder=config,
            filter=FilterSpec(dim=12, band="rand", seed=5),
        ),
    )
    searcher = Searcher.load(folder, dtype="float32")
    assert searcher.encoder.config == config
    assert searcher.filter.spec == FilterSpec(dim=12, band="rand", seed=5)
    assert searcher.filter.dim == 12 and len(searcher.search("fox", k=2)) == 2


# --- the command line: every user mistake is one clear line and a non-zero exit ---


def _cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_index_and_search(
    tiny_model: Path, toy_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "cli-index"
    code, stdout, _ = _cli(
        capsys,
        "index",
        str(toy_corpus),
        "--out",
        str(out),
        "--model",
        str(tiny_model),
        "--tau",
        "4",
        "--band",
        "head",
        "--dtype",
        "float32",
        "--limit",
        "4",
    )
    assert code == 0 and stdout.strip() == str(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["filter"]["rows"] == [24, 32] and manifest["documents"]["count"] == 4

    code, stdout, _ = _cli(
        capsys,
        "search",
        str(out),
        "Foxes The quick brown fox jumps over the lazy dog.",
        "-k",
        "2",
        "--json",
        "--dtype",
        "float32",
    )
    hits = json.loads(stdout)
    assert code == 0 and len(hits) == 2 and hits[0]["id"] == "d2"
    assert set(hits[0]) == {"id", "score", "title", "text", "key", "metadata"}

    code, stdout, _ = _cli(capsys, "search", str(out), "fox", "-k", "1", "--dtype", "float32")
    assert code == 0 and stdout.startswith("  1. ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["index", "{missing}", "--out", "{tmp}/o"], "does not exist"),
        (["index", "{bad_jsonl}", "--out", "{tmp}/o"], "bad.jsonl:2: not valid JSON"),
        (["index", "{dup_jsonl}", "--out", "{tmp}/o"], "duplicate document id 'a'"),
        (
            ["index", "{docs}", "--out", "{tmp}/o", "--tau", "0.5"],
            "--tau must be a finite number >= 1",
        ),
        (["index", "{docs}", "--out", "{tmp}/o", "--tau", "inf"], "--tau must be a finite"),
        (["index", "{docs}", "--out", "{tmp}/o", "--dim", "33"], "keeps 33 of the model's 32"),
        (
            ["index", "{docs}", "--out", "{tmp}/o", "--model", "no-such-org/no-such-model-0123"],
            "unknown model 'no-such-org/no-such-model-0123'",
        ),
        (
            ["index", "{docs}", "--out", "{tmp}/o", "--index-type", "Bogus"],
            "invalid --index-type 'Bogus'",
        ),
        (
            ["index", "{docs}", "--out", "{tmp}/o", "--batch-size", "0"],
            "--batch-size must be at least 1",
        ),
        (["search", "{tmp}", "fox"], "is not a retriever index"),
        (["index", "{docs}", "--out", "{tmp}/o", "--no-dense"], "leaves nothing to search"),
        (
            ["index", "{docs}", "--out", "{tmp}/o", "--sparse", "--sparse-doc-tokens", "0"],
            "--sparse-doc-tokens must be at least 1",
        ),
    ],
)
def test_cli_user_mistakes(
    argv: list[str],
    message: str,
    tiny_model: Path,
    toy_corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    (tmp_path / "bad.jsonl").write_text('{"_id": "a", "text": "x"}\n{"_id": \n')
    write_jsonl(tmp_path / "dup.jsonl", [{"_id": "a", "text": "x"}, {"_id": "a", "text": "y"}])
    paths = {
        "missing": str(tmp_path / "missing.jsonl"),
        "bad_jsonl": str(tmp_path / "bad.jsonl"),
        "dup_jsonl": str(tmp_path / "dup.jsonl"),
        "docs": str(toy_corpus),
        "tmp": str(tmp_path),
    }
    argv = [a.format(**paths) for a in argv]
    if argv[0] == "index" and "--model" not in argv:
        argv += ["--model", str(tiny_model), "--dtype", "float32"]
    code, _, stderr = _cli(capsys, *argv)
    assert code == 2
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith("retriever: error: ") and message in last_line
    assert "Traceback" not in stderr
    assert not (tmp_path / "o").exists()


def test_cli_manifest_mismatch_and_empty_query(
    tiny_index: Path, other_tiny_model: Path, capsys: pytest.CaptureFixture
) -> None:
    code, _, stderr = _cli(
        capsys, "search", str(tiny_index), "fox", "--model", str(other_tiny_model)
    )
    assert code == 2 and "embeddings would not be comparable" in stderr
    code, _, stderr = _cli(capsys, "search", str(tiny_index), "  ")
    assert code == 2 and "empty query" in stderr


def test_every_flag_has_help() -> None:
    import argparse

    from retriever.cli import _build_parser

    parser = _build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subcommands.choices) == set(COMMANDS)
    for name, subparser in subcommands.choices.items():
        for action in subparser._actions:
            assert action.help, f"retriever {name} {action.option_strings or action.dest}"


def test_help_exits_cleanly(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["index", "--help"])
    assert exit_info.value.code == 0
    assert "--unembedding-from" in capsys.readouterr().out


def test_empty_documents_are_counted_in_the_manifest(
    tiny_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    corpus = write_jsonl(
        tmp_path / "docs.jsonl", [*TOY_DOCS[:3], {"_id": "blank", "title": "", "text": "  "}]
    )
    code, _, _ = _cli(
        capsys,
        "index",
        str(corpus),
        "--out",
        str(tmp_path / "idx"),
        "--model",
        str(tiny_model),
        "--dtype",
        "float32",
    )
    assert code == 0
    assert "skipped 1 document(s) with neither title nor text: blank" in caplog.text
    documents = json.loads((tmp_path / "idx" / "manifest.json").read_text())["documents"]
    assert documents["count"] == 3 and documents["history"][0]["skipped_empty"] == 1
    assert documents["history"][0]["skipped_empty_ids"] == ["blank"]


@pytest.fixture
def mean_store(tiny_model: Path, tmp_path: Path) -> tuple[Encoder, Path]:
    """A loaded encoder (mean pooling, max length 64) and a store it encoded, of both
    poolings."""
    encoder = Encoder.load(str(tiny_model), EncoderConfig(max_length=64), dtype="float32")
    corpus = write_jsonl(tmp_path / "docs.jsonl", synthetic_docs(40))
    store = encode_corpus(
        encoder,
        scan_corpus(corpus),
        folder=tmp_path / "store",
        chunk_size=16,
        poolings=("mean", "last"),
    )
    return encoder, store.folder


def test_a_ready_projection_and_a_loaded_encoder_build_from_a_store(
    mean_store: tuple[Encoder, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import faiss

    from retriever.store.embeddings import EmbeddingStore

    encoder, store = mean_store
    matrix = np.random.default_rng(0).standard_normal((12, encoder.hidden_size))
    projection = EmbedFilter(matrix, FilterSpec(dim=12), np.arange(12))

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded again or the LLM ran again")

    with monkeypatch.context() as patched:
        patched.setattr(Encoder, "load", never)
        patched.setattr(Encoder, "encode_poolings", never)
        out = build_index(
            None,
            tmp_path / "idx",
            IndexSpec(encoder=EncoderConfig(pooling="last")),
            BuildOptions(from_store=store),
            encoder=encoder,
            embed_filter=projection,
        )
    assert encoder.config.pooling == "mean"  # the caller's encoder keeps its settings
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["filter"] == projection.describe()
    encoding = manifest["spec"]["encoder"]
    assert encoding["pooling"] == "last" and encoding["max_length"] == 64
    searcher = Searcher.load(out)
    np.testing.assert_array_equal(searcher.filter.matrix, projection.matrix)
    mapped = faiss.downcast_index(searcher.index.index)
    stored = mapped.index.reconstruct_n(0, mapped.ntotal)
    expected = projection.transform(EmbeddingStore.open(store).read("last"))
    np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-6)  # the last pooling
    for document in list(searcher.docstore)[:5]:
        assert searcher.search(document.embedding_text, k=1)[0].id == document.id
    searcher.close()


def test_a_ready_projection_or_encoder_that_does_not_fit_is_one_line(
    mean_store: tuple[Encoder, Path], other_tiny_model: Path, tmp_path: Path
) -> None:
    encoder, store = mean_store
    narrow = EmbedFilter(np.eye(4, 8), FilterSpec(dim=4), np.arange(4))
    with pytest.raises(RetrieverError, match="embed_filter projects 8-dimensional embeddings, but"):
        build_index(
            None,
            tmp_path / "a",
            None,
            BuildOptions(from_store=store),
            encoder=encoder,
            embed_filter=narrow,
        )
    with pytest.raises(RetrieverError, match="give the spec.s filter or an embed_filter, not both"):
        build_index(
            None,
            tmp_path / "b",
            IndexSpec(filter=FilterSpec(tau=4)),
            BuildOptions(from_store=store),
            embed_filter=narrow,
        )
    other = Encoder.load(str(other_tiny_model), EncoderConfig(max_length=64), dtype="float32")
    with pytest.raises(RetrieverError, match="was encoded differently from this encoder"):
        build_index(None, tmp_path / "c", None, BuildOptions(from_store=store), encoder=other)
    assert _visible(tmp_path) == ["docs.jsonl", "store"]


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))

"""One definition of an index: the spec is checked once per setting, saved as written,
read back by everything, declares the command line's flags, and is what `retriever info`
and the Index handle show."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from retriever import (
    BuildOptions,
    DenseSpec,
    EncoderConfig,
    FilterSpec,
    Index,
    IndexSpec,
    ModelSpec,
    RetrieverError,
    SearchParams,
    SparseSpec,
)
from retriever.cli import _build_parser, main
from retriever.cli.options import index_spec
from retriever.core.spec import flag_of
from tests.conftest import ROOT, synthetic_docs, write_jsonl

WRITTEN = IndexSpec(
    model=ModelSpec(name="some/model", revision="main", dtype="float32"),
    encoder=EncoderConfig(prompt="echo", pooling="last", max_length=64, query_instruction="Q: "),
    filter=FilterSpec(dim=12, band="rand", seed=3, remove_mean_direction=False),
    dense=DenseSpec(
        index_type="HNSW16",
        storage="int8",
        ef_construction=24,
        search=SearchParams(ef_search=40, rescore=4),
    ),
    sparse=SparseSpec(doc_tokens=30, query_tokens=5, space="raw"),
    bm25=True,
)


def test_a_spec_reads_back_as_it_was_written() -> None:
    saved = json.loads(json.dumps(WRITTEN.to_dict()))
    assert IndexSpec.from_dict(saved) == WRITTEN
    assert saved["dense"]["search"] == {"nprobe": None, "ef_search": 40, "rescore": 4}
    assert IndexSpec.from_dict({**saved, "dense": None}).parts == ("sparse", "bm25")
    with pytest.raises(RetrieverError, match="DenseSpec has no setting nlist"):
        IndexSpec.from_dict({**saved, "dense": {**saved["dense"], "nlist": 64}})


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda: DenseSpec(storage="int4"), "unknown --storage 'int4'; choose one of float32"),
        (lambda: DenseSpec(backend="lucene"), "unknown backend 'lucene'"),
        (lambda: DenseSpec(ef_construction=0), "--ef-construction must be at least 1, got 0"),
        (lambda: SearchParams(nprobe=0), "--nprobe must be at least 1, got 0"),
        (lambda: SearchParams(ef_search=2.5), "--ef-search must be a whole number, got 2.5"),
        (lambda: SparseSpec(query_tokens=-1), "--sparse-query-tokens must be at least 0"),
        (lambda: EncoderConfig(max_length=8), "--max-length must be at least 16, got 8"),
        (lambda: EncoderConfig(pooling="max"), "unknown pooling 'max'"),
        (lambda: FilterSpec(tau=2, dim=3), "give exactly one of --tau and --dim"),
        (lambda: ModelSpec(dtype="int4"), "unknown --dtype 'int4'"),
        (lambda: IndexSpec(dense=None), "--no-dense leaves nothing to search"),
        (
            lambda: DenseSpec(backend="milvus", search=SearchParams(rescore=4)),
            "Milvus has no such second stage",
        ),
        (lambda: DenseSpec(collection="mine"), "--milvus-uri and --collection apply to"),
    ],
)
def test_each_setting_is_checked_once_in_one_line(make, said: str) -> None:
    with pytest.raises(RetrieverError, match=said) as refused:
        make()
    assert "\n" not in str(refused.value)


def _parsed(*flags: str):
    return _build_parser().parse_args(["index", "corpus.jsonl", "--out", "x", *flags])


def test_the_index_command_parses_into_the_spec_its_fields_declare() -> None:
    args = _parsed(
        *("--model", "some/model", "--revision", "main", "--dtype", "float32"),
        *("--prompt", "echo", "--pooling", "last", "--max-length", "64"),
        *("--query-instruction", "Q: ", "--dim", "12", "--band", "rand", "--seed", "3"),
        *("--no-remove-mean-direction", "--index-type", "HNSW16", "--storage", "int8"),
        *("--ef-construction", "24", "--ef-search", "40", "--rescore", "4"),
        *("--sparse", "--sparse-doc-tokens", "30", "--sparse-query-tokens", "5"),
        *("--sparse-space", "raw", "--bm25"),
    )
    assert index_spec(args) == WRITTEN
    assert index_spec(_parsed()) == IndexSpec()
    assert index_spec(_parsed("--no-dense", "--bm25")) == IndexSpec(dense=None, bm25=True)


@pytest.mark.parametrize(
    "spec_class", [ModelSpec, EncoderConfig, FilterSpec, DenseSpec, SearchParams, SparseSpec]
)
def test_every_declared_flag_is_an_index_flag(spec_class: type) -> None:
    """A new field with a flag reaches `retriever index` with no second declaration."""
    index = next(
        parser
        for action in _build_parser()._subparsers._group_actions
        for name, parser in action.choices.items()
        if name == "index"
    )
    flags = {option for action in index._actions for option in action.option_strings}
    for field in spec_class.__dataclass_fields__.values():
        declared = flag_of(field)
        if declared is not None:
            assert declared.flag in flags, declared.flag


def test_a_bad_value_is_the_same_line_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["index", str(tmp_path / "docs.jsonl"), "--out", str(tmp_path / "x")]
    assert main([*argv, "--ef-construction", "0"]) == 2
    err = capsys.readouterr().err.strip()
    with pytest.raises(RetrieverError) as refused:
        DenseSpec(ef_construction=0)
    assert err == f"retriever: error: {refused.value}"


@pytest.fixture
def built(tiny_model: Path, tmp_path: Path) -> Index:
    spec = IndexSpec(
        model=ModelSpec(name=str(tiny_model), dtype="float32"),
        encoder=EncoderConfig(max_length=64),
        dense=DenseSpec(index_type="HNSW8", ef_construction=24, search=SearchParams(ef_search=9)),
        bm25=True,
    )
    corpus = write_jsonl(tmp_path / "docs.jsonl", synthetic_docs(30))
    return Index.build(corpus, tmp_path / "idx", spec, BuildOptions(batch_size=4))


def test_the_handle_builds_describes_grows_shrinks_and_searches(
    built: Index, tiny_model: Path, tmp_path: Path
) -> None:
    described = built.describe()
    assert described["documents"] == 30 and described["manifest_version"] == 3
    assert set(described["parts"]) == {"dense", "bm25"}
    assert described["parts"]["dense"]["bytes"] > 0
    spec = IndexSpec.from_dict(described["spec"])
    # Every build knob is kept, efConstruction included, and reaches the FAISS index.
    assert spec.dense.ef_construction == 24 and spec.dense.search.ef_search == 9
    searcher = built.searcher()
    from retriever.parts.dense.faiss_install import faiss

    hnsw = faiss.downcast_index(faiss.downcast_index(searcher.index.index).index).hnsw
    assert (hnsw.efConstruction, hnsw.efSearch) == (24, 9)
    assert len(searcher.search(synthetic_docs(30)[3]["text"], k=3)) == 3
    searcher.close()
    extra = write_jsonl(tmp_path / "more.jsonl", synthetic_docs(4, seed=9, prefix="m"))
    assert built.add(extra) == {"added": 4, "replaced": 0}
    assert built.delete(["s0", "m1"]) == 2
    assert built.describe()["documents"] == 32 and built.spec == spec


def test_info_prints_the_spec_without_loading_a_model(built: Index) -> None:
    program = (
        "import sys; from retriever.cli import main; "
        f"code = main(['info', {str(built.path)!r}, '--json']); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'faiss'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, check=True
    )
    described, loaded = _split(done.stdout)
    assert loaded == "[]"
    assert json.loads(described)["spec"] == built.describe()["spec"]


def _split(output: str) -> tuple[str, str]:
    """The JSON `info` printed, and the last line: the heavy modules imported."""
    text, _, last = output.rstrip("\n").rpartition("\n")
    return text, last


def test_info_in_words(built: Index, capsys: pytest.CaptureFixture) -> None:
    assert main(["info", str(built.path)]) == 0
    out = capsys.readouterr().out
    assert f"generation  {built.manifest().build['generation']}" in out
    assert "documents   30" in out and '"ef_construction": 24' in out
    assert main(["info", str(built.path.parent / "nothing")]) == 2
    assert "nothing does not exist; build an index with" in capsys.readouterr().err


def test_a_damaged_spec_is_one_line(built: Index) -> None:
    path = built.path / "manifest.json"
    raw = json.loads(path.read_text())
    raw["spec"]["dense"]["storage"] = "int4"
    path.write_text(json.dumps(raw))
    with pytest.raises(RetrieverError, match="is damaged: unknown spec.dense.storage 'int4'"):
        built.describe()
    raw["spec"]["dense"]["storage"] = None
    raw["spec"]["encoder"]["max_length"] = -5  # no flag set it: the field is named
    path.write_text(json.dumps(raw))
    with pytest.raises(RetrieverError, match="spec.encoder.max_length must be at least 16, got -5"):
        built.describe()
    raw["spec"]["encoder"]["max_length"] = 64
    raw["spec"]["bm25"] = False
    path.write_text(json.dumps(raw))
    with pytest.raises(
        RetrieverError, match="its spec names the parts dense, it holds bm25, dense"
    ):
        built.describe()


def test_milvus_honours_or_refuses_ef_construction() -> None:
    from retriever.parts.dense.backends import check_dense_spec
    from retriever.parts.dense.milvus import milvus_index

    assert milvus_index("HNSW32", lite=False, ef_construction=64) == (
        "HNSW",
        {"M": 32, "efConstruction": 64},
    )
    assert milvus_index("HNSW32", lite=False)[1]["efConstruction"] == 200
    for index_type in ("IVF64", "GPU_CAGRA"):
        with pytest.raises(RetrieverError, match="--ef-construction applies to HNSW indexes"):
            check_dense_spec(
                DenseSpec(
                    backend="milvus",
                    index_type=index_type,
                    milvus_uri="http://127.0.0.1:1",
                    ef_construction=64,
                )
            )

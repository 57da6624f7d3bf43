from __future__ import annotations

from pathlib import Path

import pytest

from retriever.core.errors import RetrieverError
from retriever.data.datasets import Document
from retriever.parts import docstore as docstore_module
from retriever.parts.docstore import DocStore


def _documents(n: int) -> list[Document]:
    return [Document(f"id-{i}", f"title {i}", f"text {i} 東京 ☕", {"n": i}) for i in range(n)]


def test_rows_ids_and_iteration_round_trip(tmp_path: Path) -> None:
    documents = _documents(2500)  # more than one write batch
    assert DocStore.write(tmp_path / "store", documents, batch_size=1000) == 2500
    store = DocStore.open(tmp_path / "store")
    assert len(store) == 2500
    assert store.get(1234) == documents[1234]
    assert store.get_many([5, 0, 2499]) == [documents[5], documents[0], documents[2499]]
    assert store.key_of("id-777") == 777
    assert store.key_of("missing") is None
    assert list(store) == documents
    with pytest.raises(RetrieverError, match="no document with key 2500"):
        store.get(2500)
    store.close()


def test_map_grows_when_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docstore_module, "_INITIAL_MAP_SIZE", 64 * 1024)
    big = [Document(f"d{i}", "", "x" * 5000, {}) for i in range(200)]  # ~1 MB >> 64 KiB
    DocStore.write(tmp_path / "store", big, batch_size=50)
    store = DocStore.open(tmp_path / "store")
    assert len(store) == 200 and store.get(199) == big[199]


def test_searchers_open_read_only(tmp_path: Path) -> None:
    DocStore.write(tmp_path / "store", _documents(3))
    store = DocStore.open(tmp_path / "store")
    with pytest.raises(Exception, match="(?i)read-only|permission|EACCES"):
        with store._env.begin(write=True) as txn:
            txn.put(b"k", b"v")


def test_one_folder_opened_twice_shares_its_environment(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    DocStore.write(folder, [Document("a", "t", "x"), Document("b", "", "y")])
    first, second = DocStore.open(folder), DocStore.open(folder)
    first.close()
    assert second.get(1).id == "b"  # closing one leaves the other readable
    second.close()
    assert DocStore.open(folder).key_of("b") == 1


class _CountingEnv:
    """An LMDB environment that counts the transactions begun through it."""

    def __init__(self, env: object) -> None:
        self._env = env
        self.begun = 0

    def begin(self, *args: object, **kwargs: object) -> object:
        self.begun += 1
        return self._env.begin(*args, **kwargs)

    def __getattr__(self, name: str) -> object:
        return getattr(self._env, name)


def test_len_opens_no_transaction(tmp_path: Path) -> None:
    DocStore.write(tmp_path / "store", _documents(7))
    store = DocStore.open(tmp_path / "store")
    counting = store._env = _CountingEnv(store._env)
    assert [len(store) for _ in range(50)] == [7] * 50
    assert counting.begun == 0
    assert store.get(6).id == "id-6" and counting.begun == 1


def test_ids_of_decodes_no_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _documents(40)
    # Ids JSON escapes: a quote, a backslash, a newline; and characters it keeps as they are.
    awkward = [
        Document(doc_id, "t", "x")
        for doc_id in ('say "hi"', "back\\slash", "new\nline", "東京 ☕", "tab\there", "/ok/")
    ]
    DocStore.write(tmp_path / "store", plain + awkward)
    store = DocStore.open(tmp_path / "store")
    decoded = []
    real = docstore_module._decode
    monkeypatch.setattr(docstore_module, "_decode", lambda raw: decoded.append(raw) or real(raw))
    keys = list(range(len(plain)))[::-1]
    assert store.ids_of(keys) == [plain[key].id for key in keys]
    assert decoded == []
    assert store.ids_of(range(40, 46)) == [d.id for d in awkward]
    assert len(decoded) == 4  # only the ids with JSON escapes take the full decode
    with pytest.raises(RetrieverError, match="no document with key 46"):
        store.ids_of([46])

"""BEIR datasets by name: ``beir:scifact`` wherever a dataset folder is taken.

The first use downloads BEIR's official zip (or the same zip from the mirror that
``RETRIEVER_BEIR_URL`` names), checks it against the MD5 BEIR publishes and unzips it into
the cache's ``datasets/`` folder; every later use reads that folder without touching the
network. A folder placed there by hand (no network) is used the same way.
"""

from __future__ import annotations

import difflib
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retriever.core.cache import cache_dir
from retriever.core.errors import RetrieverError

PREFIX = "beir:"
OFFICIAL_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"
# The base URL holding NAME.zip: a mirror, or a local server without a network to BEIR's.
MIRROR_VARIABLE = "RETRIEVER_BEIR_URL"


@dataclass(frozen=True)
class BeirDataset:
    """One zip BEIR distributes: its MD5 as BEIR's README publishes it, its size in bytes
    and document count as ir_datasets records them (shown, never enforced)."""

    name: str
    md5: str
    zip_bytes: int | None = None
    documents: int | None = None
    # cqadupstack's zip holds one BEIR folder per StackExchange forum, named as
    # beir:cqadupstack/FORUM.
    forums: tuple[str, ...] = ()


# MD5s: the "Available Datasets" table of BEIR's README (github.com/beir-cellar/beir).
# Sizes and documents: ir_datasets' downloads.json (size_hint) and metadata.json.
_DATASETS = (
    BeirDataset("msmarco", "444067daf65d982533ea17ebd59501e4", 1082258632, 8841823),
    BeirDataset("trec-covid", "ce62140cb23feb9becf6270d0d1fe6d1", 73876720, 171332),
    BeirDataset("nfcorpus", "a89dba18a62ef92f7d323ec890a0d38d", 2448432, 3633),
    BeirDataset("nq", "d4d3d2e48787a744b6f6e691ff534307", 498307926, 2681468),
    BeirDataset("hotpotqa", "f412724f78b0d91183a0e86805e16114", 654025350, 5233329),
    BeirDataset("fiqa", "17918ed23cd04fb15047f73e6c3bd9d9", 17948027, 57638),
    BeirDataset("arguana", "8ad3e3c2a5867cdced806d6503f29b99", 3773617, 8674),
    BeirDataset("webis-touche2020", "46f650ba5a527fc69e0a6521c5a23563", 227132363, 382545),
    BeirDataset(
        "cqadupstack",
        "4e41456d7df8ee7760a7f866133bda78",
        5343728040,
        457199,
        forums=(
            "android",
            "english",
            "gaming",
            "gis",
            "mathematica",
            "physics",
            "programmers",
            "stats",
            "tex",
            "unix",
            "webmasters",
            "wordpress",
        ),
    ),
    BeirDataset("quora", "18fb154900ba42a600f84b839c173167", 15853968, 522931),
    BeirDataset("dbpedia-entity", "c2a39eb420a3164af735795df012ac2c", 639285131, 4635922),
    BeirDataset("scidocs", "38121350fc3a4d2f48850f6aff52e4a9", 142471588, 25657),
    BeirDataset("fever", "5a818580227bfb4b35bb6fa46d9b6c03", 1236988269, 5416568),
    BeirDataset("climate-fever", "8b66f0a9126c521bae2bde127b4dc99d", 1228666652, 5416593),
    BeirDataset("scifact", "5f7d1de60b170fc8027bb7898e2efca1", 2816079, 5183),
)
BEIR_DATASETS: dict[str, BeirDataset] = {entry.name: entry for entry in _DATASETS}

# In BEIR's table but not distributed (licences): each must be rebuilt with BEIR's scripts.
UNDISTRIBUTED = ("bioasq", "signal1m", "trec-news", "robust04")


def is_named(dataset: str | Path) -> bool:
    """Whether ``dataset`` names a catalogued BEIR dataset (``beir:NAME``), not a path."""
    return isinstance(dataset, str) and dataset.lower().startswith(PREFIX)


def datasets_root() -> Path:
    """The cache folder that holds the unzipped datasets (``$RETRIEVER_CACHE/datasets``)."""
    return cache_dir() / "datasets"


def dataset_folder(entry: BeirDataset) -> Path:
    return datasets_root() / entry.name


def base_url() -> str:
    return (os.environ.get(MIRROR_VARIABLE) or OFFICIAL_URL).rstrip("/")


def zip_url(entry: BeirDataset, base: str | None = None) -> str:
    return f"{base or base_url()}/{entry.name}.zip"


def entry_named(text: str) -> BeirDataset:
    """The catalogue entry of ``NAME``, ``beir:NAME`` or ``beir:NAME/FORUM``."""
    name = (text[len(PREFIX) :] if is_named(text) else text).strip().lower().partition("/")[0]
    entry = BEIR_DATASETS.get(name)
    if entry is None:
        raise RetrieverError(_unknown(name))
    return entry


def lookup(dataset: str) -> tuple[BeirDataset, str | None]:
    """The catalogue entry and forum (cqadupstack only) that ``beir:NAME[/FORUM]`` names."""
    entry = entry_named(dataset)
    name, _, forum = dataset[len(PREFIX) :].strip().lower().partition("/")
    if entry.forums and forum not in entry.forums:
        what = f"has no forum {forum!r}" if forum else "is one folder per forum"
        raise RetrieverError(
            f"{PREFIX}{name} {what}: name one, as {PREFIX}{name}/FORUM with FORUM among "
            f"{', '.join(entry.forums)}"
        )
    if forum and not entry.forums:
        raise RetrieverError(f"{PREFIX}{name} has no sub-folders: give {PREFIX}{name}")
    return entry, forum or None


def _unknown(name: str) -> str:
    if name in UNDISTRIBUTED:
        return (
            f"BEIR does not distribute {name!r} (its licence): build its folder with BEIR's "
            "instructions (github.com/beir-cellar/beir) and give the folder's path"
        )
    close = difflib.get_close_matches(name, BEIR_DATASETS, n=3, cutoff=0.5)
    known = close or list(BEIR_DATASETS)
    hint = "did you mean" if close else "known names:"
    return (
        f"unknown BEIR dataset {name!r}; {hint} {', '.join(PREFIX + n for n in known)} "
        "(`retriever datasets` lists them)"
    )


def local_dataset(dataset: str | Path) -> str | Path:
    """``dataset`` itself, or for ``beir:NAME`` the cached folder, downloaded first if absent.

    Every reader of a dataset (:mod:`retriever.data.datasets`) calls this first, so a name works
    wherever a folder does; the download happens once, on the first (cheap) check.
    """
    if not is_named(dataset):
        return dataset
    entry, forum = lookup(str(dataset))
    folder = fetch(entry)
    return folder / forum if forum else folder


def fetch(entry: BeirDataset) -> Path:
    """The dataset's folder in the cache, downloaded and unzipped unless it is there."""
    folder = dataset_folder(entry)
    if folder.is_dir():
        return folder
    from retriever.data.download import download_zip, unzip_folder

    root = folder.parent
    root.mkdir(parents=True, exist_ok=True)
    with _download_lock(root / f".{entry.name}.lock"):
        if folder.is_dir():  # another process fetched it while this one waited
            return folder
        url = zip_url(entry)
        archive = download_zip(
            url,
            root / f"{entry.name}.zip.part",
            md5=entry.md5,
            size_hint=entry.zip_bytes,
            label=PREFIX + entry.name,
            offline_hint=_offline_hint(entry, folder),
        )
        unzip_folder(archive, entry.name, folder)
    return folder


def _offline_hint(entry: BeirDataset, folder: Path) -> str:
    return (
        f"without a network, get {zip_url(entry, OFFICIAL_URL)} (MD5 {entry.md5}) elsewhere, "
        f"unzip it and place its {entry.name}/ folder at {folder} (or set {MIRROR_VARIABLE} "
        "to a mirror)"
    )


@contextmanager
def _download_lock(path: Path) -> Iterator[None]:
    """One process downloads a dataset at a time; another waits, then finds the folder."""
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


def dataset_label(dataset: str | Path) -> str:
    """A file-name-safe short name: ``scifact`` for ``beir:scifact``, else the path's name."""
    if is_named(dataset):
        return str(dataset)[len(PREFIX) :].strip().lower().replace("/", "-")
    return Path(dataset).name


def qrels_splits(folder: Path) -> list[str]:
    """The judgement splits a BEIR folder holds (its ``qrels/SPLIT.tsv`` files), sorted."""
    qrels = folder / "qrels"
    return sorted(tsv.stem for tsv in qrels.glob("*.tsv")) if qrels.is_dir() else []


def describe(entry: BeirDataset) -> dict[str, Any]:
    """What ``retriever datasets`` shows of one dataset: where it comes from, where it goes
    in the cache, whether it is there (and its splits), and what a broken download left."""
    folder = dataset_folder(entry)
    part = folder.parent / f"{entry.name}.zip.part"
    cached = folder.is_dir()
    return {
        "name": PREFIX + entry.name,
        "url": zip_url(entry),
        "md5": entry.md5,
        "zip_bytes": entry.zip_bytes,
        "documents": entry.documents,
        "folder": str(folder),
        "cached": cached,
        "splits": qrels_splits(folder) if cached and not entry.forums else [],
        "forums": list(entry.forums),
        "partial_bytes": part.stat().st_size if part.is_file() and not cached else 0,
    }

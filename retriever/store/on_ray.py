"""The encode stage on Ray Data: chunks of a corpus encoded by a pool of model actors.

Each missing chunk of the embedding store becomes one row of a Ray dataset; an actor
pool (``map_batches`` over :class:`ChunkEncoder`, one model load per actor, ``num_gpus``
per actor when GPUs exist) reads its chunk from the corpus file at the chunk's byte
offset, encodes it and writes the shard into the store, exactly as the single-process
path does (:func:`retriever.store.encoding.encode_to_store`). So resume, assembly and "encode once,
index many" are the same whoever encoded a shard:

- chunks already in the store are skipped, so a failed job reruns where it stopped (open
  source Ray does not resume jobs itself);
- a lost worker is restarted by Ray and its chunk retried; a shard is written by atomic
  renames and is the same bytes whoever writes it, so a retry neither loses nor
  duplicates a document.

Every worker must see the corpus file and the store folder at the same path (one machine,
or a shared filesystem on a cluster).
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from typing import Any

from retriever.core.errors import RetrieverError
from retriever.core.spec import EncoderConfig
from retriever.data.datasets import CorpusScan, chunk_starts, read_chunk
from retriever.store.embeddings import EmbeddingStore

logger = logging.getLogger(__name__)

# Fault injection for tests: while this names a folder holding a file ``armed``, the first
# worker to write a shard afterwards claims ``fired`` (an exclusive create, so exactly one
# worker) with its pid and dies as a killed process would. Tests see the kill happen at a
# known step instead of racing the pipeline against a clock.
KILL_AFTER_SHARD_ENV = "RETRIEVER_TEST_KILL_WORKER_AFTER_SHARD"

INSTALL_HINT = (
    "Ray is an optional extra: pip install 'retriever[ray]' (or: pip install 'ray[data]')"
)


@dataclass(frozen=True)
class RayOptions:
    """Where and how the encode stage runs on Ray."""

    address: str | None = None  # None: a local Ray with this machine's cores
    workers: int | None = None  # None: one per GPU, else half the CPUs
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs
    device: str | None = None  # the actors' torch device (None: cuda if present)


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RetrieverError(f"--ray needs Ray Data. {INSTALL_HINT}") from None
    return ray


def connect(address: str | None) -> Any:
    """Join the Ray cluster at ``address`` (``auto``, ``ray://host:port``), or start a
    local one with this machine's cores when ``address`` is ``None``."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=os.cpu_count(), logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RetrieverError(f"cannot start or join Ray at {address or 'local'}: {exc}") from None
    return ray


class ChunkEncoder:
    """A Ray actor: loads the model once, then encodes chunks into the store."""

    def __init__(
        self,
        model: str,
        revision: str | None,
        config: dict[str, Any],
        dtype: str,
        device: str | None,
        batch_size: int,
        expected_weights_sha256: str,
        store: str,
        scan: CorpusScan,
        slice_label: str,
    ) -> None:
        from retriever.encode.encoder import Encoder

        self.encoder = Encoder.load(
            model,
            EncoderConfig.from_dict(config),
            dtype=dtype,
            device=device,
            batch_size=batch_size,
            revision=revision,
            expected_weights_sha256=expected_weights_sha256,
            expected_by=f"the embedding store {store}",
        )
        self.store = EmbeddingStore.open(store)
        self.scan = scan
        self.slice_label = slice_label

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[int]]:
        counts = []
        for chunk, offset, line in zip(batch["chunk"], batch["offset"], batch["line"], strict=True):
            chunk = int(chunk)
            if self.store.shard(chunk) is None:  # a retried task may find it done
                size = min(self.store.chunk_size, self.store.count - chunk * self.store.chunk_size)
                documents = read_chunk(self.scan, (int(offset), int(line)), size)
                vectors = self.encoder.encode_poolings(
                    [d.embedding_text for d in documents],
                    self.store.poolings,
                    show_progress=False,
                )
                self.store.write_shard(chunk, documents, vectors, slice_label=self.slice_label)
                _die_if_a_test_asks()
            counts.append(self.store.shard(chunk).count)
        return {"chunk": [int(c) for c in batch["chunk"]], "count": counts}


def _die_if_a_test_asks() -> None:
    folder = os.environ.get(KILL_AFTER_SHARD_ENV)
    if not folder or not os.path.exists(os.path.join(folder, "armed")):
        return
    try:
        claim = os.open(os.path.join(folder, "fired"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(claim, str(os.getpid()).encode())
    os.close(claim)
    os.kill(os.getpid(), signal.SIGKILL)


def encode_with_ray(
    encoder: Any,
    scan: CorpusScan,
    store: EmbeddingStore,
    options: RayOptions,
    *,
    slice_: tuple[int, int] = (0, 1),
    show_progress: bool = True,
) -> EmbeddingStore:
    """Encode this slice's missing chunks of ``store`` on a Ray actor pool, joining or
    starting Ray as ``options`` say; each actor loads ``encoder``'s model itself."""
    from retriever.core.progress import progress_bar

    index, total = slice_
    todo = [c for c in store.missing_chunks() if c % total == index]
    if not todo:
        logger.info("every chunk of this slice is already in %s", store.folder)
        return store
    ray = connect(options.address)
    resources = ray.cluster_resources()
    gpus = options.gpus_per_worker
    if gpus is None:
        gpus = 1 if resources.get("GPU", 0) else 0
    workers = _worker_count(resources, options.workers, gpus, len(todo))
    logger.info(
        "encoding %d chunks on Ray: %d worker(s), %s GPU each", len(todo), workers, gpus or "no"
    )
    starts = chunk_starts(scan, store.chunk_size)
    rows = [{"chunk": c, "offset": starts[c][0], "line": starts[c][1]} for c in todo]
    encoded = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        ChunkEncoder,
        batch_size=1,
        concurrency=workers,
        num_gpus=gpus,
        num_cpus=None if gpus else max(1, int(resources.get("CPU", 1)) // workers),
        fn_constructor_kwargs={
            **_encoder_spec(encoder, dtype=store.key["dtype"], device=options.device),
            "store": str(store.folder),
            "scan": scan,
            "slice_label": f"{index}/{total}",
        },
        # Ray Data restarts a lost actor and retries its chunk by default
        # (max_restarts = max_task_retries = -1); shards are idempotent, so that is safe.
    )
    size = sum(min(store.chunk_size, store.count - c * store.chunk_size) for c in todo)
    with progress_bar(total=size, desc="encoding (ray)", unit="doc", show=show_progress) as bar:
        for row in encoded.iter_rows():
            bar.update(int(row["count"]))
    missing = [c for c in todo if store.shard(c) is None]
    if missing:
        raise RetrieverError(f"Ray finished but chunks {missing[:10]} are missing: run again")
    return store


def _worker_count(
    resources: dict[str, float], asked: int | None, gpus_per_worker: float, chunks: int
) -> int:
    """The actors to start: as asked, else one per GPU share, else half the CPUs; never
    more than there are chunks."""
    if asked is None:
        asked = (
            int(resources.get("GPU", 0) / gpus_per_worker)
            if gpus_per_worker
            else max(1, int(resources.get("CPU", 1)) // 2)
        )
    return max(1, min(asked, chunks))


def _encoder_spec(encoder: Any, *, dtype: str, device: str | None) -> dict[str, Any]:
    """:class:`ChunkEncoder`'s arguments that load the same model as ``encoder``."""
    return {
        "model": encoder.resolved.name,
        "revision": encoder.resolved.revision,
        "config": encoder.config.to_dict(),
        "dtype": dtype,
        "device": device,
        "batch_size": encoder.batch_size,
        "expected_weights_sha256": encoder.resolved.weights_sha256,
    }

"""What a long encode will cost, known before it starts: the rate on this machine, shards
sized by time, the expected duration and the disk it needs.

A shard is the unit of resuming: a killed build loses the chunk it was encoding. So the
chunk size is chosen in time, not in documents: about :data:`TARGET_SHARD_SECONDS` of
encoding at the rate measured on this machine's first batches (a few seconds' probe),
whether that is 200 documents on a 2-core CPU in float32 or 60,000 on a GPU.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retriever.core.errors import RetrieverError
from retriever.core.generations import free_bytes, on_nearest_folder
from retriever.core.sizes import size_text

logger = logging.getLogger(__name__)

TARGET_SHARD_SECONDS = 120.0
# Below the lower bound a shard's files cost more than its encoding; above the upper one
# a chunk's vectors (read whole while an index is assembled) grow past a few GiB.
CHUNK_BOUNDS = (64, 65_536)
# The probe: this many batches, the first of which also pays the model's warm-up.
PROBE_BATCHES = 2


class RateMeter:
    """Documents per second from the batches encoded since :meth:`start`."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.started: float | None = None
        self.documents = 0
        self.batches = 0

    def start(self) -> None:
        if self.started is None:
            self.started = self.clock()

    def update(self, documents: int) -> None:
        """One batch of ``documents`` done (an encoder's ``on_batch``)."""
        self.start()
        self.documents += documents
        self.batches += 1

    @property
    def known(self) -> bool:
        return self.batches >= PROBE_BATCHES

    @property
    def rate(self) -> float:
        elapsed = self.clock() - (self.started if self.started is not None else 0.0)
        return self.documents / max(elapsed, 1e-9)


def probe_rate(
    encoder: Any,
    texts: Sequence[str],
    poolings: Sequence[str],
    *,
    queries: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> RateMeter:
    """Encode the first :data:`PROBE_BATCHES` batches of ``texts`` (their vectors are
    dropped) and return the meter: the rate of this model on this machine."""
    meter = RateMeter(clock)
    sample = list(texts[: PROBE_BATCHES * max(1, int(getattr(encoder, "batch_size", 16)))])
    meter.start()
    encoder.encode_poolings(
        sample, poolings, queries=queries, show_progress=False, on_batch=meter.update
    )
    return meter


def chunk_size_for(rate: float, seconds: float = TARGET_SHARD_SECONDS) -> int:
    """The documents ``seconds`` of encoding at ``rate`` take, to two significant digits
    (a size a person can read and pass to --chunk-size), within :data:`CHUNK_BOUNDS`."""
    low, high = CHUNK_BOUNDS
    raw = min(max(rate * seconds, low), high)
    scale = 10 ** max(0, int(math.floor(math.log10(raw))) - 1)
    return int(min(max(round(raw / scale) * scale, low), high))


@dataclass(frozen=True)
class DiskNeed:
    """Bytes a step will write under ``folder`` (``what`` names it in messages)."""

    what: str
    folder: Path
    bytes: int


def _device(folder: Path) -> int | None:
    return on_nearest_folder(folder, lambda path: os.stat(path).st_dev)


def check_disk(needs: Sequence[DiskNeed]) -> list[tuple[list[DiskNeed], int | None]]:
    """Group ``needs`` by file system and refuse, in one line, where the free space cannot
    hold them; returns ``(needs, free bytes)`` per file system for the ETA line."""
    groups: dict[int | None, list[DiskNeed]] = {}
    for need in needs:
        groups.setdefault(_device(need.folder), []).append(need)
    report = []
    for group in groups.values():
        free = free_bytes(group[0].folder)
        wanted = sum(need.bytes for need in group)
        if free is not None and wanted > free:
            parts = " + ".join(f"{need.what} {size_text(need.bytes)}" for need in group)
            raise RetrieverError(
                f"not enough disk: this build needs about {size_text(wanted)} ({parts}) on the "
                f"file system of {group[0].folder}, which has {size_text(free)} free; free "
                "some space or choose other folders (--store, --out)"
            )
        report.append((group, free))
    return report


def duration_text(seconds: float) -> str:
    """``1 h 05 min``, ``12 min 30 s`` or ``42 s``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def announce(
    documents: int,
    rate: float,
    disk: Sequence[tuple[list[DiskNeed], int | None]],
    chunk_size: int,
) -> str:
    """The one ETA line logged before the long work: rate, time, shard size, disk."""
    space = "; ".join(
        " + ".join(f"{need.what} {size_text(need.bytes)}" for need in group)
        + (f" needed, {size_text(free)} free" if free is not None else " needed")
        for group, free in disk
    )
    line = (
        f"encoding {documents:,} documents at {rate:,.1f} docs/s: about "
        f"{duration_text(documents / max(rate, 1e-9))}, in shards of {chunk_size:,} "
        f"(~{duration_text(chunk_size / max(rate, 1e-9))} each); disk: {space}"
    )
    logger.info("%s", line)
    return line

"""One searcher that follows an index path from generation to generation.

A writer (build, add, delete) publishes a new generation by swapping the index link; a
long-lived reader (the HTTP server) checks the link before each request and, when it
points elsewhere, opens a searcher on the new generation and swaps it in. A request
leases the searcher current when it starts and keeps it to the end, so every answer
comes from exactly one generation; the old searcher is closed when its last lease ends.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retriever.core.errors import RetrieverError
from retriever.search.searcher import Searcher

logger = logging.getLogger(__name__)


@dataclass
class Slot:
    """A searcher on one generation, with the requests using it counted."""

    searcher: Searcher
    users: int = 0
    retired: bool = False

    @property
    def generation(self) -> str:
        """The generation folder's name: what an answer says it came from."""
        return self.searcher.folder.name


class FollowingSearcher:
    """Leases the searcher of ``path``'s current generation; see the module docstring.

    ``options`` go to :meth:`Searcher.load`. A new generation reuses the loaded model when
    its manifest names the same weights and settings (else it loads its own). A new
    generation that fails to open is logged once and the old one keeps answering.
    """

    def __init__(self, path: str | Path, **options: Any) -> None:
        self.path = Path(path).expanduser().absolute()
        self._options = options
        self._state = threading.Lock()  # guards _slot and every slot's counts
        self._loading = threading.Lock()  # one thread opens a new generation at a time
        self._failed: Path | None = None
        self._slot = Slot(Searcher.load(self.path, **options))
        self._closed = False

    @property
    def generation(self) -> str:
        return self._slot.generation

    @property
    def searcher(self) -> Searcher:
        """The current searcher, for a glance (a request leases it instead)."""
        return self._slot.searcher

    @contextlib.contextmanager
    def lease(self) -> Iterator[Slot]:
        """The current generation's slot, held (not closed) until the block ends."""
        self._refresh()
        with self._state:
            if self._closed:
                raise RetrieverError("the server is shutting down; try again later")
            slot = self._slot
            slot.users += 1
        try:
            yield slot
        finally:
            with self._state:
                slot.users -= 1
                done = slot.retired and slot.users == 0
            if done:
                _close(slot)

    def _refresh(self) -> None:
        """Swap in a searcher on the generation the path points to now, if it moved."""
        target = self.path.resolve()
        if target == self._slot.searcher.folder or target == self._failed:
            return
        # Another thread is opening it: meanwhile answer from the current generation.
        if not self._loading.acquire(blocking=False):
            return
        try:
            if self.path.resolve() != self._slot.searcher.folder:
                self._swap(self._open(target))
        finally:
            self._loading.release()

    def _open(self, target: Path) -> Searcher | None:
        current = self._slot.searcher
        try:
            try:
                return Searcher.load(self.path, **{**self._options, "encoder": current.encoder})
            except RetrieverError:
                # Built with another model or settings: load the one it names.
                return Searcher.load(self.path, **self._options)
        except Exception as exc:  # a broken generation must not stop the server
            logger.warning(
                "cannot open the new generation %s (%s); still answering from %s",
                target.name,
                exc,
                current.folder.name,
            )
            self._failed = target
            return None

    def _swap(self, searcher: Searcher | None) -> None:
        if searcher is None:
            return
        with self._state:
            old, self._slot = self._slot, Slot(searcher)
            old.retired = True
            done = old.users == 0
        logger.info(
            "now answering from generation %s (was %s)", searcher.folder.name, old.generation
        )
        if done:
            _close(old)

    def close(self) -> None:
        """Close the current searcher once no request uses it; later leases are refused."""
        with self._state:
            self._closed = True
            slot = self._slot
            slot.retired = True
            done = slot.users == 0
        if done:
            _close(slot)


def _close(slot: Slot) -> None:
    # Only the thread that saw the last user leave gets here, once per slot.
    slot.searcher.close()

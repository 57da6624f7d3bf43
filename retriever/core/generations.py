"""The life of an index path: one writer at a time, immutable generations, atomic swaps.

An index path ``DIR`` is a symbolic link to a generation folder beside it::

    DIR -> .DIR.generations/20261123T181500-4f2a9c     (the current generation)
    .DIR.generations/20261123T170102-77b0e1            (an older one, while read)
    .DIR.generations/20261123T181733-a1c3d2.partial    (a writer's staging folder)
    .DIR.lock                                          (the writer lock, holding its pid)

A writer (build, add, delete) takes ``.DIR.lock`` with ``flock`` for its whole run, so a
second writer fails at once naming the holder. It writes a new generation in a staging
folder, renames it complete, and swaps the link with one ``os.replace``: a reader resolves
the link once and reads every part from one generation, and no moment exists, even under
``kill -9``, at which ``DIR`` resolves to nothing. Generations are never modified.

A reader holds a shared ``flock`` on its generation's ``READERS`` file while it is open;
after a swap the writer deletes every older generation on which it can take the lock
exclusively, that is, which no process is reading. The one a reader holds is deleted by
the next writer after the reader lets go.

A part may live outside the folder: a Milvus server collection. Its generation names it
in ``EXTERNAL`` (written before the part is created, so a crash cannot orphan it); the
part is made current when its generation is published and dropped when its generation is
removed. The writer says how, with the :class:`ExternalParts` of the backends
(:data:`retriever.parts.dense.backends.EXTERNAL_PARTS`): this module knows folders, not servers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from retriever.core.errors import RetrieverError

logger = logging.getLogger(__name__)
T = TypeVar("T")

READERS_FILE = "READERS"
EXTERNAL_FILE = "EXTERNAL"
_PARTIAL = ".partial"


@dataclass(frozen=True)
class ExternalParts:
    """How a generation's parts outside its folder, named in its ``EXTERNAL`` record, are
    made current (``publish``) and dropped (``drop``); each takes the record's path and
    raises :class:`RetrieverError` when the server refuses."""

    publish: Callable[[Path], None]
    drop: Callable[[Path], None]


_GENERATIONS = ".generations"


def generations_folder(out: Path) -> Path:
    return out.parent / f".{out.name}{_GENERATIONS}"


def index_holding(path: str | Path) -> Path | None:
    """The index path whose generations hold ``path``, or None.

    A generation is immutable and its folder is removed by a later writer, so nothing may
    be written inside one: ``IDX/inner`` where ``IDX`` links to a generation, or anything
    under ``.IDX.generations``. The last part of ``path`` is not followed (an index link
    itself, rebuilt by ``index --overwrite``, is not inside its generations).
    """
    path = Path(path).expanduser().absolute()
    parent = Path(os.path.realpath(path.parent))
    for folder in (parent / path.name, parent, *parent.parents):
        if folder.name.startswith(".") and folder.name.endswith(_GENERATIONS):
            return folder.parent / folder.name[1 : -len(_GENERATIONS)]
    return None


def refuse_inside_index(path: str | Path, what: str) -> None:
    """Refuse to write ``what`` at ``path`` inside an index's generations, in one line."""
    index = index_holding(path)
    if index is not None:
        raise RetrieverError(
            f"{what} {path} lies inside the index {index}: its generations are replaced "
            "and removed by the index's next writer; choose a folder outside the index"
        )


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def current_generation(out: Path) -> Path | None:
    """The generation folder ``out`` points to (``None`` when it holds no index)."""
    if not out.is_symlink():
        return None
    target = out.resolve()
    return target if target.is_dir() else None


def is_index_link(out: Path) -> bool:
    """Whether ``out`` is a link into its own generations folder, as writers make it (the
    generation it names may be gone)."""
    if not out.is_symlink():
        return False
    target = Path(os.path.realpath(out))
    return target.parent == Path(os.path.realpath(generations_folder(out.absolute())))


def not_an_index(out: Path) -> RetrieverError:
    """The one line that says why ``out`` holds no index: nothing there, a link whose
    generation was removed, or a link or folder that is not an index's."""
    if is_index_link(out) and current_generation(out) is None:
        return RetrieverError(
            f"{out} points to a generation that no longer exists "
            f"({os.path.realpath(out)}); rebuild the index or restore the folder"
        )
    if out.is_symlink():
        return RetrieverError(
            f"{out} is a link to {os.readlink(out)}, not an index built by `retriever index`"
        )
    if not out.exists():
        return RetrieverError(
            f"{out} does not exist; build an index with `retriever index DATASET --out {out}`"
        )
    return RetrieverError(f"{out} is not an index built by `retriever index` (not its link)")


# Locks this process holds: path -> (thread, depth). flock conflicts between two open
# file descriptions even in one process, so a writer that locks again (a build that
# assembles what it encoded) re-enters instead of locking itself out.
_held: dict[str, tuple[int, int]] = {}


@contextlib.contextmanager
def writer_lock(out: Path) -> Iterator[None]:
    """Hold the one writer lock of index path ``out``; fail at once if another holds it."""
    path = lock_path(out)
    key = str(path.absolute())
    thread = threading.get_ident()
    if key in _held and _held[key][0] == thread:
        _held[key] = (thread, _held[key][1] + 1)
        try:
            yield
        finally:
            _held[key] = (thread, _held[key][1] - 1)
        return
    handle = _acquire(out, path)
    try:
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
        _held[key] = (thread, 1)
        try:
            yield
        finally:
            del _held[key]
            _drop_if_no_index(out, path)
    finally:
        os.close(handle)  # closing releases the flock


def _acquire(out: Path, path: Path) -> int:
    """The lock file of ``out``, opened and locked; fails at once if another holds it.

    A writer that leaves no index behind removes the lock file (:func:`_drop_if_no_index`),
    so a lock taken on a file that has since been unlinked is no lock: it is taken again
    on the file now at ``path``.
    """
    while True:
        handle = _open_lock(path)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = _held_by_another(out, path, handle)
            os.close(handle)
            raise error from None
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(handle).st_ino == os.stat(path).st_ino:
                return handle
        os.close(handle)


def _drop_if_no_index(out: Path, path: Path) -> None:
    """After a first build that failed, leave nothing behind: no lock file, no empty
    generations folder (still under the lock, so no other writer is inside)."""
    if out.is_symlink():
        return
    with contextlib.suppress(OSError):
        generations_folder(out).rmdir()  # only when empty
    if not generations_folder(out).exists():
        path.unlink(missing_ok=True)


# Errors meaning "this user may not write here" rather than a broken disk.
_REFUSED_WRITE = (errno.EACCES, errno.EPERM, errno.EROFS)


def _open_lock(path: Path) -> int:
    """Open (creating) the lock file of an index path.

    The folder's permission is checked here too: the lock file of an earlier build can be
    writable in a folder that no longer is, and the link swap would then fail only after
    the whole encoding.
    """
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            readonly = os.statvfs(folder).f_flag & os.ST_RDONLY
            code = errno.EROFS if readonly else errno.EACCES
            raise OSError(code, os.strerror(code), str(folder))
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        if exc.errno not in _REFUSED_WRITE:
            raise
        raise cannot_write(exc, folder) from None


def cannot_write(exc: OSError, fallback: Path) -> RetrieverError:
    """One line for a write refused by permissions or a read-only mount, naming the nearest
    path that exists (the folder, when the file it refused to create is not there)."""
    where = Path(exc.filename) if exc.filename else fallback
    while not where.exists() and where.parent != where:
        where = where.parent
    reason = "read-only file system" if exc.errno == errno.EROFS else "permission denied"
    return RetrieverError(
        f"cannot write {where}: {reason}; choose another --out or fix its permissions"
    )


def _held_by_another(out: Path, path: Path, handle: int) -> RetrieverError:
    pid = _lock_holder(handle)
    if pid is None:
        return RetrieverError(
            f"another process holds the writer lock of {out} ({path}); wait for it to finish"
        )
    return RetrieverError(
        f"another writer (pid {pid}) is building or changing {out}; wait for it to finish "
        f"(its lock is {path})"
    )


def _lock_holder(handle: int) -> int | None:
    """The pid of the process holding the lock open at ``handle``, only when believable.

    The file holds the pid the last retriever writer wrote, and another program can hold
    the lock without writing one, leaving a stale pid there. So the kernel's list of locks
    (Linux) is believed first; without it a recorded pid is believed while it runs.
    """
    recorded = _recorded_pid(handle)
    holders = _kernel_holders(os.fstat(handle))
    if holders:
        return recorded if recorded in holders else min(holders)
    return recorded if recorded is not None and _running(recorded) else None


def _recorded_pid(handle: int) -> int | None:
    text = ""
    for _ in range(5):
        text = os.pread(handle, 64, 0).decode(errors="replace").strip()
        if text:
            break
        time.sleep(0.01)  # a writer that has just taken the lock writes its pid a moment later
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 2**31:
        return None
    return int(text)


def _kernel_holders(lock_file: os.stat_result) -> set[int]:
    """Pids holding a lock on ``lock_file`` per ``/proc/locks``; empty where unknown."""
    device = f"{os.major(lock_file.st_dev):02x}:{os.minor(lock_file.st_dev):02x}"
    wanted = f"{device}:{lock_file.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return set()
    holders = set()
    for line in lines:
        # "3: FLOCK  ADVISORY  WRITE 4242 fd:01:1319 0 EOF"; a waiter has "->" after "3:".
        fields = line.split()
        if len(fields) > 5 and fields[1] != "->" and fields[5] == wanted:
            # 0 is a holder in another pid namespace, or one that has exited.
            if fields[4].isdigit() and int(fields[4]) > 0:
                holders.add(int(fields[4]))
    return holders


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True  # it exists, owned by another user
    except (ProcessLookupError, OverflowError):
        return False
    return True


_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NEARLY_FULL = 256 << 10


def on_nearest_folder(folder: Path, read: Callable[[Path], T]) -> T | None:
    """``read`` of ``folder``, or of its nearest parent that can be read (a folder about to
    be created is on its parent's file system); None where none can."""
    for candidate in (folder, *folder.parents):
        try:
            return read(candidate)
        except OSError:
            continue
    return None


def free_bytes(folder: Path) -> int | None:
    """Free bytes for this user on the file system ``folder`` is (or will be) on."""
    return on_nearest_folder(folder, lambda path: shutil.disk_usage(path).free)


def _disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether an error from any writer (os, numpy, FAISS, LMDB) means the disk is full."""
    import lmdb

    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return True
    if isinstance(exc, lmdb.DiskError):
        return True
    text = str(exc)
    if "No space left on device" in text or "Disk quota exceeded" in text:
        return True
    # Some writers report a full disk obliquely (numpy: "N requested and M written";
    # LMDB: "Input/output error"): an I/O failure with no free space left is one too.
    free = free_bytes(folder)
    return (
        isinstance(exc, (OSError, RuntimeError, lmdb.Error))
        and free is not None
        and (free < _NEARLY_FULL)
    )


@contextlib.contextmanager
def disk_errors(folder: Path) -> Iterator[None]:
    """Turn a full disk met while writing under ``folder`` into one clear error."""
    try:
        yield
    except Exception as exc:
        if not _disk_full(exc, folder):
            raise
        free = free_bytes(folder)
        left = "free space unknown" if free is None else f"{free / 2**20:,.1f} MiB free now"
        raise RetrieverError(
            f"no space left on the device while writing {folder} ({left}); nothing was "
            "published and the previous index, if any, is intact: free some space and rerun"
        ) from None


def _new_generation_name() -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{secrets.token_hex(3)}"


@contextlib.contextmanager
def new_generation(out: Path, *, external: ExternalParts) -> Iterator[Path]:
    """A staging folder for the next generation of ``out``; published on success.

    Call it holding :func:`writer_lock`. Staging folders of dead writers are removed
    first (under the lock no other writer can be alive). On an exception the staging
    folder is removed and ``out`` is untouched. ``external`` publishes and drops the
    parts generations keep outside their folders.
    """
    folder = generations_folder(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno not in _REFUSED_WRITE:
            raise
        raise cannot_write(exc, out.parent) from None
    for leftover in folder.glob(f"*{_PARTIAL}"):
        logger.info("removing %s, left by a writer that did not finish", leftover.name)
        _remove(leftover, external)
    name = _new_generation_name()
    staging = folder / f"{name}{_PARTIAL}"
    # mkdir honours the umask (mkdtemp would force 0700 and hide indexes from a group).
    staging.mkdir()
    try:
        with disk_errors(staging):
            yield staging
            _fsync_tree(staging)
            final = folder / name
            os.replace(staging, final)
            _publish_renamed(out, final, external)
        _publish_external(final, external)
    finally:
        if staging.exists():
            _remove(staging, external)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty: a first build that failed leaves no trace
    remove_unread_generations(out, external)


def _publish_renamed(out: Path, final: Path, external: ExternalParts) -> None:
    """Link ``out`` to the generation just renamed complete; removed if never linked."""
    try:
        # The rename must be on the disk before a link that names it can be.
        _flush(final.parent)
    except RetrieverError:
        _remove(final, external)
        raise
    _point(out, final)


def _point(out: Path, generation: Path) -> None:
    """Swap the link ``out`` to ``generation`` in one atomic rename."""
    if out.exists() and not out.is_symlink():
        raise RetrieverError(f"{out} is a folder, not an index link: choose another --out")
    link = out.parent / f".{out.name}.link-{os.getpid()}"
    try:
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(generation, out.parent))
    except OSError as exc:
        if exc.errno not in _REFUSED_WRITE:
            raise
        raise cannot_write(exc, out.parent) from None
    os.replace(link, out)
    try:
        _fsync_dir(out.parent)
    except OSError as exc:
        # Published already: say so, since the old index is no longer what is read.
        raise RetrieverError(
            f"{out} now points to {generation.name}, but {_flush_failure(out.parent, exc)}; "
            "the change may be lost if the machine stops: check the disk"
        ) from None


def remove_unread_generations(out: Path, external: ExternalParts) -> list[Path]:
    """Delete every generation of ``out`` but the current one that no reader holds."""
    current = current_generation(out)
    removed = []
    folder = generations_folder(out)
    if not folder.is_dir():
        return removed
    for generation in sorted(folder.iterdir()):
        if generation.name.endswith(_PARTIAL) or generation == current:
            continue
        if not generation.is_dir():
            continue
        with contextlib.suppress(BlockingIOError):
            with _locked(generation / READERS_FILE, fcntl.LOCK_EX | fcntl.LOCK_NB):
                if _remove(generation, external):
                    removed.append(generation)
    return removed


def _remove(generation: Path, external: ExternalParts) -> bool:
    """Delete a generation with its external parts; kept (for the next writer to retry)
    when an external part cannot be dropped, since the folder is its only record."""
    if (generation / EXTERNAL_FILE).exists():
        try:
            external.drop(generation / EXTERNAL_FILE)
        except RetrieverError as exc:
            logger.warning("keeping %s for now: %s", generation.name, exc)
            return False
    failures: list[str] = []
    shutil.rmtree(
        generation,
        onerror=lambda _, path, info: failures.append(
            f"{path}: {getattr(info[1], 'strerror', None) or info[1]}"
        ),
    )
    if generation.exists():
        # The index is fine (the current generation is another); only disk is held.
        logger.warning(
            "could not remove the old generation %s (%s); the index is unaffected, remove "
            "it by hand",
            generation,
            failures[0] if failures else "it is still there",
        )
        return False
    return True


def _publish_external(generation: Path, external: ExternalParts) -> None:
    if (generation / EXTERNAL_FILE).exists():
        try:
            external.publish(generation / EXTERNAL_FILE)
        except RetrieverError as exc:
            # The index is published and reads its own part by name; only the alias that
            # users outside this project query is stale. The next writer points it again.
            logger.warning("%s is published, but %s", generation.name, exc)


@contextlib.contextmanager
def _locked(path: Path, operation: int) -> Iterator[None]:
    try:
        handle = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield  # a generation without a readers file (being removed) has no readers
        return
    try:
        fcntl.flock(handle, operation)
        yield
    finally:
        os.close(handle)


class ReaderHold:
    """A shared lock on a generation, held while a searcher reads it."""

    def __init__(self, generation: Path) -> None:
        self._handle: int | None = None
        path = generation / READERS_FILE
        try:
            self._handle = os.open(path, os.O_RDONLY)
            fcntl.flock(self._handle, fcntl.LOCK_SH)
        except FileNotFoundError:
            self._handle = None  # a folder copied by hand, without the file: nothing to hold

    @classmethod
    def resolve(cls, path: Path) -> tuple[Path, ReaderHold]:
        """Resolve an index path to its generation and hold it.

        A writer may delete the generation between the resolve and the hold (it was
        unread a moment ago); then the path points to a newer one: resolve again.
        """
        for _ in range(10):
            folder = path.resolve()
            hold = cls(folder)
            if not path.is_symlink() or folder.parent != generations_folder(path.absolute()):
                return folder, hold  # a folder given directly, a hand-made link, or no index
            if hold._handle is not None:
                return folder, hold  # held: no writer deletes it now
            # Published generations always have READERS: it is gone because a writer is
            # deleting this (unread a moment ago) generation. The link points elsewhere.
            hold.release()
            if path.resolve() == folder:
                # Still current, and writers never delete the current generation: it was
                # removed by hand, and no retry can help.
                return folder, cls._unheld_current(path, folder)
        raise RetrieverError(f"{path} changed ten times while it was being opened; try again")

    @classmethod
    def _unheld_current(cls, path: Path, folder: Path) -> ReaderHold:
        if not folder.is_dir():
            raise not_an_index(path)
        # Only its READERS file is gone: read it unheld, like a folder copied by hand.
        return cls(folder)

    def release(self) -> None:
        if self._handle is not None:
            os.close(self._handle)
            self._handle = None

    def __del__(self) -> None:
        self.release()


def mark_readable(staging: Path) -> None:
    """Create the generation's readers file (part of every published generation)."""
    (staging / READERS_FILE).touch()


def check_destination(out: Path, overwrite: bool) -> None:
    """Refuse to build over a non-index, over an index without ``overwrite``, or inside
    an index's generations."""
    refuse_inside_index(out, "--out")
    if out.is_symlink():
        if not is_index_link(out) and not (out / "manifest.json").is_file():
            raise RetrieverError(
                f"{out} is a link to {os.readlink(out)}, which is not a retriever index; "
                "choose another --out"
            )
        if current_generation(out) is not None and not overwrite:
            raise RetrieverError(f"{out} already holds an index; pass --overwrite to replace it")
        return
    if out.exists():
        raise RetrieverError(
            f"{out} exists and is not a retriever index link; choose another --out"
            + (
                " (indexes built before generations were folders: delete it and rebuild)"
                if (out / "manifest.json").is_file()
                else ""
            )
        )


def _fsync_tree(folder: Path) -> None:
    """Flush a staging folder to the disk before it is published.

    A failed fsync (EIO) means the data may never reach the disk, so it aborts the
    publish: a current generation that is unreadable after a crash would lose the index.
    Only a filesystem that cannot fsync at all (EINVAL) is let through.
    """
    for path in sorted(folder.rglob("*"), reverse=True):  # a folder after its entries
        if not path.is_symlink() and (path.is_file() or path.is_dir()):
            _flush(path)
    _flush(folder)


def _flush(path: Path) -> None:
    """fsync ``path`` (a file or a folder); one :class:`RetrieverError` if that fails."""
    try:
        if path.is_dir():
            _fsync_dir(path)
            return
        try:
            handle = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return  # a scratch file its part removed meanwhile: nothing left to flush
        try:
            os.fsync(handle)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
        finally:
            os.close(handle)
    except OSError as exc:
        raise RetrieverError(
            f"{_flush_failure(path, exc)}; nothing was published and the previous index, if "
            "any, is intact: check the disk (dmesg) and rerun"
        ) from None


def _flush_failure(path: Path, exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "?")
    return f"cannot flush {path} to the disk: {exc.strerror or exc} (errno {exc.errno}, {name})"


def _fsync_dir(folder: Path) -> None:
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # a platform that cannot open folders cannot fsync them either
    try:
        os.fsync(handle)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(handle)

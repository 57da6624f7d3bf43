"""Download a zip over HTTP with resume and an MD5 check, and unzip it atomically.

Only the standard library: the bytes go to ``NAME.zip.part``, a broken transfer resumes
there with an HTTP ``Range`` request on the next run, and the file becomes ``NAME.zip``
only once its MD5 matches. Unzipping goes to a staging folder renamed into place, so a
dataset folder in the cache is always whole.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from retriever.core.errors import RetrieverError
from retriever.core.progress import progress_bar

logger = logging.getLogger(__name__)

_BLOCK = 1 << 20
# Seconds without a byte before a request or a read gives up (the part is kept).
_TIMEOUT_S = 60
_BYTES_BAR = {"unit": "B", "unit_scale": True, "unit_divisor": 1024}


def download_zip(
    url: str,
    part: Path,
    *,
    md5: str,
    size_hint: int | None,
    label: str,
    offline_hint: str,
) -> Path:
    """``url`` downloaded to ``part`` minus its ``.part`` suffix, its MD5 checked.

    What an earlier, broken run left in ``part`` is kept and resumed. A file whose MD5
    differs is removed and refused; an unreachable server is refused with ``offline_hint``.
    """
    done = part.with_suffix("")
    if done.is_file():  # an unzip left to do, or a zip placed by hand: checked all the same
        _verify(done, md5, f"the zip found at {done}")
        return done
    offset = part.stat().st_size if part.is_file() else 0
    response = _open(url, offset, label, offline_hint)
    if response is not None:
        with response:
            _receive(response, part, offset, label, size_hint)
    _verify(part, md5, f"the download of {label} from {url}")
    os.replace(part, done)
    return done


def _open(url: str, offset: int, label: str, offline_hint: str) -> Any:
    """The response to a GET of ``url`` from byte ``offset``; None when the server has no
    bytes past it (HTTP 416: the part is whole, only its check is left)."""
    headers = {"User-Agent": "retriever"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        logger.info("resuming %s from byte %s (%s)", label, f"{offset:,}", url)
    else:
        logger.info("downloading %s from %s", label, url)
    try:
        request = urllib.request.Request(url, headers=headers)
        return urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            return None
        raise RetrieverError(
            f"cannot download {label}: {url} answered HTTP {exc.code} {exc.reason}; {offline_hint}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        why = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        raise RetrieverError(f"cannot reach {url} ({why}); {offline_hint}") from None


def _receive(response: Any, part: Path, offset: int, label: str, size_hint: int | None) -> None:
    """Append the response's bytes to ``part``; refuse, keeping them, if it ends early."""
    start, total = _span(response, offset, size_hint, part)
    broken: BaseException | None = None
    # "wb" when the server sent the whole file (it ignored the Range): start afresh.
    with (
        part.open("ab" if start else "wb") as out,
        progress_bar(total=total, initial=start, desc=f"downloading {label}", **_BYTES_BAR) as bar,
    ):
        try:
            while block := response.read(_BLOCK):
                out.write(block)
                bar.update(len(block))
        except (OSError, http.client.HTTPException) as exc:
            broken = exc
    size = part.stat().st_size
    if broken is not None or (total is not None and size < total):
        from retriever.core.sizes import size_text

        why = f"{type(broken).__name__}: {broken}" if broken else "the connection closed early"
        of = f" of {size_text(total)}" if total else ""
        raise RetrieverError(
            f"the download of {label} stopped at {size_text(size)}{of} ({why}); rerun to "
            f"resume it from there ({part})"
        )


def _span(response: Any, offset: int, size_hint: int | None, part: Path) -> tuple[int, int | None]:
    """``(first byte sent, file size)``; the size from the headers, else ``size_hint``."""
    length = response.headers.get("Content-Length")
    if response.status != 206:
        return 0, int(length) if length and length.isdigit() else size_hint
    sent = response.headers.get("Content-Range", "")
    found = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", sent)
    if found is None or int(found[1]) != offset:
        part.unlink(missing_ok=True)
        raise RetrieverError(
            f"the server resumed the download of {part.name} at the wrong place "
            f"({sent!r} for byte {offset}); the partial file "
            "was removed: rerun to download it again"
        )
    return offset, int(found[2]) if found[2] != "*" else size_hint


def _verify(path: Path, md5: str, what: str) -> None:
    """Refuse, removing it, a file whose MD5 is not ``md5`` (``what`` names it)."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    if digest.hexdigest() != md5:
        path.unlink()
        raise RetrieverError(
            f"{what} is corrupted (MD5 {digest.hexdigest()}, "
            f"expected {md5}); it was removed: rerun to download it again"
        )


def unzip_folder(archive: Path, name: str, folder: Path) -> None:
    """Unzip ``archive``'s top folder ``name/`` to ``folder``, which appears whole or not at
    all (staged beside it, then renamed); the zip is removed afterwards."""
    root = folder.parent
    for stale in root.glob(f".{name}.unzipping-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    staging = root / f".{name}.unzipping-{os.getpid()}"
    try:
        try:
            with zipfile.ZipFile(archive) as zipped:
                _extract(zipped, staging, name)
        except zipfile.BadZipFile as exc:
            archive.unlink()
            raise RetrieverError(
                f"{archive} is not a readable zip ({exc}); it was removed: rerun"
            ) from None
        top = staging / name
        if not top.is_dir():
            raise RetrieverError(f"{archive} holds no {name}/ folder: not a BEIR dataset zip")
        os.rename(top, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    archive.unlink()
    logger.info("unzipped %s into %s", archive.name, folder)


def _extract(zipped: zipfile.ZipFile, staging: Path, name: str) -> None:
    # ZipFile.extract drops absolute paths and ".." parts: nothing lands outside staging.
    members = zipped.infolist()
    total = sum(member.file_size for member in members)
    with progress_bar(total=total, desc=f"unzipping {name}", **_BYTES_BAR) as bar:
        for member in members:
            zipped.extract(member, staging)
            bar.update(member.file_size)

"""The one FAISS module, imported only once the environment is known to hold one build.

faiss-cpu and faiss-gpu both install the module ``faiss``: with both present, whichever
was installed last wins, and any reinstall silently swaps them. Every module of the
package imports FAISS from here, so a missing or doubled install is one line, with the fix.
It also sets the one FAISS knob the package changes process-wide: when batched exhaustive
search switches to BLAS (see ``blas_threshold``).
"""

from __future__ import annotations

from importlib import metadata

from retriever.core.errors import RetrieverError

FAISS_DISTRIBUTIONS = ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu11", "faiss-gpu-cu12")
INSTALL_HINT = (
    "`pip install 'retriever[cpu]'` or, with an NVIDIA GPU, `pip install 'retriever[gpu]'`"
)


def check_faiss_install() -> None:
    """Refuse an environment holding two FAISS builds: both install the module ``faiss``,
    and which one wins depends on installation order."""
    installed = installed_faiss()
    if len(installed) > 1:
        raise RetrieverError(
            f"{' and '.join(installed)} are both installed and overwrite each other's "
            f"`faiss` module: `pip uninstall -y {' '.join(installed)}`, then {INSTALL_HINT}"
        )


def installed_faiss() -> list[str]:
    """The FAISS distributions installed, by name."""
    return sorted(name for name in FAISS_DISTRIBUTIONS if _installed(name))


def _installed(distribution: str) -> bool:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


# FAISS 1.15 scans exhaustively with its own SIMD loop, not BLAS, while queries x dim stays
# under this default: tuned on many cores, it keeps a 300-query batch at 288 dimensions on
# the loop, 5-7x slower than BLAS on two cores (benchmarks/blas_threshold.py), and makes
# EmbedFilter's smaller vectors slower to batch-search than the unfiltered ones. FAISS's
# own follow-up (PR 5109) scales the threshold with the threads: 800 per thread.
FAISS_DIMENSION_AWARE_DEFAULT = 128_000
BLAS_WORK_PER_THREAD = 800


def blas_threshold(current: int, threads: int) -> int:
    """The exhaustive-search BLAS threshold to use: thread-scaled where FAISS still has its
    1.15 default, ``current`` otherwise (another FAISS version's rule, or the user's)."""
    if current != FAISS_DIMENSION_AWARE_DEFAULT:
        return current
    return BLAS_WORK_PER_THREAD * max(1, threads)


check_faiss_install()
try:
    import faiss
except ImportError:
    raise RetrieverError(f"FAISS is not installed: {INSTALL_HINT}") from None

faiss.cvar.distance_compute_blas_threshold = blas_threshold(
    faiss.cvar.distance_compute_blas_threshold, faiss.omp_get_max_threads()
)

__all__ = ["faiss", "blas_threshold", "check_faiss_install", "installed_faiss"]

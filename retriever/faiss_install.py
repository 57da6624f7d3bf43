"""The one FAISS module, imported only once the environment is known to hold one build.

faiss-cpu and faiss-gpu both install the module ``faiss``: with both present, whichever
was installed last wins, and any reinstall silently swaps them. Every module of the
package imports FAISS from here, so a missing or doubled install is one line, with the fix.
"""

from __future__ import annotations

from importlib import metadata

from retriever.errors import RetrieverError

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


check_faiss_install()
try:
    import faiss
except ImportError:
    raise RetrieverError(f"FAISS is not installed: {INSTALL_HINT}") from None

__all__ = ["faiss", "check_faiss_install", "installed_faiss"]

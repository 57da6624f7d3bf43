"""numpy's BLAS threads, kept from starving the work that follows them on a few cores.

numpy's and scipy's OpenBLAS builds thread with pthreads, and after each multi-threaded
call their workers keep spinning for a while (about 0.1 s). On a 2-core machine they take
a core from whatever runs next: the next query's LLM forward, or a FAISS search. A search
for one query therefore runs its numpy products on one thread (they are matrix-vector
products, which gain little from a second thread), and benchmarks run numpy's BLAS on
one thread throughout so that the searches they time get every core. FAISS's own
OpenBLAS (OpenMP-threaded) and torch's thread pool are left alone.

The limit is process-wide while it holds (BLAS libraries have one thread count each):
numpy work in another thread meanwhile runs on one thread too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from threadpoolctl import ThreadpoolController


def pthread_blas() -> ThreadpoolController:
    """The pthreads-threaded BLAS libraries loaded now (numpy's, scipy's), to ``limit``.

    Finding them walks the loaded libraries (about 2 ms), so a caller that limits them
    often keeps the result; ``.limit(limits=1)`` then costs a few microseconds.
    """
    controller = ThreadpoolController()
    return controller.select(
        filepath=[
            lib.filepath
            for lib in controller.lib_controllers
            if getattr(lib, "threading_layer", None) == "pthreads"
        ]
    )


@contextmanager
def numpy_blas_on_one_thread() -> Iterator[None]:
    """Run numpy's and scipy's BLAS on one thread (usable as a decorator too)."""
    with pthread_blas().limit(limits=1):
        yield

"""Progress bars that follow the log level, as sentence-transformers' do.

A bar shows when its caller asks for one and the ``retriever`` logger reports INFO: the
command line without ``-q``, or Python code that set up logging at INFO. ``-q`` (WARNING)
or Python's default logging keep stderr quiet; transformers' own weight-loading bar is
silenced where models load (:func:`retriever.encode.models.load_model`).
"""

from __future__ import annotations

import logging
from typing import Any

from tqdm.auto import tqdm

_logger = logging.getLogger("retriever")


def progress_bar(iterable: Any = None, *, show: bool = True, **kwargs: Any) -> tqdm:
    return tqdm(iterable, disable=not (show and _logger.isEnabledFor(logging.INFO)), **kwargs)

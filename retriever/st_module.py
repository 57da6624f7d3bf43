"""The module every ``retriever export`` folder names: ``retriever.st_module.RetrieverEncoder``.

Defined in :mod:`retriever.export.st_module`; this path stays put because exported folders
record it, and because it has exactly three dotted parts (see
:data:`retriever.export.st_folder.MODULE_CLASS`)."""

from retriever.export.st_module import RetrieverEncoder

__all__ = ["RetrieverEncoder"]

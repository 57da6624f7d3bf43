"""How list-valued flags are written: commas, for index types too."""

from __future__ import annotations

import re
from typing import Any

from retriever.core.errors import RetrieverError

# Pieces of a FAISS factory string that need the next piece to make an index: transforms
# (PCA64, OPQ16_64, ITQ, RR64, L2norm, Pad128), coarse quantizers (IVF256, IVF4096_HNSW32,
# IMI2x8) and IDMap.
_PREFIX = re.compile(
    r"(PCAW?R?\d+|OPQ\d+(_\d+)?|ITQ\d*|RR\d+|L2norm|Pad\d+|IVF\d+(_\w+)?"
    r"|IMI\d+x\d+|IDMap2?)"
)
# Refinements re-rank what the index before them found, so they cannot stand alone.
_REFINEMENT = re.compile(r"(RFlat|Refine\(.*\))")

INDEX_TYPES_RULE = (
    "a comma inside a FAISS factory string stays in it: the piece after a transform or "
    "coarse quantizer (PCA.., OPQ.., ITQ, RR.., L2norm, IVF.., IMI.., IDMap) and a "
    "refinement (RFlat, Refine(..)) belong to the type before them, so Flat,IVF256,PQ16,"
    "HNSW32 is three types; write HNSW with another storage as HNSW32_SQ8"
)


def comma_list(value: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [item.strip() for item in value.split(",") if item.strip()]


def split_index_types(value: str) -> list[str]:
    """A comma list of index types whose FAISS factory strings hold commas themselves.

    ``"Flat,IVF64,Flat,HNSW32,milvus:Flat"`` -> ``["Flat", "IVF64,Flat", "HNSW32",
    "milvus:Flat"]`` (see INDEX_TYPES_RULE).
    """
    types: list[list[str]] = []
    for piece in _top_level_pieces(value):
        continues = types and (
            _PREFIX.fullmatch(_factory(types[-1][-1])) or _REFINEMENT.fullmatch(_factory(piece))
        )
        if continues:
            types[-1].append(piece)
        else:
            types.append([piece])
    return [",".join(pieces) for pieces in types]


def _factory(piece: str) -> str:
    """The FAISS part of ``milvus:IVF64``: a backend prefix does not change the grammar."""
    return piece.rpartition(":")[2]


def _top_level_pieces(value: str) -> list[str]:
    """Split on the commas outside parentheses (``Refine(OPQ16,PQ16)`` is one piece)."""
    pieces, depth, start = [], 0, 0
    for position, char in enumerate(value):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            pieces.append(value[start:position])
            start = position + 1
    pieces.append(value[start:])
    return [piece.strip() for piece in pieces if piece.strip()]


def numbers(value: str, kind: type, message: str) -> tuple[Any, ...]:
    """A comma list of ``kind`` values; ``message`` says what was expected."""
    try:
        return tuple(kind(item) for item in comma_list(value))
    except ValueError:
        raise RetrieverError(f"{message}, got {value!r}") from None

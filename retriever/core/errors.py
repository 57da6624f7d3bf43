"""The one exception type for mistakes a user can fix (bad input, wrong model, bad flags).

The CLI prints its message and exits non-zero without a traceback; anything else that
escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class RetrieverError(Exception):
    """A user-facing error whose message says what went wrong and what to do."""

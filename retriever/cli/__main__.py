"""``python -m retriever.cli``: the ``retriever`` command."""

import sys

from retriever.cli import main

sys.exit(main())

"""``python -m bnfuse`` runs the ``bnfuse`` command."""

from __future__ import annotations

import sys

from bnfuse.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m vcb_utils.index_cli``: the index's command line (now ``vcb_utils.search.cli``)."""

import sys

from vcb_utils.search.cli import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())

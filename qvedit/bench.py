"""``python -m qvedit.bench``: see ``qvedit.cli.bench`` (this file keeps the command where users type it)."""

import sys

from qvedit.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())

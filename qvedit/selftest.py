"""``python -m qvedit.selftest``: see ``qvedit.cli.selftest`` (this file keeps the command where users type it)."""

import sys

from qvedit.cli.selftest import main

if __name__ == "__main__":
    sys.exit(main())

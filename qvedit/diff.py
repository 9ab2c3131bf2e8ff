"""``python -m qvedit.diff RUN_A RUN_B``: see ``qvedit.confdiff``."""

import sys

from qvedit.confdiff import main

if __name__ == "__main__":
    sys.exit(main())

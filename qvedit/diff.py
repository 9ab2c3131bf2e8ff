"""``python -m qvedit.diff RUN_A RUN_B``: see ``qvedit.report.confdiff``."""

import sys

from qvedit.report.confdiff import main

if __name__ == "__main__":
    sys.exit(main())

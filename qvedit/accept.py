"""``python -m qvedit.accept SWEEP_DIR``: see ``qvedit.report.acceptance``."""

import sys

from qvedit.report.acceptance import main

if __name__ == "__main__":
    sys.exit(main())

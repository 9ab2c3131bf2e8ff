"""``python -m qvedit.accept SWEEP_DIR``: see ``qvedit.acceptance``."""

import sys

from qvedit.acceptance import main

if __name__ == "__main__":
    sys.exit(main())

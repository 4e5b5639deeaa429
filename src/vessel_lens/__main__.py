"""``python -m vessel_lens`` runs the CLI (used under ``torchrun``)."""

import sys

from vessel_lens.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m fastp2p.metrics``: the command of fastp2p.metrics.cli."""

import sys

from fastp2p.metrics.cli import main

if __name__ == "__main__":
    sys.exit(main())

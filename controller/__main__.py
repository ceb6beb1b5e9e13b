"""``python -m controller``: the ``swapvisor`` command (``controller.cli``)."""

import sys

from controller.cli.entry import main

if __name__ == "__main__":
    sys.exit(main())

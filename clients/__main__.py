"""``python -m clients``: the same as ``fedbus client``."""

import sys

from fedbus.cli import main

if __name__ == "__main__":
    sys.exit(main(["client", *sys.argv[1:]]))

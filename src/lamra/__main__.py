"""``python -m lamra ...``: the same command as the ``lamra`` console script."""

import sys

from lamra.cli import main

if __name__ == "__main__":
    sys.exit(main())

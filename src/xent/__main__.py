"""``python -m xent``: the same command line as the ``xent`` script."""

import sys

from xent.cli import main

if __name__ == "__main__":
    sys.exit(main())

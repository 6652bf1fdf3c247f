"""``python -m rlxf``: the same as the ``rlxf`` command."""
import sys

from rlxf.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m kernelexec.sandbox OPTIONS -- KERNEL COMMAND``: the wrapper (see wrapper.py)."""

import sys

from .wrapper import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m kernelexec`` is the ``kernelexec`` command."""

import sys

from .cli import main

sys.exit(main())

"""``python -m kernelexec.kernel -f CONNECTION_FILE``: the kernel program (see app.py)."""

from .app import main

main()

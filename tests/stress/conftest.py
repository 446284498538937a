"""The stress suite (docs/reliability.md): attacks on a real bridge with real kernels.

Every process this session starts inherits KERNELEXEC_STRESS_RUN, so that the leftover checks
(`stress_support.leftovers`) look only at our own processes, never at those of another test
run on the same machine.
"""

from __future__ import annotations

import os
import sys
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
for path in (HERE, os.path.dirname(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

os.environ.setdefault("KERNELEXEC_STRESS_RUN", uuid.uuid4().hex)

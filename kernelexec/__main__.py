"""``python -m kernelexec`` is the ``kernelexec`` command.

``python -m kernelexec serve`` (how Node-RED starts the bridge) forks the kernel template
before anything else is imported (kernelexec/handles/early.py): its imports are on a first
deploy's path.
"""

import sys

from .handles import early

channel = early.fork_template(sys.argv[1:])
if channel is not None:  # in the forked template
    from .handles import template

    template.run_forked(channel)  # never returns

from .cli import main  # noqa: E402  # after the fork: the template does not need it

sys.exit(main())

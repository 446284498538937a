"""The kernel template forked in ``python -m kernelexec serve``'s first milliseconds.

A first deploy waits for the kernel template's imports (~0.2 s, :mod:`.template`). Spawned
as a new interpreter, the template began them only after the bridge's Python had started,
imported its command line module and the template module (~0.04 s) and the new interpreter
had started in turn (~0.01 s). Forked instead, before ``kernelexec/__main__.py`` imports
anything, the template begins them ~0.01 s after the bridge's own start.

The fork is the same template as a spawned one (:func:`.template.run_forked`): the bridge's
child, a SOCK_SEQPACKET socket pair to it, the kernel environment (the bridge's secrets
removed), stdin on /dev/null, no other fd of the bridge (not the node's socket). Two
conditions, else the bridge spawns it as before (``template.spawn_early``):

- the command line has room for the forked kernels' own (they write it over the template's,
  so that ps shows them): Node-RED passes ``-X kernelexec_cmdline_room=`` and :data:`ROOM`
  spaces to the interpreter (an ``-X`` option, which any Python accepts and keeps in
  ``sys._xoptions``: a bridge of an older kernelexec ignores it, where it would refuse an
  unknown ``serve`` option);
- the template is wanted (Linux on a known machine, ``KERNELEXEC_KERNEL_TEMPLATE`` not 0).

Standard library only, and the cheap part of it: ``os``, ``sys`` and the ``_socket``
extension (the ``socket`` module alone costs ~6 ms here).
"""

from __future__ import annotations

import os
import sys

__all__ = ["ROOM", "ROOM_XOPTION", "fork_template", "take_forked"]

#: bytes of command line the forked kernels need for their own (python -m kernelexec.kernel
#: -f CONNECTION_FILE and its options)
ROOM = 1024
#: the interpreter's ``-X`` option whose value (spaces) gives the command line that room
ROOM_XOPTION = "kernelexec_cmdline_room"
#: the machines whose clone syscall kernel/clone.py knows (a template needs it), and
#: template.SWITCH: spelled here, as importing their homes would cost what this module saves
#: (tests/test_early_template.py checks they agree)
_MACHINES = ("x86_64", "aarch64")
_SWITCH = "KERNELEXEC_KERNEL_TEMPLATE"
#: (pid, the bridge's end of the socket pair) of a forked template not yet adopted
_forked: tuple[int, int] | None = None


def fork_template(argv: list[str]) -> int | None:
    """Fork the template now if ``argv`` (``serve ...``) allows it. In the bridge: None. In
    the child: its end of the socket pair, for :func:`.template.run_forked` (which never
    returns)."""
    global _forked
    if _forked is not None or not _wanted(argv) or _cmdline_room() < ROOM:
        return None
    import _socket

    # non-inheritable, as every socket Python makes: no exec'ed process gets them
    ours, theirs = (s.detach() for s in _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET))
    pid = os.fork()
    if pid == 0:
        os.close(ours)
        return theirs
    os.close(theirs)
    _forked = (pid, ours)
    return None


def take_forked() -> tuple[int, int] | None:
    """The forked template's pid and socket fd, handed over once (None if none was forked)."""
    global _forked
    forked, _forked = _forked, None
    return forked


def _wanted(argv: list[str]) -> bool:
    if argv[:1] != ["serve"] or ROOM_XOPTION not in sys._xoptions:
        return False
    if not sys.platform.startswith("linux") or os.uname().machine not in _MACHINES:
        return False
    return os.environ.get(_SWITCH, "1") != "0"


def _cmdline_room() -> int:
    """Bytes of this process's command line (/proc/PID/cmdline's area)."""
    try:
        with open("/proc/self/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return int(fields[46]) - int(fields[45])  # arg_end - arg_start (fields 49 and 48)
    except (OSError, IndexError, ValueError):
        return 0

"""The code that runs inside a kernel process: the runtime behind ``__kernelexec__``.

Everything in this package runs in the kernel, and only the standard library may be imported
here at module level, because a kernel's interpreter may be a managed environment or a stock
gateway kernel that has nothing but ipykernel (tests/test_kernel_side_modules.py imports each
module with every other import blocked). Two modules also need what every kernel has:
``app`` (the kernel program, ipykernel's IPKernelApp tuned: ``python -m kernelexec.kernel``)
and ``decoding`` (Jupyter message decoding, which the bridge uses as well).

The bridge imports its halves of the shared channels from here (``lane.RequestPipe``,
``resultpipe.ResultPipe``, ``blobs``, ``convert``, ``results``); nothing here imports the bridge.
A gateway kernel receives exactly this package, with ``kernelexec.errors`` and
``kernelexec.protocol`` (kernelexec/handles/gateway/bootstrap.py).
"""

"""Kernel handles: one running IPython kernel, local (jupyter_client) or on a gateway.

Import from the modules (``handles.base``, ``handles.local``, ...): this package imports
nothing, so that the kernel template (``python -m kernelexec.handles.template``, spawned first
thing by ``kernelexec serve``) starts without handles/base.py's imports.
"""

"""The in-kernel runtime: Node-RED function-node semantics for Python code in a kernel.

In a kernel, the worker's bootstrap cell runs ``__kernelexec__ = install(get_ipython())``
and then every request is a ``kernelexec_request`` answered by :meth:`Runtime.respond`
(kernelexec/kernel/app.py), or on a stock kernel the cell ``__kernelexec__.handle()``: the op
comes from the shell request's ``content["kernelexec"]`` and the answer goes into the reply
payload (docs/internals.md lists the ops and the RESULT shape).

In-process API (no kernel; used by the ``%%node`` magic and the tests)::

    from kernelexec.kernel.runtime import Runtime

    rt = Runtime(on_event=print)            # or Runtime(): events collect in rt.events
    rt.init(code="msg['payload'] *= 2\\nreturn msg", name="double", outputs=1)
    rt.setup("import math")                 # runs in rt.user_ns; raises SetupError
    result = rt.run_message({"payload": 21}, req_id="r1", timeout=5)
    result["outputs"] == [[{"payload": 42}]]
    rt.stop("")                             # stop code; raises UserCodeError
    rt.dispatch({"op": "run", "batch": [...]})  # any op of the contract, as the kernel
    rt.close()

``init``/``set_code`` raise CodeSyntaxError; ``run_message`` never raises: failures are in
``result["error"]``. ``Runtime(user_ns=ns)`` runs the code in an existing namespace;
``on_context(request) -> {"value", "error"}`` answers context requests (default: an
in-memory store). Timeouts use SIGALRM, so they apply when called from the main thread
(async code is timed out from any thread).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from ..errors import (
    ConversionError,
    ErrorObject,
    ExecutionTimeoutError,
    KernelexecError,
    SetupError,
    UserCodeError,
    own_error,
)
from ..protocol import RUNTIME_NAME, KernelOp
from . import blobs, coldfork
from .answers import AnswerSocket, answerable, delivered
from .convert import Encoder, from_json
from .guard import (
    Alarm,
    MessageTimeout,
    OutputCapture,
    clock_ticks,
    kill_started_since,
    signals_held,
)
from .lane import SEQ, RequestReader, answer_frame
from .nodeapi import (
    Channel,
    ContextStore,
    Env,
    KernelChannel,
    LocalChannel,
    Node,
    normalize_outputs,
    script_helpers,
)
from .resultpipe import ResultWriter
from .results import (
    Request,
    Result,
    done_event,
    empty_outputs,
    log_event,
    make_result,
    send_event,
    status_event,
)
from .wrapping import (
    CompiledCode,
    compile_node_code,
    compile_script,
    describe,
    make_function,
)

__all__ = ["Request", "Runtime", "install"]

_CURRENT: contextvars.ContextVar[Request | None] = contextvars.ContextVar(
    "kernelexec_current_message", default=None
)
_SCRIPT_OUTPUTS = ("result", "output_topic", "additional_data")
_UNSET: Any = object()


def user_error(exc: BaseException, cls: type[KernelexecError] = UserCodeError) -> ErrorObject:
    """The protocol error object for an exception raised by user code."""
    info = describe(exc)
    return cls(
        info["message"], type_name=info["type"], traceback=info["traceback"], line=info["line"]
    ).to_dict()


def _error_of(value: Any) -> ErrorObject | None:
    if value is None:
        return None
    own = own_error(value)
    if own is not None:
        return own.to_dict()
    if isinstance(value, BaseException):
        return user_error(value)
    return UserCodeError(str(value), type_name="NodeError").to_dict()


#: a message of a batch that an interrupt ended before it began
_NOT_RUN = "not run: an earlier message of the batch was interrupted"


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt inside (ipykernel's handler hooks do this around a shell
    message): the bridge's backstop interrupts an op of the lane or a direct request."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_IGN)


class NodeLoop:
    """The event loop async node code runs on: one thread, started on first use."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="kernelexec-node-loop", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 0.0) -> Any:
        """Run ``coro`` there and wait; MessageTimeout when ``timeout`` passes."""
        future = asyncio.run_coroutine_threadsafe(coro, self._ensure())
        try:
            return future.result(timeout if timeout > 0 else None)
        except concurrent.futures.TimeoutError:
            if future.done():
                raise  # the code's own TimeoutError
            self._cancel(future)
            raise MessageTimeout from None
        except BaseException:
            self._cancel(future)
            raise

    @staticmethod
    def _cancel(future: concurrent.futures.Future[Any]) -> None:
        future.cancel()
        with contextlib.suppress(BaseException):
            future.result(0.5)

    def close(self) -> None:
        """Stop the loop thread; tasks still pending are dropped."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(2.0)
        if not thread.is_alive():
            loop.close()


class Runtime:
    """The runtime of one node in one process (see the module docstring for the API)."""

    def __init__(
        self,
        shell: Any = None,
        *,
        user_ns: dict[str, Any] | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        on_context: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.shell = shell
        if shell is not None:
            self.user_ns: dict[str, Any] = shell.user_ns
            self.channel: Channel = KernelChannel(shell.kernel)
        else:
            self.user_ns = user_ns if user_ns is not None else {"__name__": "__node__"}
            self.channel = LocalChannel(on_event, on_context)
        self.node_id, self.node_name, self.outputs = "", "", 1
        self.workdir, self.blob_dir, self.fork = os.getcwd(), None, False
        self.pid = os.getpid()
        self.compiled: CompiledCode | None = None
        self._func: Callable[..., Any] | None = None
        self._results: ResultWriter | None = None
        self._lane: RequestReader | None = None
        self._answers: AnswerSocket | None = None
        self.direct_timeout = 0.0  # the pool's timeout, for messages the node sends here
        self._streamed: str | None = None  # the req_id of the last RESULT streamed
        self._ran = 0  # messages of the current batch whose code was started
        self._lock = threading.RLock()
        self._active: Request | None = None
        self._interrupted = False
        self._capture = OutputCapture(self._print_line, permanent=shell is not None)
        self._alarm = Alarm(permanent=shell is not None)
        self.loop = NodeLoop()
        self.node = Node(self)
        self.context, self.flow = ContextStore(self, "node"), ContextStore(self, "flow")
        self.global_, self.env = ContextStore(self, "global"), Env(self)
        self._helpers = script_helpers(self)

    # ------------------------------------------------------------------ properties
    @property
    def events(self) -> list[dict[str, Any]]:
        """Events published so far (in-process runtimes without ``on_event``)."""
        channel = self.channel
        return channel.events if isinstance(channel, LocalChannel) else []

    def current_request(self) -> Request | None:
        """The request of this context (tasks inherit it), else the one running now."""
        return _CURRENT.get() or self._active

    # ------------------------------------------------------------------------- ops
    def init(self, node: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Configure the node (node_id, name, outputs, code, workdir, blob_dir, fork)."""
        info = {**(node or {}), **fields}
        self.node_id = str(info.get("node_id") or "")
        self.node_name = str(info.get("name") or "")
        self.outputs = int(info.get("outputs", 1))
        self.workdir = str(info.get("workdir") or self.workdir)
        self.blob_dir = info.get("blob_dir") or None
        self.fork = bool(info.get("fork", False))
        if self.shell is not None:  # a kernel: RESULTs go down the bridge's pipe (resultpipe)
            self._results = ResultWriter.adopt(info.get("result_fd"))
            self._adopt_lane(info.get("request_fd"))
            self._connect_answers(info.get("answers"))
            self.direct_timeout = float(info.get("timeout") or 0.0)
        if self.shell is not None and os.path.isdir(self.workdir):
            os.chdir(self.workdir)
        self.user_ns.update(
            node=self.node, context=self.context, flow=self.flow, global_=self.global_, env=self.env
        )
        answer = self.set_code(str(info.get("code", "return msg")))
        if self.shell is not None and "result_fd" in info:  # the worker streams only if true
            answer["result_pipe"] = self._results is not None
        if self.shell is not None and "request_fd" in info:  # the worker uses the lane if true
            answer["lane"] = self._lane is not None
        if self.shell is not None and "answers" in info:
            answer["answers"] = self._answers is not None
            if not info.get("setup_follows"):
                self._take_direct_requests()
        return answer

    def _connect_answers(self, offer: Any) -> None:
        """Hand plain results to the node itself when it offers a socket (kernel/answers.py):
        hot kernels with a result pipe only."""
        if self._answers is not None:
            self._answers.close()
            self._answers = None
        if self._results is not None and not self.fork:
            self._answers = AnswerSocket.connect(offer, self.node_id, self._results.encode)

    def _adopt_lane(self, fd: Any) -> None:
        """Read the ops after init from the bridge's request pipe (kernelexec/kernel/lane.py)."""
        if self._lane is not None:
            self._lane.close()
        self._lane = RequestReader.adopt(fd, self._lane_request) if self._results else None

    def _lane_request(self, frame: dict[str, Any]) -> None:
        """One lane frame, on the kernel's main thread: the op's answer down the result
        pipe, as if it were a shell request (SIGINT interrupts it)."""
        request = frame.get("request")
        answer = None
        try:
            with _interruptible():
                answer = self.dispatch(request if isinstance(request, dict) else {})
        except KeyboardInterrupt:  # the worker's backstop interrupt, outside the code's guard
            answer = None
        if self._results is not None:
            self._results.answer(answer_frame(frame.get(SEQ), answer))
        self.after_answer(request)

    def _direct_request(self, frame: dict[str, Any]) -> None:
        """A message the node wrote to the answer socket itself (kernel/answers.py): a batch
        of one, its batch frame marked direct so that the bridge accounts for it."""
        req_id, stream = frame.get("req_id"), self._results
        if not isinstance(req_id, str) or stream is None:
            return
        item = {"req_id": req_id, "msg": frame.get("msg"), "timeout": self.direct_timeout}
        self._streamed = None
        result: Result | None = None
        try:
            with _interruptible():
                self.run_batch([item], stream, direct=True)
        except KeyboardInterrupt:  # the bridge's backstop, outside the code's guard
            text = f"interrupted after the timeout ({self.direct_timeout:g} s)"
            result = self._interrupted_result(req_id, text)
        except Exception as exc:  # a bug here must still end the message
            error = KernelexecError(f"the kernel could not run this message: {exc!r}")
            result = self._result(Request(req_id, error=error.to_dict()), None, "", 0.0)
        if result is not None and self._streamed != req_id:
            with contextlib.suppress(OSError):  # the bridge is gone: the node has the result
                stream.result(self._deliver(item, result))

    def after_answer(self, request: Any) -> None:
        """An op's answer went out (the lane, or a kernelexec_request's reply): in cold mode,
        after a ``run``, the next message's child is forked now, so that a message that
        follows at once finds it forked (coldfork.fork_ahead)."""
        if self.fork and isinstance(request, dict) and request.get("op") == KernelOp.RUN:
            coldfork.fork_ahead(self)

    def prefork(self) -> dict[str, Any]:
        """Cold mode: fork the next message's child now, while the node is idle."""
        if self.fork:
            coldfork.prefork(self)
        return {"ok": True}

    def set_code(self, code: str) -> dict[str, Any]:
        """Compile new message code (setup state kept). Raises CodeSyntaxError."""
        if self.fork:
            coldfork.discard_spare()  # forked with the old code
        compiled = compile_node_code(code, self.node_name)
        func = make_function(compiled, self.user_ns) if compiled.style == "function" else None
        self.compiled, self._func = compiled, func
        return {"ok": True, "style": compiled.style, "async": compiled.is_async}

    def setup(self, code: str) -> dict[str, Any]:
        """Run setup code in the user namespace. Raises SetupError / CodeSyntaxError."""
        self._run_script(code, "setup", SetupError)
        self._take_direct_requests()
        return {"ok": True}

    def _take_direct_requests(self) -> None:
        """The setup ran (or none follows init): the node may write messages here itself."""
        if self._answers is not None:
            self._answers.serve(self._direct_request)

    def stop(self, code: str) -> dict[str, Any]:
        """Run stop code in the user namespace. Raises UserCodeError / CodeSyntaxError."""
        self._run_script(code, "stop", UserCodeError)
        return {"ok": True}

    def _run_script(self, code: str, part: str, error: type[KernelexecError]) -> None:
        if not code.strip():
            return
        compiled = compile_script(code, self.node_name, part)
        self._capture.start()
        try:
            self._exec(compiled, self.user_ns, 0.0)
        except (Exception, MessageTimeout, KeyboardInterrupt) as exc:
            info = user_error(exc, error)
            raise error(
                info["message"],
                type_name=info["type"],
                traceback=info["traceback"],
                line=info["line"],
            ) from None
        finally:
            text = self._capture.stop()
            if text:
                self.channel.event(log_event("info", text.rstrip("\n")))

    def dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run one op of the contract; returns its answer, never raises."""
        op = request.get("op")
        try:
            if op == KernelOp.RUN:
                return self._run_op(request)
            if op == KernelOp.INIT:
                return self.init(request.get("node") or {})
            if op == KernelOp.CODE:
                return self.set_code(str(request.get("code", "")))
            if op == KernelOp.SETUP:
                return self.setup(str(request.get("code", "")))
            if op == KernelOp.STOP:
                return self.stop(str(request.get("code", "")))
            if op == KernelOp.PREFORK:
                return self.prefork()
            expected = ", ".join(str(known) for known in KernelOp)
            message = f"unknown kernelexec op {op!r}; expected one of {expected}"
            return {"error": KernelexecError(message).to_dict()}
        except Exception as exc:
            own = own_error(exc)
            if own is not None:
                return {"error": own.to_dict()}
            return {"error": user_error(exc, KernelexecError)}

    def respond(self) -> dict[str, Any]:
        """The answer to the kernel's current shell request (its ``content["kernelexec"]``):
        what a ``kernelexec_request`` replies (kernelexec/kernel/app.py)."""
        channel = self.channel
        parent = channel.remember() if isinstance(channel, KernelChannel) else {}
        request = (parent.get("content") or {}).get("kernelexec") or {}
        return self.dispatch(request)

    def handle(self) -> None:
        """The kernel cell ``__kernelexec__.handle()``: the same answer, into the
        execute_reply's payload (kernels without ``kernelexec_request``)."""
        answer = self.respond()
        self.shell.payload_manager.write_payload({"source": "kernelexec", "data": answer})

    async def handle_async(self) -> None:
        """``await __kernelexec__.handle_async()``: the same (async code always runs on the
        runtime's own event loop thread)."""
        self.handle()

    # ------------------------------------------------------------------- messages
    def run_batch(
        self,
        batch: list[dict[str, Any]],
        stream: ResultWriter | None = None,
        *,
        direct: bool = False,
    ) -> list[Result]:
        """RESULTs for [{req_id, msg, timeout, blobs}] in order (``blobs``: the msg's blob
        table); after an interrupt, the rest fail with TIMEOUT without running. With
        ``stream`` each RESULT goes down the pipe as it is complete instead (none is
        returned), and after an interrupt the batch ends: the bridge runs the rest again
        (kernelexec/kernel/resultpipe.py)."""
        self._interrupted = False
        self._ran = 0
        results: list[Result] = []
        if stream is not None and batch:
            stream.batch(batch[0].get("req_id"), direct=direct)
        for item in batch:
            req_id, timeout = item.get("req_id"), float(item.get("timeout") or 0)
            if self._interrupted and stream is not None:
                break
            if self._interrupted:
                results.append(self._interrupted_result(req_id))
                continue
            self._ran += 1
            result = self.run_message(item.get("msg"), req_id, timeout, item.get(blobs.TABLE))
            if stream is not None:
                stream.result(self._deliver(item, result))
                self._streamed = req_id
            else:
                results.append(result)
        return results

    def _deliver(self, item: dict[str, Any], result: Result) -> Result:
        """The node gets a plain result first, straight from here (kernel/answers.py); the
        RESULT for the result pipe."""
        answers = self._answers
        if answers is not None and answerable(item, result) and answers.deliver(result):
            return delivered(result)
        return result

    def _run_op(self, request: dict[str, Any]) -> dict[str, Any]:
        stream = self._results if request.get("stream") else None
        batch = request.get("batch") or []
        results = self.run_batch(batch, stream)
        if stream is None:
            return {"results": results, "streamed": False}
        return {"results": [], "streamed": True, "ran": self._ran}

    def run_message(
        self, msg: Any, req_id: str | None = None, timeout: float = 0.0, table: Any = None
    ) -> Result:
        """Run the node code on one msg (in a forked child in cold mode); the RESULT.
        ``table``: the blob table that came with msg (its blob markers index it)."""
        if self.compiled is None:
            self.init()
        if self.fork:
            return coldfork.run_in_child(self, msg, req_id, timeout, table)
        return self.run_here(msg, req_id, timeout, table)

    async def run_message_async(
        self, msg: Any, req_id: str | None = None, timeout: float = 0.0
    ) -> Result:
        """run_message for callers inside an event loop (a notebook cell)."""
        return self.run_message(msg, req_id, timeout)

    def run_here(
        self, msg: Any, req_id: str | None, timeout: float, table: Any = None
    ) -> Result:
        """Run one msg in this process."""
        req = Request(req_id, clock_ticks())
        self._capture.start()
        token = _CURRENT.set(req)
        self._active = req
        outputs: list[list[Any]] | None = None
        exec_ms = 0.0
        try:
            started = time.perf_counter()
            try:
                value = self._call(self._decode(msg, req, table), req, timeout)
            finally:
                exec_ms = (time.perf_counter() - started) * 1000.0
            outputs = self._encode_outputs(req, value)
        except BaseException as exc:
            req.error = self._failure(exc, req, timeout)
        finally:
            stdout = self._capture.stop()
            _CURRENT.reset(token)
            self._active = None
            with self._lock:
                req.finished = True
        return self._result(req, outputs, stdout, exec_ms)

    def _decode(self, msg: Any, req: Request, table: Any) -> dict[str, Any]:
        if not isinstance(msg, dict):
            message = f"msg must be an object (a dict), not {type(msg).__name__}"
            raise ConversionError(message, type_name="TypeError")
        decoded: dict[str, Any] = from_json(
            msg, "msg", req.inputs, table=table, req_id=req.req_id, directory=self.blob_dir
        )
        return decoded

    def _drop_blobs(self, req: Request) -> None:
        """A failed request's output files go, but those node.send() already handed over."""
        if req.req_id is not None:
            blobs.remove_request_blobs(
                req.req_id, directory=self.blob_dir, pid=self.pid, keep=req.handed
            )

    def _failure(self, exc: BaseException, req: Request, timeout: float) -> ErrorObject:
        if isinstance(exc, (MessageTimeout, KeyboardInterrupt)):
            kill_started_since(req.ticks)
            self._drop_blobs(req)
            return self._timeout_error(exc, timeout)
        self._drop_blobs(req)
        own = own_error(exc)
        if own is not None:
            return own.to_dict()
        if isinstance(exc, SystemExit):
            return UserCodeError(
                f"the code called exit({exc.code!r})", type_name="SystemExit"
            ).to_dict()
        return user_error(exc)

    def _timeout_error(self, exc: BaseException, timeout: float) -> ErrorObject:
        if isinstance(exc, KeyboardInterrupt):
            self._interrupted = True
            message = "interrupted: the message ran longer than the worker allowed"
        else:
            message = f"the code ran longer than its timeout of {timeout:g} s and was stopped"
        info = describe(exc)
        return ExecutionTimeoutError(
            message, type_name="TimeoutError", traceback=info["traceback"], line=info["line"]
        ).to_dict()

    def _interrupted_result(self, req_id: str | None, message: str = _NOT_RUN) -> Result:
        error = ExecutionTimeoutError(message, type_name="TimeoutError")
        req = Request(req_id, error=error.to_dict())
        return self._result(req, None, "", 0.0)

    def _result(
        self, req: Request, outputs: list[list[Any]] | None, stdout: str, exec_ms: float
    ) -> Result:
        uses_done = self.compiled is not None and self.compiled.uses_done
        result = make_result(
            req.req_id,
            outputs if outputs is not None else empty_outputs(self.outputs),
            logs=req.logs,
            stdout=stdout,
            error=req.error,
            done=req.error is not None or not uses_done,
            sent=req.sent,
            exec_ms=exec_ms,
        )
        result["status_events"] = req.statuses  # the worker's, dropped before the protocol
        if req.table and req.error is None:
            result["blobs"] = req.table  # blobs.TABLE (tests/test_protocol_spec.py)
        return result

    # ------------------------------------------------------------------ execution
    def _call(self, msg: dict[str, Any], req: Request, timeout: float) -> Any:
        compiled = self.compiled
        assert compiled is not None
        node = Node(self, req)
        if self._func is not None:
            args = (msg, node, self.context, self.flow, self.global_, self.env)
            if compiled.is_async:
                return self.loop.run(self._func(*args), timeout)
            return self._guarded(self._func, args, timeout)
        return self._run_script_style(compiled, msg, req, node, timeout)

    def _guarded(self, func: Callable[..., Any], args: tuple[Any, ...], timeout: float) -> Any:
        if timeout <= 0 or not self._alarm.arm(timeout):
            return func(*args)
        try:
            return func(*args)
        finally:
            self._alarm.disarm()

    def _exec(self, compiled: CompiledCode, namespace: dict[str, Any], timeout: float) -> None:
        if compiled.is_async:
            self.loop.run(eval(compiled.code, namespace), timeout)
        else:
            self._guarded(exec, (compiled.code, namespace), timeout)

    def _run_script_style(
        self,
        compiled: CompiledCode,
        msg: dict[str, Any],
        req: Request,
        node: Node,
        timeout: float,
    ) -> Any:
        namespace = dict(self.user_ns)
        for name in _SCRIPT_OUTPUTS:
            namespace.pop(name, None)
        namespace.update(self._helpers)
        namespace.update(
            msg=msg,
            payload=msg.get("payload"),
            topic=msg.get("topic"),
            node_id=self.node_id,
            execution_id=req.req_id,
            node=node,
        )
        self._exec(compiled, namespace, timeout)
        result = namespace.get("result", _UNSET)
        if result is _UNSET:
            return None
        out = namespace.get("msg")
        out = out if isinstance(out, dict) else msg
        out["payload"] = result
        if "output_topic" in namespace:
            out["topic"] = namespace["output_topic"]
        if "additional_data" in namespace:
            out["additionalData"] = namespace["additional_data"]
        return out

    def _encoder(self, req: Request | None, req_id: str | None) -> Encoder:
        inputs = req.inputs if req is not None else None
        return Encoder(req_id, directory=self.blob_dir, pid=self.pid, inputs=inputs)

    def _encode_outputs(self, req: Request, value: Any) -> list[list[Any]]:
        outputs = normalize_outputs(value, self.outputs)
        if value is None:
            return outputs
        encoder = self._encoder(req, req.req_id)
        encode = encoder.encode
        try:
            return [[encode(m) for m in output] for output in outputs]
        finally:
            req.table = encoder.table

    # --------------------------------------------------------------------- events
    def emit_send(self, req: Request | None, outputs: list[list[Any]]) -> None:
        live = req is not None and not req.finished
        req_id = req.req_id if live and req is not None else None
        encoder = self._encoder(req, req_id)
        encode = encoder.encode
        try:
            encoded = [[encode(m) for m in output] for output in outputs]
        except BaseException:
            blobs.remove_table(encoder.table, req_id, self.blob_dir)
            raise
        # Publishing the event and recording its files as handed over is one step: a timeout
        # between the two would make the failure path remove files their reader is told of.
        held = signals_held() if encoder.table else contextlib.nullcontext()
        with held, self._lock:
            live = req is not None and not req.finished
            if encoder.table and req_id is not None and not live:  # it ended meanwhile
                encoder.table = blobs.rename_table(
                    encoder.table, req_id, None, self.blob_dir, self.pid
                )
            self.channel.event(send_event(req_id if live else None, encoded, encoder.table))
            if live and req is not None:
                req.sent += 1
                req.handed.update(str(entry[blobs.NAME]) for entry in encoder.table)

    def emit_done(self, req: Request | None, error: Any = None) -> None:
        req_id = req.req_id if req is not None else None
        self.channel.event(done_event(req_id, _error_of(error)))

    def emit_status(self, req: Request | None, status: dict[str, Any]) -> None:
        """A status event at once; during a request it carries the req_id, so that the worker
        delivers it before the request's result (it strips the req_id then)."""
        encoded = Encoder(use_blobs=False).encode(status, "status")
        with self._lock:
            running = req is not None and not req.finished
            if running and req is not None:
                req.statuses += 1
            self.channel.event(status_event(encoded, req.req_id if running and req else None))

    def emit_log(self, req: Request | None, level: str, text: Any) -> None:
        line = text if isinstance(text, str) else str(text)
        with self._lock:
            if req is not None and not req.finished:
                req.logs.append({"level": level, "text": line})
                return
        req_id = req.req_id if req is not None else None
        self.channel.event(log_event(level, line, req_id))

    def emit_error(self, req: Request | None, text: Any, for_msg: bool) -> None:
        """node.error: a log; with a msg, also the request's error (or a done event)."""
        error = _error_of(text)
        if not for_msg or req is None or error is None:
            self.emit_log(req, "error", text)
            return
        with self._lock:
            if not req.finished:
                req.logs.append({"level": "error", "text": error["message"]})
                req.error = req.error or error
                return
        self.channel.event(done_event(req.req_id, error))

    def _print_line(self, level: str, text: str) -> None:
        req = self.current_request()
        self.emit_log(req, level, text)

    # ------------------------------------------------------------------- life cycle
    def become_child(self, channel: Channel) -> None:
        """In a forked cold-mode child: talk through ``channel``, fresh locks and loop."""
        self.channel = channel
        self.fork = False
        self._lock = threading.RLock()
        self.loop = NodeLoop()
        self._alarm = Alarm()

    def note_interrupted(self) -> None:
        """A SIGINT stopped the message (in the kernel, or in its cold child's parent): the
        batch's remaining messages are reported as interrupted, not run."""
        self._interrupted = True

    def close(self) -> None:
        """Stop the event loop thread and the lane; put sys.stdout/sys.stderr back."""
        self.loop.close()
        if self._lane is not None:
            self._lane.close()
            self._lane = None
        self._capture.uninstall()


def install(shell: Any) -> Runtime:
    """Create the runtime of a kernel and put it in the user namespace as ``__kernelexec__``."""
    previous = shell.user_ns.get(RUNTIME_NAME)
    if isinstance(previous, Runtime):
        previous.close()
    runtime = Runtime(shell)
    shell.user_ns[RUNTIME_NAME] = runtime
    return runtime

// The runtime of one kernelexec node: it speaks the bridge protocol for its node_id and maps
// the answers onto Node-RED's send/done/status/error/context. Kernel decisions live in Python.
//
// Life cycle:  waiting (no pool yet: messages queue) -> ready (messages run) -> closed
//              any state -> failed (bridge or pool error: messages fail with done(err))
"use strict";
const crypto = require("crypto");
const bridges = require("./bridge");
const codec = require("./codec");
const { t } = require("./i18n");
const { PoolStatus } = require("./status");
const { BlobSpare } = require("./blob_spare");
const { contextOp } = require("./context");
const nodeops = require("./nodeops");
const { CONTEXT_OPS, POOL_STATES } = require("./protocol");

// What a Runner can do with a message now: wait (the bridge or the pool is starting), send it
// (ready), or fail it at once (failed: the bridge or the pool reported an error).
const RunnerState = Object.freeze({ WAITING: "waiting", READY: "ready", FAILED: "failed" });

const CLOSE_WAIT_MS = 6000;   // with the bridge's stop below, within Node-RED's 15 s close timeout
const KEPT_LINGER_MS = 10000;   // late node.send() of a finished message still gets msg.res back
const REQ_PREFIX = crypto.randomBytes(3).toString("hex");
let reqCounter = 0;
const NO_FILES = Object.freeze([]);
const DIRECT_MAX = 1 << 20;   // characters of a direct request's JSON: larger ones go to the bridge

/** An Error that Node-RED's Catch node reports as "<PythonType>: message (line N)". */
function toError(error, fallbackCode) {
    const err = new Error(error && error.message ? error.message : String(error));
    err.name = (error && error.type) || "Error";
    err.code = (error && error.code) || fallbackCode || "INTERNAL";
    if (error && error.line) {
        err.message += " " + t("kernelexec.error.atLine", { line: error.line });
    }
    err.stack = (error && error.traceback) || `${err.name}: ${err.message}`;
    return err;
}

/**
 * What done(err) gets for a failed message: node.error("text", msg) and node.done("text") in
 * Python (error type NodeError) give the text itself, as in the function node, so that a Catch
 * node reads msg.error.message === "text"; exceptions give an Error (see toError).
 */
function doneError(error) {
    return error && error.type === "NodeError" && typeof error.message === "string" ? error.message : toError(error);
}

/**
 * Make `msg` fit for a Catch node, in place. Node-RED hands a Catch node a copy of the failed
 * message (RED.util.cloneMessage); when the copy throws (a payload nested 100,000 deep, a getter
 * that throws), the error report itself failed and the message vanished ("Error delivering
 * message"). Top-level properties that cannot be copied are removed; their names are returned.
 */
function makeReportable(msg, clone) {
    if (typeof clone !== "function" || msg === null || typeof msg !== "object") {
        return [];
    }
    try {
        clone(msg);
        return [];
    } catch (_) {
        // property by property, below
    }
    const dropped = [];
    for (const key of Object.keys(msg)) {
        if (key === "_msgid") {
            continue;
        }
        try {
            clone({ [key]: msg[key] });
        } catch (_) {
            dropped.push(key);
        }
    }
    for (const key of dropped) {
        try {
            delete msg[key];
        } catch (_) {
            // a non-configurable property: nothing more to do
        }
    }
    return dropped;
}

/** The error of a message that failed on its way in (before it reached the bridge). */
function inputError(err, dropped) {
    const name = (err && err.name) || "Error";
    let message;
    if (err && err.name === "CodecError") {
        message = err.message;   // already names the value and what to do
    } else {
        const reason = err && err.message ? err.message : String(err);
        message = t("kernelexec.error.input", { error: `${name}: ${reason}` });
    }
    if (dropped.length > 0) {
        message += " " + t("kernelexec.error.inputDropped", { props: dropped.map((k) => "msg." + k).join(", ") });
    }
    return toError({ code: (err && err.code) || "CONVERSION_ERROR", type: name, message });
}

function queueFull(limit) {
    return toError({ code: "QUEUE_FULL", type: "Error", message: t("kernelexec.error.queueFull", { limit }) });
}

function closedError() {
    return toError({ code: "POOL_CLOSED", type: "Error", message: t("kernelexec.error.closed") });
}

class Runner {
    /**
     * @param node    the Node-RED node
     * @param config  the pool configuration (spec.json config_fields names)
     * @param options {bridge: {python}|{url, token}, stdoutToMsg}
     */
    constructor(node, config, options) {
        this.node = node;
        this.id = node.id;
        this.config = config;
        this.options = options;
        this.bridge = null;
        this.state = RunnerState.WAITING;
        this.failure = null;
        this.waiting = [];
        this.inflight = new Map();
        this.closing = null;
        this.delivery = Promise.resolve();
        this.deliveries = 0;   // deliveries waiting in the chain (reading blob files)
        this.kept = new Map();   // _msgid -> {props, active, timer}: what stayed on the JS side
        this.releasing = false;   // releaseResults() is running
        this.direct = null;       // the request written to the kernel itself (lib/answers.js)
        this.behind = [];         // messages that came while it ran: they wait for its result
        this.noDirect = false;    // flushing several of them: they go to the bridge together
        // KERNELEXEC_NO_DIRECT=1: every message goes to the bridge (results may still come from
        // the kernel: KERNELEXEC_NO_ANSWERS turns that off too), to compare or troubleshoot
        this.directAllowed = !process.env.KERNELEXEC_NO_DIRECT;
        this.status = new PoolStatus(node, config.mode);
        this.links = new nodeops.LinkCalls(node);
        // hot mode keeps one warm blob file for the next large Buffer (lib/blob_spare.js)
        this.spare = (config.mode || "hot") === "hot" ? new BlobSpare(codec.SYNC_IO_MAX) : null;
    }

    start() {
        this.status.starting();
        this.bridge = bridges.register(this, this.options.bridge);
    }

    // ---- bridge events -------------------------------------------------------------

    bridgeUp(bridge) {
        if (this.closing) {
            return;
        }
        this.bridge = bridge;
        this.state = RunnerState.WAITING;
        this.failure = null;
        bridge.send({ type: "configure", node_id: this.id, config: this.config });
    }

    /** The bridge is setting up its Python (python_setup): show what it does. */
    bridgeProgress(text) {
        if (!this.closing) {
            this.status.progress(text);
        }
    }

    bridgeDown(err) {
        const behind = this.behind;   // in flight as far as the flow knows: they fail with them
        this.behind = [];
        this.failAll(err);
        for (const item of behind) {
            item.done(err);
        }
        if (this.closing) {
            return;
        }
        this.state = RunnerState.FAILED;
        this.failure = err;
        this.status.error(err.message);
        if (err.code !== "BRIDGE_LOST") {
            this.failWaiting(err);
            this.reportOnce(err);
        } else {
            this.state = RunnerState.WAITING;
        }
    }

    reportOnce(err) {
        if (this.reported !== err.message) {
            this.reported = err.message;
            this.node.error(err.message);
        }
    }

    frame(frame) {
        const handler = FRAME_HANDLERS[frame.type];
        if (handler) {
            handler.call(this, frame);
        }
    }

    // ---- frames ----------------------------------------------------------------------

    onPoolState(frame) {
        this.status.pool(frame);
        this.kernelUid = frame.kernel_uid;
        if (frame.state === POOL_STATES.READY) {
            this.state = RunnerState.READY;
            this.failure = null;
            this.reported = null;
            this.flushWaiting();
        } else if (frame.state === POOL_STATES.ERROR) {
            const err = toError(frame.error || { message: frame.detail || "pool error" }, "INTERNAL");
            this.state = RunnerState.FAILED;
            this.failure = err;
            this.failWaiting(err);
            this.reportOnce(err);
        } else if (frame.state === POOL_STATES.CLOSED && this.closing) {
            this.closing.resolve();
        } else if (frame.state !== POOL_STATES.CLOSED) {
            this.state = RunnerState.WAITING;
        }
    }

    /**
     * A result frame, from the bridge or from the kernel itself (the answer socket,
     * lib/answers.js): the first of a request counts, a later one is dropped (the kernel
     * answered, then died before the bridge heard of it). With one worker the results leave
     * in the order the messages came, as they did when the bridge alone sent them: the kernel
     * runs them in that order, but an answer can overtake a result the bridge is still
     * sending (after node.send frames, or with blob files) and the reverse, so a result waits
     * until every earlier message has its own. Several workers promise no order (keepOrder
     * pools get no answers: the bridge orders their results).
     */
    onResult(frame) {
        const req = this.inflight.get(frame.req_id);
        if (!req || req.result || req.pending) {
            codec.discardBlobs(frame, this.bridge && this.bridge.blobDir);
            return;
        }
        if (this.config.workers > 1) {
            this.takeResult(req, frame);
            return;
        }
        req.pending = frame;
        this.releaseResults();
    }

    /** The results no earlier message is waiting before, in order (see onResult). */
    releaseResults() {
        if (this.releasing) {
            return;
        }
        this.releasing = true;
        try {
            // in the order they came; the Map itself, not a copy: this runs for every result,
            // and takeResult may delete the entry it is on (a Map's iteration allows that)
            for (const req of this.inflight.values()) {
                if (req.result || req.finished) {
                    continue;
                }
                if (!req.pending) {
                    return;
                }
                const frame = req.pending;
                req.pending = null;
                this.takeResult(req, frame);
            }
        } finally {
            this.releasing = false;
        }
    }

    takeResult(req, frame) {
        req.result = true;
        // node.error(text, msg) in Python fails the request: its text is both a log line and
        // the result's error; report it once, through done(err).
        const failure = frame.error ? frame.error.message : null;
        if (frame.logs && frame.logs.length > 0) {
            this.logs(failure === null ? frame.logs : frame.logs.filter((e) => !(e.level === "error" && e.text === failure)));
        }
        if (frame.status && frame.status.length > 0) {
            for (const status of frame.status) {
                this.status.user(status);
            }
        }
        if (frame.stdout) {
            this.node.log(frame.stdout.replace(/\n$/, ""));
        }
        if (frame.error) {
            codec.discardBlobs(frame, this.bridge && this.bridge.blobDir);
        }
        const complete = () => {
            if (frame.error) {
                this.finish(req, doneError(frame.error));
            } else if (frame.done !== false || req.doneFrame) {
                this.finish(req, req.doneFrame && req.doneFrame.error ? doneError(req.doneFrame.error) : null);
            }
        };
        // after the request's earlier send frames (deliveries keep the order)
        let pending;
        try {
            pending = this.deliver(req, frame.error ? null : frame.outputs, frame.stdout, frame);
        } catch (err) {
            this.finish(req, err);
            return;
        }
        if (pending) {
            pending.then(complete, (err) => this.finish(req, err));
        } else {
            complete();
        }
    }

    onSend(frame) {
        const req = frame.req_id ? this.inflight.get(frame.req_id) : null;
        const report = (err) => this.node.error(err, req ? req.msg : undefined);
        try {
            const pending = this.deliver(req, frame.outputs, null, frame);
            if (pending) {
                pending.catch(report);
            }
        } catch (err) {
            report(err);
        }
    }

    onDone(frame) {
        const req = this.inflight.get(frame.req_id);
        if (!req) {
            if (frame.error) {
                this.node.error(doneError(frame.error));   // node.error(text, msg) after the message ended
            }
            return;
        }
        req.doneFrame = frame;
        if (req.result) {
            this.delivery.then(() => this.finish(req, frame.error ? doneError(frame.error) : null));
        }
    }

    onStatus(frame) {
        this.status.user(frame.status);
    }

    onLog(frame) {
        this.logs([frame]);
    }

    onError(frame) {
        // while closing, the bridge may answer for a pool it already dropped: say what happened
        const err = this.closing ? closedError() : toError(frame.error, "INTERNAL");
        const req = frame.req_id ? this.inflight.get(frame.req_id) : null;
        if (req) {
            this.finish(req, err);
        } else if (this.closing) {
            this.closing.resolve();
        } else {
            this.node.error(err.message);
        }
    }

    onClosed() {
        if (this.closing) {
            this.closing.resolve();
        }
    }

    onContextRequest(frame) {
        const reply = (value, error) => this.bridge && this.bridge.send({
            type: "context_reply", ctx_id: frame.ctx_id, value: value === undefined ? null : value, error: error || null,
        });
        if (frame.op === CONTEXT_OPS.ENV || frame.op === CONTEXT_OPS.LINKCALL) {
            const sandboxed = Boolean(this.config.env && this.config.env.user);
            const answer = frame.op === CONTEXT_OPS.ENV ?
                Promise.resolve().then(() => nodeops.envGet(this.node, frame.key, { sandboxed })) :
                this.links.call(frame);
            answer.then((value) => reply(value, null), (err) => reply(null, err.message || String(err)));
            return;
        }
        let store;
        try {
            const ctx = this.node.context();
            store = frame.scope === "flow" ? ctx.flow : frame.scope === "global" ? ctx.global : ctx;
        } catch (err) {
            reply(null, err.message);
            return;
        }
        contextOp(store, frame).then((value) => reply(value, null), (err) => reply(null, err.message || String(err)));
    }

    // ---- messages ----------------------------------------------------------------

    /** The node's input handler: whatever throws on the way in ends in done(err). */
    input(msg, send, done) {
        try {
            this.accept(msg, send, done);
        } catch (err) {
            const failure = inputError(err, makeReportable(msg, this.options.cloneMessage));
            try {
                done(failure);
            } catch (reportErr) {
                this.node.error(failure.message);
            }
        }
    }

    accept(msg, send, done) {
        if (this.closing) {
            done(closedError());
        } else if (this.state === RunnerState.READY && this.direct) {
            this.hold({ msg, send, done });
        } else if (this.state === RunnerState.READY) {
            this.execute({ msg, send, done });
        } else if (this.state === RunnerState.FAILED && this.failure) {
            done(this.failure);
        } else if (this.waiting.length >= this.config.queue_limit) {
            done(queueFull(this.config.queue_limit));
        } else {
            this.waiting.push({ msg, send, done });
        }
    }

    flushWaiting() {
        const waiting = this.waiting;
        this.waiting = [];
        for (const item of waiting) {
            this.execute(item);
        }
    }

    failWaiting(err) {
        const waiting = this.waiting;
        this.waiting = [];
        for (const item of waiting) {
            item.done(err);
        }
    }

    /** Send a message to the pool. Without large Buffers (blob files) it leaves at once. */
    execute(item) {
        const reqId = `${REQ_PREFIX}-${(++reqCounter).toString(36)}`;
        const req = {
            reqId, files: NO_FILES, mine: null, result: false, finished: false, held: false,
            pending: null, direct: null, directText: null, msg: item.msg, send: item.send, done: item.done,
        };
        this.inflight.set(reqId, req);
        let encoded;
        let kept;
        try {
            const split = codec.splitMessage(item.msg);
            kept = split.kept;
            encoded = codec.encodeWire(split.wire, { blobDir: this.bridge.blobDir, reqId });
        } catch (err) {
            this.refuse(req, err);
            return;
        }
        // the encoded msg shares the input's unchanged parts: serialized before anything waits
        const frame = codec.executeFrame(this.id, reqId, encoded);
        if (encoded.pending.length === 0) {
            if (!this.sendDirect(req, Object.assign(kept, encoded.kept), frame)) {
                this.sendExecute(req, kept, frame, null);
            }
            return;
        }
        const text = JSON.stringify(frame);
        req.mine = this.spare ? new Set() : null;   // the inodes written: the spare's candidates
        codec.writeBlobs(encoded.pending, this.spare, req.mine).then((files) => {
            req.files = files;
            if (req.finished) {
                codec.removeFiles(files);
                return;
            }
            this.sendExecute(req, Object.assign(kept, encoded.kept), null, text);
        }, (err) => this.refuse(req, err));
    }

    /**
     * Write a plain message to the node's kernel itself (lib/answers.js), skipping the bridge:
     * only with one worker, when nothing else of this node is in flight, and a kernel that said
     * it is ready. The bridge accounts for it from the kernel's result pipe; the next messages
     * wait in `behind` until it has its result. False: send it to the bridge.
     */
    sendDirect(req, kept, frame) {
        const answers = this.bridge && this.bridge.answers;
        const alone = this.config.workers === 1 && !this.noDirect && !this.direct && this.inflight.size === 1;
        if (!this.directAllowed || !alone || !answers || !answers.takesRequests(this.id)) {
            return false;
        }
        const text = JSON.stringify(frame);
        if (text.length > DIRECT_MAX) {
            return false;
        }
        req.held = this.holdKept(req.msg._msgid, kept);
        this.bridge.track(req.reqId, this);
        req.direct = answers.send(this.id, text);
        req.directText = text;
        this.direct = req;
        return true;
    }

    /** A message that came while a direct one runs (sendDirect): after its result. */
    hold(item) {
        if (this.behind.length >= this.config.queue_limit) {
            item.done(queueFull(this.config.queue_limit));
        } else {
            this.behind.push(item);
        }
    }

    /** The direct message ended: the ones that waited go on (several: to the bridge, as a burst). */
    flushBehind() {
        const items = this.behind;
        this.behind = [];
        this.noDirect = items.length > 1;
        try {
            for (const item of items) {
                this.accept(item.msg, item.send, item.done);
            }
        } finally {
            this.noDirect = false;
        }
    }

    /**
     * A kernel that took direct requests died: those that never started go to the bridge
     * (`started`, the last one that began there, gets its result from the bridge).
     */
    onKernelLost(frame) {
        for (const req of Array.from(this.inflight.values())) {
            const neverStarted = req.direct === frame.pid && req.reqId !== frame.started;
            if (neverStarted && !req.result && !req.pending && !req.finished) {
                req.direct = null;
                if (!this.bridge || !this.bridge.sendText(req.directText)) {
                    this.finish(req, this.failure || toError({ code: "BRIDGE_LOST", type: "Error", message: t("kernelexec.error.connectionLost") }));
                }
            }
        }
    }

    /** A message that failed on its way in: done(err), with a message a Catch node can copy. */
    refuse(req, err) {
        this.finish(req, inputError(err, makeReportable(req.msg, this.options.cloneMessage)));
    }

    sendExecute(req, kept, frame, text) {
        req.held = this.holdKept(req.msg._msgid, kept);
        this.bridge.track(req.reqId, this);
        let sent;
        try {
            sent = frame ? this.bridge.send(frame) : this.bridge.sendText(text);
        } catch (err) {   // JSON.stringify of the input's own objects (a getter that throws)
            this.refuse(req, err);
            return;
        }
        if (!sent) {
            this.finish(req, this.failure || toError({ code: "BRIDGE_LOST", type: "Error", message: t("kernelexec.error.connectionLost") }));
        }
    }

    /**
     * Deliveries run one after another, so that sends keep the order the kernel made them in.
     * Outputs without blob files, with no earlier delivery still reading files, are delivered
     * at once (returns null); otherwise after the earlier ones (returns their promise).
     */
    deliver(req, outputs, stdout, frame) {
        const needs = Array.isArray(outputs) && outputs.length > 0 ? codec.markers(outputs) : 0;
        if (this.deliveries === 0 && needs < 2 && codec.tableOf(frame).length === 0) {
            this.deliverDecoded(req, needs === 1 ? codec.decodeInline(outputs) : outputs, stdout);
            return null;
        }
        this.deliveries += 1;
        const next = this.delivery.then(() => this.deliverNow(req, outputs, stdout, frame));
        this.delivery = next.catch(() => {}).then(() => {
            this.deliveries -= 1;
        });
        return next;
    }

    /** Decode (reading blob files, which are then removed) and deliver. */
    async deliverNow(req, outputs, stdout, frame) {
        const blobDir = this.bridge && this.bridge.blobDir;
        if (!Array.isArray(outputs) || outputs.length === 0) {
            codec.discardBlobs(frame, blobDir);
            return;
        }
        const decoded = await codec.decodeValue(outputs, {
            blobDir, blobs: codec.tableOf(frame), reqId: frame.req_id, kernelUid: this.kernelUid,
            spare: this.spare, mine: req.mine,
        });
        this.deliverDecoded(req, decoded, stdout);
    }

    /** Re-attach what stayed in JS and send. */
    deliverDecoded(req, decoded, stdout) {
        if (!Array.isArray(decoded) || decoded.length === 0) {
            return;
        }
        let count = 0;
        const ports = decoded.map((list) => {
            const msgs = (Array.isArray(list) ? list : [list]).filter((m) => m && typeof m === "object");
            for (const m of msgs) {
                count += 1;
                if (req) {
                    m._msgid = req.msg._msgid;
                    if (this.options.stdoutToMsg && stdout) {
                        m.stdout = stdout;
                    }
                }
                const held = this.kept.size > 0 ? this.kept.get(m._msgid) : undefined;
                if (held) {
                    codec.restoreKept(m, held.props);
                }
            }
            return msgs.length === 0 ? null : msgs.length === 1 ? msgs[0] : msgs;
        });
        if (count > 0) {
            (req && !req.finished ? req.send : this.node.send.bind(this.node))(ports);
        }
    }

    /** Python's node.log/warn/error/debug/trace and log(): to the Node-RED log (warn/error also
     * to the debug sidebar). */
    logs(entries) {
        for (const entry of entries || []) {
            const text = entry.text;
            if (entry.level === "error") {
                this.node.error(text);
            } else if (entry.level === "warn") {
                this.node.warn(text);
            } else if (entry.level === "debug") {
                this.node.debug(text);
            } else if (entry.level === "trace") {
                this.node.trace(text);
            } else {
                this.node.log(text);
            }
        }
    }

    /** Keep msg.req, msg.res & co. by _msgid while a message with that id is running. */
    holdKept(msgid, props) {
        if (msgid === undefined || Object.keys(props).length === 0) {
            return false;
        }
        const held = this.kept.get(msgid) || { props: {}, active: 0, timer: null };
        Object.assign(held.props, props);
        held.active += 1;
        clearTimeout(held.timer);
        this.kept.set(msgid, held);
        return true;
    }

    releaseKept(msgid) {
        const held = this.kept.get(msgid);
        if (held && --held.active === 0) {
            held.timer = setTimeout(() => this.kept.get(msgid) === held && this.kept.delete(msgid), KEPT_LINGER_MS);
            held.timer.unref();
        }
    }

    /** End a message exactly once: done(err?) and remove its input files, whatever happened. */
    finish(req, err) {
        if (req.finished) {
            return;
        }
        req.finished = true;
        if (req.pending) {   // a result that waited its turn (onResult): its files go
            codec.discardBlobs(req.pending, this.bridge && this.bridge.blobDir);
            req.pending = null;
        }
        if (req.held) {
            this.releaseKept(req.msg._msgid);
        }
        this.inflight.delete(req.reqId);
        if (this.bridge) {
            this.bridge.untrack(req.reqId);
        }
        this.releaseResults();
        if (req === this.direct) {
            this.direct = null;
            this.flushBehind();
        }
        if (req.files.length > 0) {
            codec.removeFiles(codec.keepOne(req.files, this.spare, req.mine));
        }
        try {
            req.done(err || undefined);
        } catch (reportErr) {   // Node-RED could not report it (the message cannot be copied)
            this.node.error(err ? (typeof err === "string" ? err : err.message) : String(reportErr));
        }
    }

    failAll(err) {
        for (const req of Array.from(this.inflight.values())) {
            this.finish(req, err);
        }
    }

    // ---- close -------------------------------------------------------------------

    /** Close the pool; `removed`: the node was deleted, so the bridge deletes its work dir. */
    async close(removed = false) {
        let resolve;
        const closed = new Promise((r) => { resolve = r; });
        this.closing = { resolve };
        const err = closedError();
        this.waiting = this.behind.concat(this.waiting);
        this.behind = [];
        this.failWaiting(err);
        this.links.close(err);
        if (this.bridge && this.bridge.send({ type: "close", node_id: this.id, removed: removed === true })) {
            const timer = setTimeout(resolve, CLOSE_WAIT_MS);
            await closed;
            clearTimeout(timer);
        }
        this.failAll(err);
        this.status.stop();
        for (const held of this.kept.values()) {
            clearTimeout(held.timer);
        }
        this.kept.clear();
        if (this.spare) {
            this.spare.close();
        }
        await codec.removals();
        await bridges.deregister(this, this.bridge);
    }
}

const FRAME_HANDLERS = {
    pool_state: Runner.prototype.onPoolState,
    result: Runner.prototype.onResult,
    send: Runner.prototype.onSend,
    done: Runner.prototype.onDone,
    status: Runner.prototype.onStatus,
    log: Runner.prototype.onLog,
    error: Runner.prototype.onError,
    closed: Runner.prototype.onClosed,
    kernel_lost: Runner.prototype.onKernelLost,
    context_request: Runner.prototype.onContextRequest,
};

module.exports = { Runner, toError };

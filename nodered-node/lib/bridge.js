// One bridge (`python -m kernelexec serve`) per distinct Python interpreter or bridge URL, shared
// by every kernelexec node of the Node-RED runtime that uses it (register/deregister with a
// reference count, as 10-mqtt.js does for broker connections).
//
// A Bridge owns: the child process (when it started one), the WebSocket, the hello/welcome
// handshake, restarts with backoff when the process dies, and routing of server frames to the
// registered clients by node_id. It knows nothing about pools or messages: clients do.
//
// Client interface (implemented by lib/runner.js):
//   client.id                      node id (frames are routed on node_id)
//   client.bridgeUp(bridge)        a connection is ready (after each (re)start): configure now
//   client.bridgeDown(error)       the connection is gone or could not be made
//   client.frame(frame)            a server frame for this node
//
// Batching (protocol 1.1): once the welcome says the bridge speaks 1.1 or later, the frames sent
// in one tick leave as one WebSocket message, a JSON array (flushed by setImmediate, or at once
// when BATCH_FRAMES are queued; a lone frame stays an object, a big one goes alone): one write
// per tick instead of one per frame. Arrays from the bridge are dispatched in order, in slices
// of SLICE_MS with a turn of the event loop between them (a burst of results must not stall
// Node-RED).
"use strict";
const { spawn } = require("child_process");
const crypto = require("crypto");
const readline = require("readline");
const WebSocket = require("ws");
const { PipeSocket } = require("./pipe_socket");
const codec = require("./codec");
const protocol = require("./protocol");
const pythonSetup = require("./python_setup");
const { t } = require("./i18n");

const READY_TIMEOUT_MS = 60000;
const STOP_GRACE_MS = 3000;   // stdin EOF, then SIGTERM after this, then SIGKILL after twice this
const EXIT_WAIT_MS = 1000;
const BACKOFF_MS = [500, 1000, 2000, 5000, 10000, 30000];
const STDERR_TAIL = 16384;
const REQUIRED_MODULES = /No module named '?([A-Za-z0-9_.]+)'?/;
const VERSION = require("../package.json").version;
const CLIENT_NAME = "node-red-kernelexec/" + VERSION;
// Queued frames that make the bridge write at once (the bridge starts on them while the rest of
// a burst is encoded), and the size (JSON characters) of an array or of a frame that goes alone.
// A character is at most 3 UTF-8 bytes: arrays stay far below the protocol's max_frame_bytes.
const BATCH_FRAMES = 256;
const BATCH_CHARS = 1 << 20;
// Received frames are dispatched in slices of this many milliseconds (the clock is read every
// SLICE_CHECK frames), with a turn of the event loop between slices.
const SLICE_MS = 10;
const SLICE_CHECK = 16;

const bridges = new Map();
let log = { debug() {}, info() {}, warn() {}, error() {} };

function setLogger(logger) {
    if (logger) {
        log = logger;
    }
}

/** The bridge logs "<time> <logger> <LEVEL> <message>" on stderr: warnings and errors show. */
function stderrLine(line) {
    const level = /\s(WARNING|ERROR|CRITICAL)\s/.exec(line);
    const text = "[kernelexec bridge] " + line;
    if (!level) {
        log.debug(text);
    } else if (level[1] === "WARNING") {
        log.warn(text);
    } else {
        log.error(text);
    }
}

function bridgeError(code, message, hint) {
    const err = new Error(message);
    err.code = code;
    err.hint = hint || null;
    return err;
}

class Bridge {
    constructor(options) {
        this.key = options.key;
        this.python = options.python;
        this.auto = options.auto === true;   // no configured Python: python_setup finds or builds one
        this.url = options.url;
        this.token = options.token || crypto.randomBytes(24).toString("hex");
        this.clients = new Map();
        this.requests = new Map();
        this.child = null;
        this.ws = null;
        this.welcome = null;
        this.state = "idle";
        this.failures = 0;
        this.lastError = null;
        this.retryTimer = null;
        this.stopping = null;
        this.generation = 0;
        this.batching = false;   // the bridge reads arrays of frames (welcome >= 1.1)
        this.outbox = [];        // JSON texts waiting for the end of the tick
        this.outboxChars = 0;
        this.flushTimer = null;
        this.inbox = [];         // received messages not dispatched yet: {frames, next, generation}
        this.draining = false;
        this.drainTimer = null;
    }

    get ready() {
        return this.state === "ready";
    }

    get blobDir() {
        return this.welcome ? this.welcome.blob_dir : null;
    }

    add(client) {
        this.clients.set(client.id, client);
        if (this.state === "idle") {
            this.start();
        } else if (this.ready) {
            setImmediate(() => this.clients.get(client.id) === client && client.bridgeUp(this));
        } else if (this.state === "failed" && this.lastError) {
            setImmediate(() => this.clients.get(client.id) === client && client.bridgeDown(this.lastError));
        }
    }

    start() {
        this.state = "starting";
        const generation = ++this.generation;
        if (this.url) {
            this.connect(this.url, generation);
        } else if (this.auto) {
            this.resolvePython(generation);
        } else {
            this.spawnProcess(generation);
        }
    }

    /** No configured Python: python3 when it has this version of kernelexec, else the managed environment. */
    resolvePython(generation) {
        const progress = (text) => {
            if (this.generation === generation) {
                for (const client of Array.from(this.clients.values())) {
                    if (client.bridgeProgress) {
                        client.bridgeProgress(text);
                    }
                }
            }
        };
        pythonSetup.resolve(progress).then((python) => {
            if (this.generation === generation && this.state === "starting") {
                this.python = python;
                this.spawnProcess(generation);
            }
        }, (err) => this.fail(generation, err));
    }

    spawnProcess(generation) {
        const args = ["-m", "kernelexec", "serve", "--port", "0", "--watch-stdin", "--parent-pid", String(process.pid)];
        const stdio = ["pipe", "pipe", "pipe"];
        if (useSocketPair()) {   // the node's connection: fd 3, see lib/pipe_socket.js
            args.push("--node-fd", "3");
            stdio.push("pipe");
        }
        // PYDEVD_DISABLE_FILE_VALIDATION: ipykernel's debugger would print a frozen-modules warning
        // from every kernel, which would reach the node log as warnings.
        const env = Object.assign({ PYDEVD_DISABLE_FILE_VALIDATION: "1" }, process.env, { KERNELEXEC_TOKEN: this.token, PYTHONUNBUFFERED: "1" });
        let child;
        try {
            // Own process group: a Ctrl-C in Node-RED's terminal must not stop the bridge under the
            // nodes' feet; Node-RED stops it in order (close frames, then stdin EOF).
            child = spawn(this.python, args, { env, stdio, detached: true });
        } catch (err) {
            this.fail(generation, this.spawnError(err));
            return;
        }
        this.child = child;
        child.stderrTail = "";
        child.on("error", (err) => this.fail(generation, this.spawnError(err)));
        child.stdin.on("error", () => {});
        child.stderr.on("data", (chunk) => {
            child.stderrTail = (child.stderrTail + chunk.toString()).slice(-STDERR_TAIL);
        });
        readline.createInterface({ input: child.stderr }).on("line", stderrLine);
        readline.createInterface({ input: child.stdout }).on("line", (line) => this.stdoutLine(line, generation));
        child.on("exit", (code, signal) => this.processExit(child, generation, code, signal));
        child.readyTimer = setTimeout(() => {
            if (this.state === "starting" && this.generation === generation) {
                this.fail(generation, bridgeError("BRIDGE_FAILED", t("kernelexec.error.bridgeNotReady", { python: this.python, seconds: READY_TIMEOUT_MS / 1000 })));
                child.kill("SIGKILL");
            }
        }, READY_TIMEOUT_MS);
        log.info(t("kernelexec.log.bridgeStarting", { python: this.python, pid: child.pid }));
    }

    stdoutLine(line, generation) {
        let info = null;
        try {
            info = JSON.parse(line);
        } catch (ignored) {
            // not the ready line
        }
        if (this.state !== "starting" || this.generation !== generation || !info || typeof info !== "object" || !(info.port || info.url)) {
            log.debug("[kernelexec bridge] " + line);
            return;
        }
        if (this.child) {
            clearTimeout(this.child.readyTimer);
        }
        if (this.child && this.child.stdio[3]) {
            this.use(new PipeSocket(this.child.stdio[3], protocol.MAX_FRAME_BYTES), generation, t("kernelexec.log.bridgeSocket"));
            return;
        }
        const url = info.ws_url || (info.url && /^wss?:/.test(info.url) ? info.url : null) ||
            `ws://${info.host && info.host !== "0.0.0.0" ? info.host : "127.0.0.1"}:${info.port}/ws`;
        this.connect(url, generation);
    }

    spawnError(err) {
        if (err.code === "ENOENT") {
            return bridgeError("BRIDGE_FAILED", t("kernelexec.error.pythonNotFound", { python: this.python }),
                t("kernelexec.hint.installPython", { python: this.python }));
        }
        return bridgeError("BRIDGE_FAILED", t("kernelexec.error.spawnFailed", { python: this.python, error: err.message }));
    }

    exitError(child, code, signal) {
        const tail = (child.stderrTail || "").trim();
        const missing = REQUIRED_MODULES.exec(tail);
        if (missing) {
            const hint = t("kernelexec.hint.installKernelexec", { python: this.python, package: pythonSetup.packageHint() });
            return bridgeError("BRIDGE_FAILED", t("kernelexec.error.missingModule", { python: this.python, module: missing[1] }) + " " + hint, hint);
        }
        const last = tail.split("\n").slice(-3).join(" | ");
        return bridgeError("BRIDGE_FAILED", t("kernelexec.error.bridgeExited", { python: this.python, code: code === null ? signal : code, stderr: last || "-" }));
    }

    processExit(child, generation, code, signal) {
        clearTimeout(child.readyTimer);
        if (this.child === child) {
            this.child = null;
        }
        if (this.stopping || this.generation !== generation) {
            return;
        }
        if (this.state === "starting") {
            this.fail(generation, this.exitError(child, code, signal));
        } else {
            this.lost(generation, bridgeError("BRIDGE_LOST", t("kernelexec.error.bridgeDied", { code: code === null ? signal : code })));
        }
    }

    connect(url, generation) {
        let ws;
        try {
            ws = new WebSocket(url, {
                headers: { Authorization: "token " + this.token },
                maxPayload: protocol.MAX_FRAME_BYTES,
                perMessageDeflate: false,
            });
        } catch (err) {   // a malformed URL throws at once
            setImmediate(() => this.fail(generation, bridgeError("BRIDGE_FAILED", t("kernelexec.error.connectFailed", { url, error: err.message }))));
            return;
        }
        this.use(ws, generation, url);
    }

    /** Speak the protocol over `ws` (a WebSocket, or a PipeSocket to a bridge we started). */
    use(ws, generation, url) {
        this.ws = ws;
        this.dropOutbox();   // single frames until this connection's welcome says otherwise
        ws.on("open", () => this.sendRaw({ type: "hello", protocol_version: protocol.PROTOCOL_VERSION, client: CLIENT_NAME }));
        ws.on("message", (data) => this.receive(data, generation));
        ws.on("error", (err) => {
            if (this.state === "starting" && this.generation === generation) {
                this.fail(generation, bridgeError("BRIDGE_FAILED", t("kernelexec.error.connectFailed", { url, error: err.message })));
            }
        });
        ws.on("close", () => {
            this.drain(Infinity);   // results that arrived before the close still count
            if (this.ws === ws) {
                this.ws = null;
            }
            if (this.stopping || this.generation !== generation) {
                return;
            }
            if (this.state === "ready" && this.child) {
                // Most often the process is dying: give its exit a moment to tell why.
                const child = this.child;
                setTimeout(() => child === this.child && this.lost(generation, bridgeError("BRIDGE_LOST", t("kernelexec.error.connectionLost"))), EXIT_WAIT_MS);
            } else if (this.state === "ready") {
                this.lost(generation, bridgeError("BRIDGE_LOST", t("kernelexec.error.connectionLost")));
            } else if (this.state === "starting") {
                this.fail(generation, bridgeError("BRIDGE_FAILED", t("kernelexec.error.connectFailed", { url, error: "closed" })));
            }
        });
    }

    receive(data, generation) {
        let parsed;
        try {
            parsed = JSON.parse(data.toString());
        } catch (err) {
            log.warn(t("kernelexec.log.badFrame", { error: err.message }));
            return;
        }
        // protocol 1.1: the frames of one message, in order, after those received before
        this.inbox.push({ frames: Array.isArray(parsed) ? parsed : [parsed], next: 0, generation });
        if (!this.draining) {
            this.drain(SLICE_MS);
        }
    }

    /**
     * Dispatch received frames in arrival order for at most `ms` milliseconds, then yield to
     * the event loop (setImmediate) and go on: thousands of results arriving at once (a
     * burst refused with QUEUE_FULL) must not stall timers, HTTP and other flows meanwhile.
     * Infinity: everything now (the connection closes; what it delivered is handled first).
     */
    drain(ms) {
        this.draining = true;
        if (this.drainTimer) {
            clearImmediate(this.drainTimer);
            this.drainTimer = null;
        }
        const deadline = ms === Infinity ? Infinity : performance.now() + ms;
        let count = 0;
        while (this.inbox.length > 0) {
            const item = this.inbox[0];
            while (item.next < item.frames.length) {
                const frame = item.frames[item.next];
                item.next += 1;
                try {
                    this.dispatch(frame, item.generation);
                } catch (err) {   // a bug in a handler must not stop the frames after it
                    log.error("kernelexec: handling a " + (frame && frame.type) + " frame failed: " + (err && err.stack || err));
                }
                const more = item.next < item.frames.length || this.inbox.length > 1;
                if (++count % SLICE_CHECK === 0 && more && performance.now() > deadline) {
                    this.drainTimer = setImmediate(() => {
                        this.drainTimer = null;
                        this.drain(SLICE_MS);
                    });
                    return;
                }
            }
            this.inbox.shift();
        }
        this.draining = false;
    }

    dropInbox() {
        if (this.drainTimer) {
            clearImmediate(this.drainTimer);
            this.drainTimer = null;
        }
        this.inbox = [];
        this.draining = false;
    }

    dispatch(frame, generation) {
        if (this.generation !== generation) {
            return;
        }
        if (!frame || typeof frame !== "object") {
            log.warn(t("kernelexec.log.badFrame", { error: JSON.stringify(frame) }));
            return;
        }
        if (frame.type === "welcome") {
            this.welcomed(frame, generation);
            return;
        }
        if (frame.type === "error" && this.state === "starting") {
            // e.g. VERSION_MISMATCH: the bridge answers hello with an error, then closes
            const error = frame.error || {};
            this.fail(generation, bridgeError(error.code || "BRIDGE_FAILED", t("kernelexec.error.refused", { error: error.message || JSON.stringify(frame) })));
            return;
        }
        const client = this.route(frame);
        if (client) {
            client.frame(frame);
            return;
        }
        if (frame.outputs) {
            codec.discardBlobs(frame, this.blobDir);   // for a node that is gone
        }
        if (frame.type === "error") {
            log.warn(t("kernelexec.log.bridgeError", { error: frame.error ? frame.error.message : JSON.stringify(frame) }));
        } else if (frame.node_id) {
            log.debug("kernelexec: frame for unknown node " + frame.node_id + " (" + frame.type + ")");
        }
    }

    route(frame) {
        if (frame.node_id && this.clients.has(frame.node_id)) {
            return this.clients.get(frame.node_id);
        }
        if (frame.req_id && this.requests.has(frame.req_id)) {
            return this.requests.get(frame.req_id);
        }
        return null;
    }

    welcomed(frame, generation) {
        if (!protocol.compatible(frame.protocol_version)) {
            this.fail(generation, bridgeError("VERSION_MISMATCH", t("kernelexec.error.versionMismatch", { theirs: frame.protocol_version, ours: protocol.PROTOCOL_VERSION })));
            this.killChild();
            return;
        }
        if (!this.sameVersion(frame, generation)) {
            return;
        }
        this.welcome = frame;
        this.batching = protocol.atLeast(frame.protocol_version, protocol.BATCH_VERSION);
        this.state = "ready";
        this.failures = 0;
        this.lastError = null;
        log.info(t("kernelexec.log.bridgeReady", { server: frame.server, pid: frame.pid, blobDir: frame.blob_dir }));
        for (const client of Array.from(this.clients.values())) {
            client.bridgeUp(this);
        }
    }

    /**
     * The bridge's kernelexec version (welcome.server "kernelexec/X") must be this package's:
     * the managed environment is rebuilt, a configured Python gets an error saying what to do,
     * a remote bridge a warning.
     */
    sameVersion(frame, generation) {
        const m = /^kernelexec\/(\S+)$/.exec(String(frame.server || ""));
        const theirs = m ? m[1] : null;
        if (!theirs || theirs === VERSION || theirs.startsWith("0+")) {
            return true;
        }
        if (this.url) {
            log.warn(t("kernelexec.setup.error.versionMismatch", { python: this.url, theirs, ours: VERSION }));
            return true;
        }
        const rebuild = this.auto && pythonSetup.invalidate(this.python);
        if (rebuild) {
            log.warn(t("kernelexec.setup.error.rebuilding", { theirs, ours: VERSION }));
            this.failures = 0;   // rebuild now, not after a backoff
        }
        const hint = t("kernelexec.setup.hint.match", { python: this.python, package: pythonSetup.packageHint() });
        const err = bridgeError("VERSION_MISMATCH", t("kernelexec.setup.error.versionMismatch", { python: this.python, theirs, ours: VERSION }) + " " + hint, hint);
        err.final = !rebuild;   // the same Python would answer the same: wait for the next deploy
        this.fail(generation, err);
        return false;
    }

    /** Send a frame; false when there is no connection (the caller fails the message). */
    send(frame) {
        return this.ready && this.sendRaw(frame);
    }

    /** Send a frame already serialized with JSON.stringify; false when there is no connection. */
    sendText(text) {
        return this.ready && this.queueText(text);
    }

    sendRaw(frame) {
        if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
            return false;
        }
        return this.queueText(JSON.stringify(frame));
    }

    queueText(text) {
        if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
            return false;
        }
        if (!this.batching) {
            this.ws.send(text);
            return true;
        }
        if (text.length > BATCH_CHARS) {   // alone, after what was queued before it
            this.flush();
            this.ws.send(text);
            return true;
        }
        if (this.outboxChars + text.length + 1 > BATCH_CHARS) {
            this.flush();
        }
        this.outbox.push(text);
        this.outboxChars += text.length + 1;
        if (this.outbox.length >= BATCH_FRAMES) {
            this.flush();
        } else if (!this.flushTimer) {
            this.flushTimer = setImmediate(() => this.flush());
        }
        return true;
    }

    /** Write the frames queued in this tick: one message (an array; a lone frame as itself). */
    flush() {
        if (this.flushTimer) {
            clearImmediate(this.flushTimer);
            this.flushTimer = null;
        }
        const texts = this.outbox;
        if (texts.length === 0) {
            return;
        }
        this.outbox = [];
        this.outboxChars = 0;
        if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
            return;   // the connection went away: its close handler fails what was waiting
        }
        this.ws.send(texts.length === 1 ? texts[0] : "[" + texts.join(",") + "]");
    }

    dropOutbox() {
        if (this.flushTimer) {
            clearImmediate(this.flushTimer);
            this.flushTimer = null;
        }
        this.outbox = [];
        this.outboxChars = 0;
        this.batching = false;
    }

    track(reqId, client) {
        this.requests.set(reqId, client);
    }

    untrack(reqId) {
        this.requests.delete(reqId);
    }

    fail(generation, err) {
        if (this.generation !== generation || this.stopping || this.state === "failed") {
            return;
        }
        this.state = "failed";
        this.lastError = err;
        this.teardownConnection();
        for (const client of Array.from(this.clients.values())) {
            client.bridgeDown(err);
        }
        this.scheduleRestart();
    }

    lost(generation, err) {
        if (this.generation !== generation || this.stopping || this.state !== "ready") {
            return;
        }
        log.warn(err.message);
        this.state = "failed";
        this.lastError = err;
        this.welcome = null;
        this.teardownConnection();
        this.requests.clear();
        for (const client of Array.from(this.clients.values())) {
            client.bridgeDown(err);
        }
        this.scheduleRestart();
    }

    teardownConnection() {
        this.dropOutbox();
        this.dropInbox();
        if (this.ws) {
            const ws = this.ws;
            this.ws = null;
            ws.removeAllListeners("close");
            ws.on("error", () => {});
            ws.terminate();
        }
        this.killChild();
    }

    killChild() {
        if (this.child) {
            const child = this.child;
            this.child = null;
            child.stdin.end();
            child.kill("SIGTERM");
            setTimeout(() => child.exitCode === null && child.signalCode === null && child.kill("SIGKILL"), STOP_GRACE_MS).unref();
        }
    }

    scheduleRestart() {
        if (this.clients.size === 0 || this.stopping || (this.lastError && this.lastError.final)) {
            return;
        }
        const delay = BACKOFF_MS[Math.min(this.failures, BACKOFF_MS.length - 1)];
        this.failures += 1;
        clearTimeout(this.retryTimer);
        this.retryTimer = setTimeout(() => {
            if (!this.stopping && this.clients.size > 0) {
                log.info(t("kernelexec.log.bridgeRestart", { attempt: this.failures }));
                this.start();
            }
        }, delay);
    }

    /** Stop the bridge: close the socket, close stdin (--watch-stdin), then TERM, then KILL. */
    stop() {
        if (this.stopping) {
            return this.stopping;
        }
        clearTimeout(this.retryTimer);
        this.state = "stopped";
        this.generation += 1;
        this.stopping = new Promise((resolve) => {
            this.flush();   // e.g. the close frames of the last nodes
            this.dropOutbox();
            this.dropInbox();
            if (this.ws) {
                this.ws.removeAllListeners("close");
                this.ws.on("error", () => {});
                this.ws.close();
                this.ws = null;
            }
            const child = this.child;
            this.child = null;
            if (!child || child.exitCode !== null || child.signalCode !== null) {
                resolve();
                return;
            }
            const term = setTimeout(() => child.kill("SIGTERM"), STOP_GRACE_MS);
            const kill = setTimeout(() => child.kill("SIGKILL"), 2 * STOP_GRACE_MS);
            child.once("exit", () => {
                clearTimeout(term);
                clearTimeout(kill);
                resolve();
            });
            child.stdin.end();
        });
        return this.stopping;
    }
}

/**
 * Whether a bridge this runtime starts is spoken to over an inherited socket pair (the
 * default) or over its WebSocket like any other client (KERNELEXEC_BRIDGE_TRANSPORT=websocket:
 * for comparison and troubleshooting).
 */
function useSocketPair() {
    return process.env.KERNELEXEC_BRIDGE_TRANSPORT !== "websocket";
}

function bridgeOptions(options) {
    const url = options && options.url ? String(options.url).trim() : "";
    if (url) {
        return { key: "url:" + url, url, token: options.token || "" };
    }
    const python = (options && options.python) || process.env.KERNELEXEC_PYTHON;
    if (!python) {
        return { key: "auto", python: null, auto: true };
    }
    return { key: "python:" + python, python };
}

/**
 * Register a client on the bridge for `options` ({python} or {url, token}); the bridge starts
 * with its first client. Returns the Bridge.
 */
function register(client, options) {
    const opts = bridgeOptions(options);
    let bridge = bridges.get(opts.key);
    if (!bridge) {
        bridge = new Bridge(opts);
        bridges.set(opts.key, bridge);
    }
    bridge.add(client);
    return bridge;
}

/** Deregister a client; the last one stops the bridge. Resolves when the process is gone. */
function deregister(client, bridge) {
    if (!bridge || bridge.clients.get(client.id) !== client) {
        return Promise.resolve();
    }
    bridge.clients.delete(client.id);
    for (const [reqId, owner] of bridge.requests) {
        if (owner === client) {
            bridge.requests.delete(reqId);
        }
    }
    if (bridge.clients.size > 0) {
        return Promise.resolve();
    }
    if (bridges.get(bridge.key) === bridge) {
        bridges.delete(bridge.key);
    }
    return bridge.stop();
}

/** The live bridges (for tests and diagnostics). */
function active() {
    return Array.from(bridges.values());
}

process.once("exit", () => {
    for (const bridge of bridges.values()) {
        if (bridge.child) {
            bridge.child.kill("SIGTERM");
        }
    }
});

module.exports = { register, deregister, active, setLogger, bridgeOptions, Bridge };

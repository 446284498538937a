// One bridge (`python -m kernelexec serve`) per distinct Python interpreter or bridge URL, shared
// by every kernelexec node of the Node-RED runtime that uses it (register/deregister with a
// reference count, as 10-mqtt.js does for broker connections).
//
// A Bridge is the connection: it starts the process (lib/bridge_process.js supervises it) or
// dials the URL, speaks over the socket pair or the WebSocket (the hello/welcome handshake,
// versions checked), batches what it sends (lib/outbox.js), dispatches what it receives and
// routes server frames to the registered clients by node_id, and restarts with backoff when
// the process or the connection dies. It knows nothing about pools or messages: clients do.
//
// Client interface (implemented by lib/runner.js):
//   client.id                      node id (frames are routed on node_id)
//   client.bridgeUp(bridge)        a connection is ready (after each (re)start): configure now
//   client.bridgeDown(error)       the connection is gone or could not be made
//   client.frame(frame)            a server frame for this node
//
// Arrays of frames from the bridge (protocol 1.1) are dispatched in order, in slices of
// SLICE_MS with a turn of the event loop between them (a burst of results must not stall
// Node-RED).
"use strict";
const crypto = require("crypto");
const WebSocket = require("ws");
const { AnswerServer } = require("./answers");
const { PipeSocket } = require("./pipe_socket");
const { BridgeProcess, bridgeError, setLogger: setProcessLogger } = require("./bridge_process");
const { Outbox } = require("./outbox");
const codec = require("./codec");
const protocol = require("./protocol");
const pythonSetup = require("./python_setup");
const { t } = require("./i18n");

// What a Bridge is doing: idle (no client yet), starting (process, connection, handshake),
// ready, failed (a restart is scheduled unless the error is final), stopped (the last
// client left). lib/editor_api.js shows it in the environment view.
const BridgeState = Object.freeze({ IDLE: "idle", STARTING: "starting", READY: "ready", FAILED: "failed", STOPPED: "stopped" });
const EXIT_WAIT_MS = 1000;
const BACKOFF_MS = [500, 1000, 2000, 5000, 10000, 30000];
const VERSION = require("../package.json").version;
const CLIENT_NAME = "node-red-kernelexec/" + VERSION;
// Received frames are dispatched in slices of this many milliseconds (the clock is read every
// SLICE_CHECK frames), with a turn of the event loop between slices.
const SLICE_MS = 10;
const SLICE_CHECK = 16;

const bridges = new Map();
let log = { debug() {}, info() {}, warn() {}, error() {} };

function setLogger(logger) {
    if (logger) {
        log = logger;
        setProcessLogger(logger);
    }
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
        this.process = null;     // the BridgeProcess this runtime started (none for a URL)
        this.ws = null;
        this.welcome = null;
        this.state = BridgeState.IDLE;
        this.failures = 0;
        this.lastError = null;
        this.retryTimer = null;
        this.stopping = null;
        this.generation = 0;
        this.outbox = new Outbox((text) => this.isOpen() && this.ws.send(text));
        // results the kernels of a bridge we started write themselves (lib/answers.js)
        this.answers = new AnswerServer(protocol.MAX_FRAME_BYTES, (nodeId, frame) => this.answered(nodeId, frame));
        this.inbox = [];         // received messages not dispatched yet: {frames, next, generation}
        this.draining = false;
        this.drainTimer = null;
    }

    get ready() {
        return this.state === BridgeState.READY;
    }

    /** The bridge's process (a ChildProcess), when this runtime started it. */
    get child() {
        return this.process ? this.process.child : null;
    }

    get blobDir() {
        return this.welcome ? this.welcome.blob_dir : null;
    }

    add(client) {
        this.clients.set(client.id, client);
        if (this.state === BridgeState.IDLE) {
            this.start();
        } else if (this.ready) {
            setImmediate(() => this.clients.get(client.id) === client && client.bridgeUp(this));
        } else if (this.state === BridgeState.FAILED && this.lastError) {
            setImmediate(() => this.clients.get(client.id) === client && client.bridgeDown(this.lastError));
        }
    }

    start() {
        this.state = BridgeState.STARTING;
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
            if (this.generation === generation && this.state === BridgeState.STARTING) {
                this.python = python;
                this.spawnProcess(generation);
            }
        }, (err) => this.fail(generation, err));
    }

    spawnProcess(generation) {
        const proc = new BridgeProcess(this.python, this.token, {
            ready: (info) => this.processReady(proc, info, generation),
            notReady: (err) => {
                if (this.state === BridgeState.STARTING && this.generation === generation) {
                    this.fail(generation, err);
                    proc.kill("SIGKILL");
                }
            },
            failed: (err) => this.fail(generation, err),
            exited: (err, code) => this.processExit(proc, generation, err, code),
        });
        this.process = proc;
        proc.spawn();
    }

    processReady(proc, info, generation) {
        if (this.state !== BridgeState.STARTING || this.generation !== generation) {
            return;
        }
        if (proc.socket) {
            this.use(new PipeSocket(proc.socket, protocol.MAX_FRAME_BYTES), generation, t("kernelexec.log.bridgeSocket"));
            return;
        }
        const url = info.ws_url || (info.url && /^wss?:/.test(info.url) ? info.url : null) ||
            `ws://${info.host && info.host !== "0.0.0.0" ? info.host : "127.0.0.1"}:${info.port}/ws`;
        this.connect(url, generation);
    }

    processExit(proc, generation, err, code) {
        if (this.process === proc) {
            this.process = null;
        }
        if (this.stopping || this.generation !== generation) {
            return;
        }
        if (this.state === BridgeState.STARTING) {
            this.fail(generation, err);
        } else {
            this.lost(generation, bridgeError("BRIDGE_LOST", t("kernelexec.error.bridgeDied", { code })));
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
        this.outbox.drop();   // single frames until this connection's welcome says otherwise
        ws.on("open", () => this.sendRaw(this.hello(ws)));
        ws.on("message", (data) => this.receive(data, generation));
        ws.on("error", (err) => {
            if (this.state === BridgeState.STARTING && this.generation === generation) {
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
            if (this.state === BridgeState.READY && this.process) {
                // Most often the process is dying: give its exit a moment to tell why.
                const proc = this.process;
                setTimeout(() => proc === this.process && this.lost(generation, bridgeError("BRIDGE_LOST", t("kernelexec.error.connectionLost"))), EXIT_WAIT_MS);
            } else if (this.state === BridgeState.READY) {
                this.lost(generation, bridgeError("BRIDGE_LOST", t("kernelexec.error.connectionLost")));
            } else if (this.state === BridgeState.STARTING) {
                this.fail(generation, bridgeError("BRIDGE_FAILED", t("kernelexec.error.connectFailed", { url, error: "closed" })));
            }
        });
    }

    hello(ws) {
        const hello = { type: "hello", protocol_version: protocol.PROTOCOL_VERSION, client: CLIENT_NAME };
        const offer = ws instanceof PipeSocket && !process.env.KERNELEXEC_NO_ANSWERS ? this.answers.listen() : null;
        if (offer) {
            hello.answers = offer;
        }
        return hello;
    }

    /** A result a kernel wrote to the answer socket: its node takes it like the bridge's. */
    answered(nodeId, frame) {
        const client = this.clients.get(nodeId);
        if (client && this.ready) {
            client.frame(frame);
        }
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
        if (frame.type === "error" && this.state === BridgeState.STARTING) {
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
        this.outbox.batching = protocol.atLeast(frame.protocol_version, protocol.BATCH_VERSION);
        this.state = BridgeState.READY;
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
        return this.queueText(JSON.stringify(frame));
    }

    queueText(text) {
        if (!this.isOpen()) {
            return false;
        }
        this.outbox.queue(text);
        return true;
    }

    isOpen() {
        return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
    }

    track(reqId, client) {
        this.requests.set(reqId, client);
    }

    untrack(reqId) {
        this.requests.delete(reqId);
    }

    fail(generation, err) {
        if (this.generation !== generation || this.stopping || this.state === BridgeState.FAILED) {
            return;
        }
        this.state = BridgeState.FAILED;
        this.lastError = err;
        this.teardownConnection();
        for (const client of Array.from(this.clients.values())) {
            client.bridgeDown(err);
        }
        this.scheduleRestart();
    }

    lost(generation, err) {
        if (this.generation !== generation || this.stopping || this.state !== BridgeState.READY) {
            return;
        }
        log.warn(err.message);
        this.state = BridgeState.FAILED;
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
        this.outbox.drop();
        this.dropInbox();
        this.answers.dropKernels();   // no request may go to a kernel of the bridge that is gone
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
        if (this.process) {
            const proc = this.process;
            this.process = null;
            proc.kill();
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
        this.state = BridgeState.STOPPED;
        this.generation += 1;
        this.stopping = new Promise((resolve) => {
            this.outbox.flush();   // e.g. the close frames of the last nodes
            this.outbox.drop();
            this.dropInbox();
            if (this.ws) {
                this.ws.removeAllListeners("close");
                this.ws.on("error", () => {});
                this.ws.close();
                this.ws = null;
            }
            const proc = this.process;
            this.process = null;
            (proc ? proc.stop() : Promise.resolve()).then(() => {
                this.answers.close();
                resolve();
            });
        });
        return this.stopping;
    }
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

module.exports = { register, deregister, active, setLogger, bridgeOptions, Bridge, BridgeState };

// A throwaway pool for the editor: a bridge client of its own (id kx-editor-...), configured
// with the dialog's code, never deployed. The Run button executes one sample message on it;
// completion and hover ask its kernel (the bridge's inspect frame). close() removes the pool
// (its kernels are shut down, its working directory deleted) and lets the bridge go when it
// was the last client.
"use strict";
const crypto = require("crypto");
const bridges = require("./bridge");
const codec = require("./codec");
const { t } = require("./i18n");
const { POOL_STATES } = require("./protocol");

const CLOSE_WAIT_MS = 5000;
let counter = 0;

function settle() {
    let resolve;
    let reject;
    const promise = new Promise((res, rej) => {
        resolve = res;
        reject = rej;
    });
    promise.catch(() => {});
    return { promise, resolve, reject };
}

class Scratch {
    /**
     * @param bridgeOptions {python}|{url, token}|{} (lib/bridge.js register)
     * @param config        pool configuration (spec.json config_fields)
     */
    constructor(bridgeOptions, config) {
        this.id = `kx-editor-${crypto.randomBytes(4).toString("hex")}-${(++counter).toString(36)}`;
        this.bridgeOptions = bridgeOptions;
        this.config = config;
        this.bridge = null;
        this.ready = settle();
        this.closed = settle();
        this.requests = new Map();   // req_id -> {settle, events}
        this.progress = null;
        this.closing = false;
    }

    /** Resolves when the pool ran its setup; rejects with the setup's error (line included). */
    start() {
        this.bridge = bridges.register(this, this.bridgeOptions);
        return this.ready.promise;
    }

    // ---- bridge client ---------------------------------------------------------------

    bridgeUp(bridge) {
        this.bridge = bridge;
        if (!this.closing) {
            bridge.send({ type: "configure", node_id: this.id, config: this.config });
        }
    }

    bridgeDown(err) {
        this.ready.reject(err);
        for (const req of this.requests.values()) {
            req.settle.reject(err);
        }
        this.requests.clear();
        this.closed.resolve();
    }

    bridgeProgress(text) {
        this.progress = text;
    }

    frame(frame) {
        const req = frame.req_id ? this.requests.get(frame.req_id) : null;
        switch (frame.type) {
        case "pool_state":
            this.kernelUid = frame.kernel_uid;
            if (frame.state === POOL_STATES.READY) {
                this.ready.resolve();
            } else if (frame.state === POOL_STATES.ERROR) {
                this.ready.reject(Object.assign(new Error((frame.error && frame.error.message) || frame.detail || "setup failed"), { detail: frame.error || null }));
            } else if (frame.state === POOL_STATES.CLOSED) {
                this.closed.resolve();
            }
            break;
        case "result":
        case "inspect_reply":
            if (req) {
                this.requests.delete(frame.req_id);
                req.settle.resolve(Object.assign({ events: req.events }, frame));
            } else if (frame.outputs) {
                codec.discardBlobs(frame, this.bridge && this.bridge.blobDir);
            }
            break;
        case "send":
        case "status":
        case "log":
        case "done":
            this.event(req, frame);
            break;
        case "error":
            if (req) {
                this.requests.delete(frame.req_id);
                req.settle.reject(Object.assign(new Error(frame.error ? frame.error.message : "error"), { detail: frame.error || null }));
            } else if (!frame.req_id) {
                this.ready.reject(Object.assign(new Error(frame.error ? frame.error.message : "error"), { detail: frame.error || null }));
            }
            break;
        case "closed":
            this.closed.resolve();
            break;
        default:
            break;
        }
    }

    /** send/status/log frames of a run (or outside one: given to the latest run). */
    event(req, frame) {
        const target = req || Array.from(this.requests.values()).pop();
        if (target) {
            target.events.push(frame);
        } else if (frame.outputs) {
            codec.discardBlobs(frame, this.bridge && this.bridge.blobDir);
        }
    }

    // ---- requests ----------------------------------------------------------------------

    request(frame) {
        const reqId = `${this.id}-${(++counter).toString(36)}`;
        const req = { settle: settle(), events: [] };
        this.requests.set(reqId, req);
        if (!this.bridge || !this.bridge.send(Object.assign({ node_id: this.id, req_id: reqId }, frame))) {
            this.requests.delete(reqId);
            req.settle.reject(new Error(t("kernelexec.error.connectionLost")));
        }
        return req.settle.promise;
    }

    /** Run the code on `msg` (a JSON value from the editor): the result frame, with `events`. */
    execute(msg) {
        return this.request({ type: "execute", msg: codec.encodeInline(msg, "msg") });
    }

    /** Jupyter completion (op complete) or help (op inspect) from the pool's kernel. */
    inspect(op, code, cursorPos) {
        return this.request({ type: "inspect", op, code, cursor_pos: cursorPos });
    }

    /** Remove the pool, kernels and working directory; never rejects. */
    async close() {
        if (this.closing) {
            return this.closed.promise;
        }
        this.closing = true;
        if (this.bridge && this.bridge.send({ type: "close", node_id: this.id, removed: true })) {
            let timer;
            const waited = new Promise((resolve) => {
                timer = setTimeout(resolve, CLOSE_WAIT_MS);
            });
            await Promise.race([this.closed.promise, waited]);
            clearTimeout(timer);
        }
        this.closed.resolve();
        await bridges.deregister(this, this.bridge);
    }
}

module.exports = { Scratch };

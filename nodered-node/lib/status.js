// The node's status: pool state from pool_state frames (mode, busy/total, queue), errors in red,
// or the status the Python code set with node.status(). Updates are coalesced, never per message.
"use strict";
const { t } = require("./i18n");
const { POOL_STATES } = require("./protocol");

const COALESCE_MS = 250;

class PoolStatus {
    constructor(node, mode) {
        this.node = node;
        this.mode = mode;
        this.shown = null;
        this.next = null;
        this.userStatus = null;
        this.timer = null;
        this.stopped = false;
    }

    starting() {
        this.show({ fill: "yellow", shape: "ring", text: t("kernelexec.status.starting", { mode: this.mode }) }, true);
    }

    /** Setting up Python (lib/python_setup.js), e.g. "setting up Python: installing 9 packages…". */
    progress(text) {
        this.show({ fill: "yellow", shape: "ring", text: truncate(text) }, true);
    }

    error(text) {
        this.show({ fill: "red", shape: "ring", text: truncate(text) }, true);
    }

    /** A pool_state frame. */
    pool(frame) {
        this.poolState = frame;
        if (frame.state === POOL_STATES.ERROR) {
            const err = frame.error || {};
            this.error(err.message || frame.detail || t("kernelexec.status.error"));
        } else if (frame.state === POOL_STATES.STARTING || frame.state === POOL_STATES.INSTALLING) {
            const text = t("kernelexec.status." + frame.state, { mode: this.mode }) + (frame.detail ? " " + frame.detail : "");
            this.show({ fill: "yellow", shape: "ring", text: truncate(text) }, true);
        } else if (frame.state === POOL_STATES.READY) {
            // a status set by the code stays until the code clears it (or an error replaces it)
            this.show(this.userStatus || this.load(frame), Boolean(this.userStatus));
        }
    }

    load(frame) {
        const busy = frame.busy || 0;
        const total = frame.total || 0;
        const queued = frame.queued || 0;
        const starting = frame.starting || 0;   // kernels still coming up: the pool serves meanwhile
        const text = t(queued ? "kernelexec.status.queued" : "kernelexec.status.ready", { mode: this.mode, busy, total, queued }) +
            (starting > 0 ? t("kernelexec.status.alsoStarting", { count: starting }) : "");
        const fill = queued > 0 ? "yellow" : busy > 0 ? "blue" : "green";
        return { fill, shape: "dot", text };
    }

    /** node.status() from Python: {} clears it and brings the pool status back. */
    user(status) {
        if (status && Object.keys(status).length > 0) {
            this.userStatus = status;
            this.show(status, true);
        } else {
            this.userStatus = null;
            const ready = this.poolState && this.poolState.state === POOL_STATES.READY;
            this.show(ready ? this.load(this.poolState) : {}, true);
        }
    }

    show(status, now) {
        if (this.stopped) {
            return;
        }
        this.next = status;
        if (now) {
            this.flush();
        } else if (!this.timer) {
            this.timer = setTimeout(() => this.flush(), COALESCE_MS);
        }
    }

    flush() {
        clearTimeout(this.timer);
        this.timer = null;
        const key = JSON.stringify(this.next);
        if (key !== this.shown) {
            this.shown = key;
            this.node.status(this.next);
        }
    }

    stop() {
        clearTimeout(this.timer);
        this.timer = null;
        this.stopped = true;
    }
}

function truncate(text) {
    const s = String(text || "").split("\n")[0];
    return s.length > 80 ? s.slice(0, 77) + "..." : s;
}

module.exports = { PoolStatus };

// The bridge process this Node-RED runtime starts: `python -m kernelexec serve`, supervised.
//
// A BridgeProcess spawns it (in its own process group, with the node's end of a socket pair as
// fd 3 unless KERNELEXEC_BRIDGE_TRANSPORT=websocket), reads its ready line on stdout, logs its
// stderr (and keeps the tail, to say why it exited early), and stops it: stdin EOF
// (--watch-stdin), then SIGTERM, then SIGKILL. It knows nothing of the protocol: lib/bridge.js
// connects to what it announces and decides what an exit means.
//
// Handlers (all called with this BridgeProcess's generation settled by the caller):
//   ready(info)            the ready line ({port, url, ws_url, ...}); the socket pair is `socket`
//   notReady(error)        no ready line within READY_TIMEOUT_MS
//   failed(error)          it could not be spawned (no such Python, ...)
//   exited(error, code)    it exited; `error` says why in the user's words (BRIDGE_FAILED)
"use strict";
const { spawn } = require("child_process");
const readline = require("readline");
const pythonSetup = require("./python_setup");
const { t } = require("./i18n");

const READY_TIMEOUT_MS = 60000;
const STOP_GRACE_MS = 3000;   // stdin EOF, then SIGTERM after this, then SIGKILL after twice this
const STDERR_TAIL = 16384;
const CMDLINE_ROOM = 1024;   // kernelexec/handles/early.py ROOM: the command line room of its forked kernels
const REQUIRED_MODULES = /No module named '?([A-Za-z0-9_.]+)'?/;

let log = { debug() {}, info() {}, warn() {}, error() {} };

function setLogger(logger) {
    if (logger) {
        log = logger;
    }
}

function bridgeError(code, message, hint) {
    const err = new Error(message);
    err.code = code;
    err.hint = hint || null;
    return err;
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

/**
 * Whether a bridge this runtime starts is spoken to over an inherited socket pair (the
 * default) or over its WebSocket like any other client (KERNELEXEC_BRIDGE_TRANSPORT=websocket:
 * for comparison and troubleshooting).
 */
function useSocketPair() {
    return process.env.KERNELEXEC_BRIDGE_TRANSPORT !== "websocket";
}

class BridgeProcess {
    constructor(python, token, handlers) {
        this.python = python;
        this.token = token;
        this.handlers = handlers;
        this.child = null;
        this.stderrTail = "";
        this.readyTimer = null;
    }

    /** The node's end of the socket pair (fd 3), or null over the WebSocket. */
    get socket() {
        return this.child && this.child.stdio[3] ? this.child.stdio[3] : null;
    }

    get running() {
        return this.child !== null && this.child.exitCode === null && this.child.signalCode === null;
    }

    spawn() {
        // -X kernelexec_cmdline_room: room in the bridge's command line for its forked kernels' own;
        // with it the bridge forks its kernel template first thing instead of spawning it
        // (kernelexec/handles/early.py). An -X option: a bridge that does not know it ignores it.
        const room = `kernelexec_cmdline_room=${" ".repeat(CMDLINE_ROOM)}`;
        const args = ["-X", room, "-m", "kernelexec", "serve", "--port", "0", "--watch-stdin", "--parent-pid", String(process.pid)];
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
            this.handlers.failed(this.spawnError(err));
            return;
        }
        this.child = child;
        child.on("error", (err) => this.handlers.failed(this.spawnError(err)));
        child.stdin.on("error", () => {});
        child.stderr.on("data", (chunk) => {
            this.stderrTail = (this.stderrTail + chunk.toString()).slice(-STDERR_TAIL);
        });
        readline.createInterface({ input: child.stderr }).on("line", stderrLine);
        readline.createInterface({ input: child.stdout }).on("line", (line) => this.stdoutLine(line));
        child.on("exit", (code, signal) => {
            clearTimeout(this.readyTimer);
            this.handlers.exited(this.exitError(code, signal), code === null ? signal : code);
        });
        this.readyTimer = setTimeout(() => {
            this.handlers.notReady(bridgeError("BRIDGE_FAILED", t("kernelexec.error.bridgeNotReady", { python: this.python, seconds: READY_TIMEOUT_MS / 1000 })));
        }, READY_TIMEOUT_MS);
        log.info(t("kernelexec.log.bridgeStarting", { python: this.python, pid: child.pid }));
    }

    stdoutLine(line) {
        let info = null;
        try {
            info = JSON.parse(line);
        } catch (ignored) {
            // not the ready line
        }
        if (!this.readyTimer || !info || typeof info !== "object" || !(info.port || info.url)) {
            log.debug("[kernelexec bridge] " + line);
            return;
        }
        clearTimeout(this.readyTimer);
        this.readyTimer = null;
        this.handlers.ready(info);
    }

    spawnError(err) {
        if (err.code === "ENOENT") {
            return bridgeError("BRIDGE_FAILED", t("kernelexec.error.pythonNotFound", { python: this.python }),
                t("kernelexec.hint.installPython", { python: this.python }));
        }
        return bridgeError("BRIDGE_FAILED", t("kernelexec.error.spawnFailed", { python: this.python, error: err.message }));
    }

    exitError(code, signal) {
        const tail = this.stderrTail.trim();
        const missing = REQUIRED_MODULES.exec(tail);
        if (missing) {
            const hint = t("kernelexec.hint.installKernelexec", { python: this.python, package: pythonSetup.packageHint() });
            return bridgeError("BRIDGE_FAILED", t("kernelexec.error.missingModule", { python: this.python, module: missing[1] }) + " " + hint, hint);
        }
        const last = tail.split("\n").slice(-3).join(" | ");
        return bridgeError("BRIDGE_FAILED", t("kernelexec.error.bridgeExited", { python: this.python, code: code === null ? signal : code, stderr: last || "-" }));
    }

    /** At once (a failed or lost bridge): SIGTERM, SIGKILL after STOP_GRACE_MS. */
    kill(signal) {
        const child = this.child;
        clearTimeout(this.readyTimer);
        if (!child) {
            return;
        }
        child.stdin.end();
        child.kill(signal || "SIGTERM");
        setTimeout(() => child.exitCode === null && child.signalCode === null && child.kill("SIGKILL"), STOP_GRACE_MS).unref();
    }

    /** In order (the last node is gone): stdin EOF, SIGTERM after a grace, then SIGKILL. */
    stop() {
        const child = this.child;
        clearTimeout(this.readyTimer);
        return new Promise((resolve) => {
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
    }
}

module.exports = { BridgeProcess, bridgeError, setLogger, useSocketPair };

// Shared set-up for the end-to-end specs: a real Node-RED runtime (node-red-node-test-helper),
// the real bridge spawned by the node itself, real kernels. Nothing is mocked.
"use strict";
const fs = require("fs");
const path = require("path");
const helper = require("node-red-node-test-helper");
const bridges = require("../lib/bridge");

const VENV_PYTHON = path.join(__dirname, "..", "..", ".venv", "bin", "python");
if (!process.env.KERNELEXEC_PYTHON && fs.existsSync(VENV_PYTHON)) {
    process.env.KERNELEXEC_PYTHON = VENV_PYTHON;
}
// KERNELEXEC_NODE_RED=5 runs the specs on Node-RED 5.0.x (the node-red-5 devDependency, an npm
// alias), anything else on the node-red devDependency (4.1.x).
const RUNTIME = process.env.KERNELEXEC_NODE_RED === "5" ? "node-red-5" : "node-red";
const RUNTIME_DIR = path.dirname(require.resolve(RUNTIME + "/package.json"));
helper.init(require.resolve(RUNTIME));

/** @node-red/* of the chosen runtime: nested in node-red-5, hoisted next to node-red. */
function nodeRedPackage(name) {
    const nested = path.join(RUNTIME_DIR, "node_modules", "@node-red", name);
    return fs.existsSync(nested) ? nested : path.join(RUNTIME_DIR, "..", "@node-red", name);
}

const NODES = path.join(nodeRedPackage("nodes"), "core");
const NODE_RED_VERSION = require(path.join(RUNTIME_DIR, "package.json")).version;
const kernelexecNode = require("../nodes/kernelexec.js");
const catchNode = require(path.join(NODES, "common", "25-catch.js"));
const completeNode = require(path.join(NODES, "common", "24-complete.js"));
const statusNode = require(path.join(NODES, "common", "25-status.js"));
const httpInNode = require(path.join(NODES, "network", "21-httpin.js"));
const linkNode = require(path.join(NODES, "common", "60-link.js"));
const functionNode = require(path.join(NODES, "function", "10-function.js"));

let loaded = false;

/** helper.load, remembered so that unload() runs once however a test ends. */
async function load(nodes, flow, credentials) {
    loaded = true;
    await helper.load(nodes, flow, credentials || {});
}

async function unload() {
    if (loaded) {
        loaded = false;
        await helper.unload();
    }
}

/**
 * Give the loaded runtime the context stores of settings.js `contextStorage` (after load():
 * helper.load() starts the runtime with the default memory store). Resolves with restore(),
 * which closes them again.
 */
async function contextStores(contextStorage) {
    const context = helper._context;
    context.init({ contextStorage });
    await context.load();
    return async () => {
        await context.clean({ allNodes: {} });
        await context.close();
    };
}

/** A flow on one tab: every node gets z. */
function tab(nodes) {
    return [{ id: "tab1", type: "tab", label: "test" }].concat(nodes.map((n) => Object.assign({ z: "tab1" }, n)));
}

/** Resolve with the next `count` messages a helper node receives. */
function messages(node, count, timeoutMs) {
    return new Promise((resolve, reject) => {
        const got = [];
        const timer = setTimeout(() => reject(new Error(`${node.id} received ${got.length} of ${count} messages`)), timeoutMs || 40000);
        node.on("input", (msg) => {
            got.push(msg);
            if (got.length === count) {
                clearTimeout(timer);
                resolve(got);
            }
        });
    });
}

/** Resolve with the first call of node.<method> (status, error, warn, log) matching `test`. */
function call(node, method, test, timeoutMs) {
    return new Promise((resolve, reject) => {
        const seen = [];
        const timer = setTimeout(() => reject(new Error(`no matching ${method} on ${node.id}; saw ${JSON.stringify(seen)}`)), timeoutMs || 40000);
        const listener = (c) => {
            seen.push(c.args[0]);
            if (!test || test(c.args[0], c.args)) {
                clearTimeout(timer);
                node.removeListener("call:" + method, listener);
                resolve(c.args);
            }
        };
        node.on("call:" + method, listener);
    });
}

/** parent pid of every process, from /proc. */
function processTable() {
    const table = new Map();
    for (const entry of fs.readdirSync("/proc")) {
        if (!/^\d+$/.test(entry)) {
            continue;
        }
        try {
            const stat = fs.readFileSync(`/proc/${entry}/stat`, "utf8");
            const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
            table.set(Number(entry), { ppid: Number(fields[1]), state: fields[0] });
        } catch (ignored) {
            // the process ended while we looked
        }
    }
    return table;
}

/** The pids of `pid` and all its descendants. */
function processTree(pid) {
    const table = processTable();
    const out = [pid];
    for (let i = 0; i < out.length; i++) {
        for (const [child, info] of table) {
            if (info.ppid === out[i]) {
                out.push(child);
            }
        }
    }
    return out.filter((p) => table.has(p));
}

function alive(pid) {
    const info = processTable().get(pid);
    return Boolean(info) && info.state !== "Z";
}

/** The bridge processes this Node-RED runtime started, and their kernels. */
function bridgeProcesses() {
    return bridges.active().filter((b) => b.child).flatMap((b) => processTree(b.child.pid));
}

async function waitFor(predicate, timeoutMs, what) {
    const end = Date.now() + (timeoutMs || 30000);
    while (Date.now() < end) {
        if (await predicate()) {
            return;
        }
        await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error("timed out waiting for " + (what || "a condition"));
}

/**
 * Resolve once the bridge has answered a ping: every frame it sent before the pong has been
 * dispatched to the nodes by then (frames are dispatched in order). Then nextTurn() lets
 * Node-RED deliver what those frames sent (its deliveries are setImmediate callbacks).
 */
function bridgeRoundTrip(timeoutMs) {
    const [bridge] = bridges.active();
    const id = `sync-${process.hrtime.bigint()}`;
    return new Promise((resolve, reject) => {
        const done = (err) => {
            clearTimeout(timer);
            delete bridge.dispatch; // the prototype's method again
            if (err) {
                reject(err);
            } else {
                resolve();
            }
        };
        const timer = setTimeout(() => done(new Error("no pong from the bridge")), timeoutMs || 30000);
        bridge.dispatch = function (frame, generation) {
            if (frame && frame.type === "pong" && frame.id === id) {
                done();
                return undefined;
            }
            return Object.getPrototypeOf(bridge).dispatch.call(this, frame, generation);
        };
        if (!bridge.send({ type: "ping", id })) {
            done(new Error("the bridge is not connected"));
        }
    });
}

/** One turn of the event loop: setImmediate callbacks queued before it have run. */
function nextTurn() {
    return new Promise((resolve) => setImmediate(resolve));
}

/** Resolve once `file` exists (written by the Python code under test), polling. */
function fileAppears(file, timeoutMs) {
    return waitFor(() => fs.existsSync(file), timeoutMs || 60000, file);
}

const tempDirs = [];
process.on("exit", () => tempDirs.forEach((dir) => fs.rmSync(dir, { recursive: true, force: true })));

/** A fresh temporary directory for files the test and its Python code exchange (removed at exit). */
function tempDir() {
    const dir = fs.mkdtempSync(path.join(require("os").tmpdir(), "kx-spec-"));
    tempDirs.push(dir);
    return dir;
}

/** Blob files written by this process (kernelexec-<our pid>-...). */
function ourBlobFiles() {
    const dir = fs.existsSync("/dev/shm") ? "/dev/shm" : require("os").tmpdir();
    return fs.readdirSync(dir).filter((f) => f.startsWith(`kernelexec-${process.pid}-`));
}

function allBlobFiles(pids) {
    const dir = fs.existsSync("/dev/shm") ? "/dev/shm" : require("os").tmpdir();
    return fs.readdirSync(dir).filter((f) => pids.some((pid) => f.startsWith(`kernelexec-${pid}-`)));
}

/**
 * Keep the default bridge up across the tests of a describe block (a client that only holds a
 * reference), so that each test pays for its kernels but not for a bridge start. Returns stop().
 */
function keepBridge() {
    const keeper = { id: "test-bridge-keeper", bridgeUp() {}, bridgeDown() {}, frame() {} };
    const bridge = bridges.register(keeper, {});
    return () => bridges.deregister(keeper, bridge);
}

/** Wrap an async test body so that assertion errors reach mocha's done. */
function check(done, fn) {
    return (...args) => {
        try {
            fn(...args);
        } catch (err) {
            done(err);
        }
    };
}

module.exports = {
    helper,
    NODES,
    NODE_RED_VERSION,
    nodeRedPackage,
    nodes: { kernelexecNode, catchNode, completeNode, statusNode, httpInNode, linkNode, functionNode },
    contextStores,
    tab,
    load,
    unload,
    messages,
    call,
    processTree,
    alive,
    bridgeProcesses,
    waitFor,
    bridgeRoundTrip,
    nextTurn,
    fileAppears,
    tempDir,
    ourBlobFiles,
    allBlobFiles,
    check,
    keepBridge,
};

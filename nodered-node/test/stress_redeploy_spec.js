// Stress: a redeploy storm. A flow with several python nodes (hot with 2 workers, cold, with
// setup and stop code) is redeployed 50 times in a row with changed code, without waiting for
// the pools to be ready, while messages keep arriving. No process and no file accumulates, every
// message ends exactly once, and the last deploy works. See docs/reliability.md.
"use strict";
const assert = require("assert");
const fs = require("fs");
const bridges = require("../lib/bridge");
const S = require("./support");

const { helper } = S;
const N = S.nodes;
const DEPLOYS = 50;

function flow(version) {
    const code = `msg['payload'] = [${version}, msg['payload']]\nreturn msg`;
    const node = (id, extra) => Object.assign({ id, type: "kernelexec", name: "", func: code, outputs: 1, timeout: 0, wires: [["out"]] }, extra);
    return S.tab([
        node("pyHot", { mode: "hot", workers: 2 }),
        node("pyCold", { mode: "cold", workers: 1 }),
        node("pyLife", { mode: "hot", workers: 1, initialize: "import tempfile\nstate = tempfile.TemporaryFile()", finalize: "state.close()" }),
        { id: "c1", type: "catch", scope: null, uncaught: false, wires: [["caught"]] },
        { id: "out", type: "helper" },
        { id: "caught", type: "helper" },
    ]);
}

/** Kernels below the bridge: distinct connection files. A cold kernel's spare child (forked
 * ahead of its next message, coldfork.fork_ahead) and its zygote (kernel/zygote.py) share
 * its kernel's command line. */
function kernelCount(pid) {
    const files = new Set();
    for (const p of S.processTree(pid).slice(1)) {
        try {
            const argv = fs.readFileSync(`/proc/${p}/cmdline`, "utf8").split("\0");
            if (argv.includes("-f")) { // not the kernel template (kernelexec/handles/template.py)
                files.add(argv[argv.indexOf("-f") + 1]);
            }
        } catch (ignored) {
            // the process ended while we looked
        }
    }
    return files.size;
}

describe("stress: redeploy storm", function () {
    this.timeout(240000);

    afterEach(async function () {
        await S.unload();
    });

    it(`redeploys a flow of three python nodes ${DEPLOYS} times; nothing accumulates, the last deploy works`, async function () {
        await S.load([N.kernelexecNode, N.catchNode], flow(0));
        await S.call(helper.getNode("pyHot"), "status", (s) => s && s.fill === "green", 30000);
        const settledKernels = 4; // 2 hot workers, 1 cold kernel, 1 with setup/stop
        const fdsBefore = fs.readdirSync("/proc/self/fd").length;
        const seen = new Set();
        const remember = () => S.bridgeProcesses().forEach((pid) => seen.add(pid));
        remember();

        const ends = new Map();
        const count = (msg) => ends.set(msg.seq, (ends.get(msg.seq) || 0) + 1);
        const listening = new WeakSet();
        let sent = 0;
        let peak = 0;
        const t0 = Date.now();
        for (let v = 1; v <= DEPLOYS; v++) {
            // a full deploy replaces every node (the last one out stops the bridge, the next
            // one starts a new bridge); a "nodes" deploy replaces the changed ones
            await helper.setFlows(flow(v), v % 2 ? "full" : "nodes");
            for (const sink of [helper.getNode("out"), helper.getNode("caught")]) {
                if (!listening.has(sink)) { // a "nodes" deploy keeps the unchanged sinks
                    listening.add(sink);
                    sink.on("input", count);
                }
            }
            for (const id of ["pyHot", "pyCold", "pyLife"]) {
                helper.getNode(id).receive({ payload: sent, seq: sent++ });
            }
            remember();
            peak = Math.max(peak, S.bridgeProcesses().length);
        }
        const stormMs = Date.now() - t0;

        // the last deploy works: every node answers with the last code
        const got = [];
        helper.getNode("out").on("input", (msg) => String(msg.seq).startsWith("last-") && got.push(msg));
        for (const id of ["pyHot", "pyCold", "pyLife"]) {
            helper.getNode(id).receive({ payload: "last", seq: "last-" + id });
        }
        const lastErrors = [];
        helper.getNode("caught").on("input", (msg) => String(msg.seq).startsWith("last-") && lastErrors.push(`${msg.seq}: ${msg.error.message}`));
        try {
            await S.waitFor(() => got.length + lastErrors.length === 3, 60000, "the last deploy's nodes to answer");
        } catch (err) {
            const status = ["pyHot", "pyCold", "pyLife"].map((id) => `${id}: ${JSON.stringify(helper.getNode(id).status.lastCall && helper.getNode(id).status.lastCall.args)}`);
            err.message += `; answered ${got.map((m) => m.seq)}, errors ${lastErrors}; status ${status.join(", ")}`;
            throw err;
        }
        assert.deepStrictEqual(lastErrors, []);
        for (const msg of got) {
            assert.deepStrictEqual(msg.payload, [DEPLOYS, "last"]);
        }
        // messages sent during the storm ended at most once (the old nodes' listeners are gone,
        // so messages of closed nodes may have ended where nobody listened anymore)
        for (const [seq, n] of ends) {
            assert.strictEqual(n, 1, `message ${seq} ended ${n} times`);
        }
        // one bridge with its kernels; every earlier bridge and kernel is gone; no fd leaked
        assert.strictEqual(bridges.active().length, 1);
        const bridgePid = bridges.active()[0].child.pid;
        try {
            await S.waitFor(() => kernelCount(bridgePid) === settledKernels, 20000, `kernels back to ${settledKernels}`);
        } catch (err) {
            const tree = S.processTree(bridgePid).map((pid) => {
                try {
                    return `${pid} ${fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ").slice(0, 120)}`;
                } catch (ignored) {
                    return `${pid} (gone)`;
                }
            });
            err.message += `; the bridge's process tree: ${tree.join(" | ")}`;
            throw err;
        }
        // a cold child that just answered lives on for 20 ms before the reaper kills it, so
        // wait for the tree to settle: what must not happen is that processes accumulate
        const bound = 1 + 1 + settledKernels + 2;
        await S.waitFor(() => S.processTree(bridgePid).length <= bound, 20000,
            `the bridge, kernel template, ${settledKernels} kernels, at most one cold spare and one zygote (tree: ${S.processTree(bridgePid).length})`);
        const current = new Set(S.processTree(bridgePid));
        const old = [...seen].filter((pid) => !current.has(pid));
        await S.waitFor(() => old.every((pid) => !S.alive(pid)), 20000, "earlier bridges and kernels to exit: " + old.filter(S.alive));
        const fdsAfter = fs.readdirSync("/proc/self/fd").length;
        assert.ok(fdsAfter <= fdsBefore + 10, `Node-RED file descriptors ${fdsBefore} -> ${fdsAfter}`);
        const file = process.env.KERNELEXEC_STRESS_FIGURES;
        if (file) {
            fs.appendFileSync(file, JSON.stringify({ spec: "redeploy", deploys: DEPLOYS, stormMs, settledKernels, peakProcesses: peak, processesSeen: seen.size, fdsBefore, fdsAfter, ended: ends.size, sent }) + "\n");
        }
        const tree = [...seen, ...current];
        await S.unload();
        await S.waitFor(() => tree.every((pid) => !S.alive(pid)), 20000, "bridge and kernels to exit");
        assert.deepStrictEqual(S.allBlobFiles(tree.concat([process.pid])), []);
    });
});

// Function-node parity (issue 18), end to end on a real Node-RED (4.1.x, or 5.0.x with
// KERNELEXEC_NODE_RED=5), the real bridge and real kernels: what a function node's code can do,
// the python node's code can do, read the same way by the rest of the flow.
"use strict";
const assert = require("assert");
const fs = require("fs");
const os = require("os");
const path = require("path");
const bridges = require("../lib/bridge");
const S = require("./support");

const { helper } = S;
const N = S.nodes;

function py(id, func, extra) {
    return Object.assign({ id, type: "kernelexec", name: "", func, outputs: 1, mode: "hot", workers: 1, timeout: 0, wires: [["out"]] }, extra);
}

/** Run `code` on one message through python node n1 (on tab1, wired to helper "out"). */
async function runOnce(nodes, flow, msg) {
    await S.load(nodes, flow);
    const got = S.messages(helper.getNode("out"), 1);
    helper.getNode("n1").receive(msg || { payload: 1 });
    return (await got)[0];
}

describe("function-node parity (real Node-RED " + S.NODE_RED_VERSION + ", real bridge, real kernels)", function () {
    this.timeout(60000);
    let releaseBridge = null;

    before(function () {
        releaseBridge = S.keepBridge();
    });

    after(async function () {
        await releaseBridge();
        assert.deepStrictEqual(bridges.active(), []);
    });

    afterEach(async function () {
        await S.unload();
    });

    it("uses named context stores: store=, lists of keys, context.global_, Node-RED's errors", async function () {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kx-context-"));
        const code = [
            "context.set('a', 1)",
            "context.set('a', 2, store='file')",
            "flow.set(['x', 'y'], [10, 20], store='file')",
            "global_.set('g', 'G', store='file')",
            "context.set('u', 5, store='nope')",   // Node-RED logs a warning and uses the default store
            "try:",
            "    context.set('', 1)",
            "    bad = None",
            "except Exception as exc:",
            "    bad = f'{type(exc).__name__}: {exc}'",
            "msg['payload'] = {",
            "    'a': context.get('a'), 'a_file': context.get('a', store='file'),",
            "    'keys_file': sorted(context.keys(store='file')), 'keys': sorted(context.keys()),",
            "    'xy': flow.get(['x', 'y', 'z'], 'dflt', store='file'), 'x_default': flow.get('x'),",
            "    'g': context.global_.get('g', store='file'), 'fx': context.flow.get('x', store='file'),",
            "    'u': context.get('u'), 'bad': bad,",
            "}",
            "return msg",
        ].join("\n");
        await S.load(N.kernelexecNode, S.tab([py("n1", code), { id: "out", type: "helper" }]));
        const restore = await S.contextStores({
            memory: { module: "memory" },
            file: { module: "localfilesystem", config: { dir, cache: false } },
        });
        try {
            const got = S.messages(helper.getNode("out"), 1);
            helper.getNode("n1").receive({ payload: 1 });
            const [msg] = await got;
            assert.deepStrictEqual(msg.payload, {
                a: 1, a_file: 2, keys_file: ["a"], keys: ["a", "u"],
                xy: [10, 20, "dflt"], x_default: null, g: "G", fx: 10, u: 5,
                bad: "ContextAccessError: node context set '' failed: Invalid context key",
            });
            // what JavaScript sees, in the stores themselves (the file store is on disk)
            const ctx = helper.getNode("n1").context();
            assert.strictEqual(await new Promise((r) => ctx.get("a", "file", (e, v) => r(v))), 2);
            assert.strictEqual(await new Promise((r) => ctx.flow.get("y", "file", (e, v) => r(v))), 20);
            assert.strictEqual(ctx.get("a", "memory"), 1);
            assert.ok(fs.readdirSync(dir).length > 0, "the file store wrote nothing");
        } finally {
            await restore();
            fs.rmSync(dir, { recursive: true, force: true });
        }
    });

    it("calls a link in ... link out (return) with node.linkcall, awaited or blocking, with Node-RED's errors", async function () {
        const code = [
            "out = {}",
            "answer = await node.linkcall('double', {'payload': msg['payload']}, timeout=10)",
            "out['async'] = answer['payload']",
            "out['blocking'] = node.linkcall_sync('li2', {'payload': 5})['payload']",   // by id, other tab
            "for name, target, timeout in [('missing', 'nope', 5), ('ambiguous', 'dup', 5), ('timeout', 'silent', 0.3)]:",
            "    try:",
            "        node.linkcall_sync(target, {'payload': 1}, timeout=timeout)",
            "    except Exception as exc:",
            "        out[name] = [type(exc).__name__, str(exc), isinstance(exc, TimeoutError)]",
            "try:",
            "    await node.linkcall('', {'payload': 1})",
            "except Exception as exc:",
            "    out['invalid'] = str(exc)",
            "msg['payload'] = out",
            "return msg",
        ].join("\n");
        const double = "msg.payload = msg.payload * 2;\nreturn msg;";
        const flow = [
            { id: "tab1", type: "tab", label: "one" }, { id: "tab2", type: "tab", label: "two" }, { id: "tab3", type: "tab", label: "three" },
            py("n1", code, { z: "tab1" }), { id: "out", type: "helper", z: "tab1" },
            { id: "li1", type: "link in", z: "tab1", name: "double", links: [], wires: [["f1"]] },
            { id: "f1", type: "function", z: "tab1", func: double, outputs: 1, wires: [["lo1"]] },
            { id: "lo1", type: "link out", z: "tab1", mode: "return", links: [], wires: [] },
            { id: "li2", type: "link in", z: "tab2", name: "triple", links: [], wires: [["f2"]] },
            { id: "f2", type: "function", z: "tab2", func: "msg.payload = msg.payload * 3;\nreturn msg;", outputs: 1, wires: [["lo2"]] },
            { id: "lo2", type: "link out", z: "tab2", mode: "return", links: [], wires: [] },
            { id: "li3", type: "link in", z: "tab2", name: "dup", links: [], wires: [] },
            { id: "li4", type: "link in", z: "tab3", name: "dup", links: [], wires: [] },
            { id: "li5", type: "link in", z: "tab3", name: "silent", links: [], wires: [] },
        ];
        const msg = await runOnce([N.kernelexecNode, N.linkNode, N.functionNode], flow, { payload: 21 });
        assert.deepStrictEqual(msg.payload, {
            async: 42,
            blocking: 15,
            missing: ["LinkCallError", "target link-in node 'nope' not found", false],
            ambiguous: ["LinkCallError", "Multiple link-in nodes named 'dup' found", false],
            timeout: ["LinkCallTimeout", "timeout", true],
            invalid: "Error link call target parameter is not valid, expected a string",
        });
    });

    it("asks Node-RED the same way from a cold-mode node (a forked process per message)", async function () {
        const code = "return {'payload': [env.get('NR_FLOW_ID'), node.linkcall_sync('echo', {'payload': 3})['payload'], flow.get(['a', 'b'])]}";
        const msg = await runOnce([N.kernelexecNode, N.linkNode], S.tab([
            py("n1", code, { mode: "cold" }), { id: "out", type: "helper" },
            { id: "li", type: "link in", name: "echo", links: [], wires: [["lo"]] },
            { id: "lo", type: "link out", mode: "return", links: [], wires: [] },
        ]));
        assert.deepStrictEqual(msg.payload, ["tab1", 3, [null, null]]);
    });

    it("logs node.trace() at Node-RED's trace level", async function () {
        await S.load(N.kernelexecNode, S.tab([py("n1", "node.trace('fine detail')\nnode.debug('detail')\nreturn msg"), { id: "out", type: "helper" }]));
        const n1 = helper.getNode("n1");
        const traced = S.call(n1, "trace", (text) => text === "fine detail");
        const debugged = S.call(n1, "debug", (text) => text === "detail");
        const debugCalls = [];
        n1.on("call:debug", (c) => debugCalls.push(c.args[0]));
        const got = S.messages(helper.getNode("out"), 1);
        n1.receive({ payload: 1 });
        await got;
        await traced;
        await debugged;
        assert.ok(!debugCalls.includes("fine detail"), "node.trace() also went out at debug level");
    });

    it("honours settings.js functionTimeout when the node sets no timeout", async function () {
        helper.settings({ functionTimeout: 0.5 });
        try {
            const slow = py("n1", "import time\ntime.sleep(30)\nreturn msg");
            delete slow.timeout;   // as imported from a flow file without it
            await S.load([N.kernelexecNode, N.catchNode], S.tab([
                slow, { id: "out", type: "helper" },
                { id: "c1", type: "catch", scope: ["n1"], uncaught: false, wires: [["caught"]] }, { id: "caught", type: "helper" },
            ]));
            const caught = S.messages(helper.getNode("caught"), 1, 15000);
            helper.getNode("n1").receive({ payload: 1 });
            const [err] = await caught;
            assert.strictEqual(err.error.code, "TIMEOUT");
            assert.match(err.error.message, /timeout of 0\.5 s/);
        } finally {
            helper.settings({ functionTimeout: 0 });
        }
    });

    it("reads env.get live: process variables set after deploy, flow and group variables, NR_* built-ins", async function () {
        delete process.env.KX_PARITY_LATE;
        const code = [
            "names = ['KX_PARITY_LATE', 'KERNELEXEC_TOKEN', 'FLOW_VAR', 'GROUP_VAR', 'NR_NODE_ID', 'NR_NODE_NAME', 'NR_NODE_PATH',",
            "         'NR_FLOW_ID', 'NR_FLOW_NAME', 'NR_GROUP_ID', 'NR_GROUP_NAME']",
            "msg['payload'] = {n: env.get(n) for n in names}",
            "msg['payload']['missing'] = env.get('KX_PARITY_NOT_SET', 'dflt')",
            "msg['payload']['path'] = node.path",
            "return msg",
        ].join("\n");
        await S.load(N.kernelexecNode, [
            { id: "tab1", type: "tab", label: "Parity flow", env: [{ name: "FLOW_VAR", value: "from the flow", type: "str" }] },
            { id: "g1", type: "group", z: "tab1", name: "Parity group", nodes: ["n1"], env: [{ name: "GROUP_VAR", value: "42", type: "num" }] },
            py("n1", code, { z: "tab1", g: "g1", name: "reader" }),
            { id: "out", type: "helper", z: "tab1" },
        ]);
        const n1 = helper.getNode("n1");
        const first = S.messages(helper.getNode("out"), 1);
        n1.receive({ payload: 1 });
        const [before] = await first;
        assert.deepStrictEqual(before.payload, {
            KX_PARITY_LATE: null, KERNELEXEC_TOKEN: null, FLOW_VAR: "from the flow", GROUP_VAR: 42,
            NR_NODE_ID: "n1", NR_NODE_NAME: "reader", NR_NODE_PATH: "tab1/n1",
            NR_FLOW_ID: "tab1", NR_FLOW_NAME: "Parity flow", NR_GROUP_ID: "g1", NR_GROUP_NAME: "Parity group",
            missing: "dflt", path: "tab1/n1",
        });
        process.env.KX_PARITY_LATE = "set after deploy";
        process.env.KERNELEXEC_TOKEN = "not for user code";   // kernelexec's secrets are never answered
        try {
            const second = S.messages(helper.getNode("out"), 1);
            n1.receive({ payload: 2 });
            const [after] = await second;
            assert.strictEqual(after.payload.KX_PARITY_LATE, "set after deploy");
            assert.strictEqual(after.payload.KERNELEXEC_TOKEN, null);
            // code run as another user (env `user`) gets what the flow sets, not Node-RED's process env
            const nodeops = require("../lib/nodeops");
            process.env.FLOW_VAR = "the process's";
            assert.strictEqual(nodeops.envGet(n1, "KX_PARITY_LATE", { sandboxed: true }), null);
            assert.strictEqual(nodeops.envGet(n1, "FLOW_VAR", { sandboxed: true }), "from the flow");
            assert.strictEqual(nodeops.envGet(n1, "NR_NODE_ID", { sandboxed: true }), "n1");
            assert.strictEqual(nodeops.envGet(n1, "KX_PARITY_LATE"), "set after deploy");
        } finally {
            delete process.env.FLOW_VAR;
            delete process.env.KX_PARITY_LATE;
            delete process.env.KERNELEXEC_TOKEN;
        }
    });

    it("gives a Catch node the same error object as the function node for node.error(text, msg) and node.done(text)", async function () {
        const pyCode = "if msg['payload'] == 'done':\n    node.done('Done with an error')\nelse:\n    node.error('This is an error', msg)\nreturn None";
        const jsCode = "if (msg.payload === 'done') {\n    node.done('Done with an error');\n} else {\n    node.error('This is an error', msg);\n}\nreturn null;";
        await S.load([N.kernelexecNode, N.functionNode, N.catchNode], S.tab([
            py("n1", pyCode, { name: "python side", wires: [[]] }),
            { id: "f1", type: "function", name: "js side", func: jsCode, outputs: 1, wires: [[]] },
            { id: "c1", type: "catch", scope: ["n1", "f1"], uncaught: false, wires: [["caught"]] }, { id: "caught", type: "helper" },
        ]));
        for (const payload of ["error", "done"]) {
            const caught = S.messages(helper.getNode("caught"), 2);
            helper.getNode("n1").receive({ payload });
            helper.getNode("f1").receive({ payload });
            const msgs = await caught;
            const py1 = msgs.find((m) => m.error.source.id === "n1");
            const js1 = msgs.find((m) => m.error.source.id === "f1");
            const shape = (e, id, type, name) => ({
                message: e.message, source: e.source, stack: e.stack, id, type, name,
            });
            assert.strictEqual(py1.error.message, payload === "done" ? "Done with an error" : "This is an error");
            assert.deepStrictEqual(
                shape(py1.error, py1.error.source.id, py1.error.source.type, py1.error.source.name),
                shape(Object.assign({}, js1.error, { source: Object.assign({}, js1.error.source, { id: "n1", type: "kernelexec", name: "python side" }) }), "n1", "kernelexec", "python side"),
            );
            assert.strictEqual(py1.error.source.count, 1);
        }
    });

    it("runs setup before messages that arrived while it ran, and timers started by setup keep sending", async function () {
        const setup = [
            "import threading, time",
            "time.sleep(0.5)",   // messages arrive meanwhile: they wait for setup
            "order = ['setup']",
            "ticker = threading.Event()",
            "def tick():",
            "    for i in range(2):",
            "        node.send({'payload': f'tick {i}'})",
            "threading.Timer(0.2, tick).start()",
        ].join("\n");
        const code = "order.append(msg['payload'])\nmsg['payload'] = list(order)\nreturn msg";
        await S.load(N.kernelexecNode, S.tab([
            py("n1", code, { initialize: setup, wires: [["out"]] }),
            { id: "out", type: "helper" },
        ]));
        const got = S.messages(helper.getNode("out"), 4);
        helper.getNode("n1").receive({ payload: "m1" });   // before the pool is ready
        helper.getNode("n1").receive({ payload: "m2" });
        const msgs = await got;
        const ran = msgs.filter((m) => Array.isArray(m.payload)).map((m) => m.payload);
        const ticks = msgs.filter((m) => typeof m.payload === "string").map((m) => m.payload);
        assert.deepStrictEqual(ran, [["setup", "m1"], ["setup", "m1", "m2"]]);
        assert.deepStrictEqual(ticks, ["tick 0", "tick 1"]);
    });
});

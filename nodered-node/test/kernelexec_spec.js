// End to end: flows with the kernelexec node on a real Node-RED runtime, the real bridge
// (spawned by the node with KERNELEXEC_PYTHON) and real IPython kernels.
"use strict";
const assert = require("assert");
const { execFileSync } = require("child_process");
const fs = require("fs");
const path = require("path");
const bridges = require("../lib/bridge");
const { PipeSocket } = require("../lib/pipe_socket");
const S = require("./support");

const { helper } = S;
const N = S.nodes;

function py(id, func, extra) {
    return Object.assign({ id, type: "kernelexec", name: "", func, outputs: 1, mode: "hot", workers: 1, timeout: 0, wires: [["out"]] }, extra);
}

/** One python node n1 (wired to helper "out") whose environment node e1 names the bridge `url`. */
function loadWithBridgeUrl(url, credentials, code = "return msg") {
    return S.load(N.kernelexecNode, [
        { id: "tab1", type: "tab" },
        { id: "e1", type: "kernelexec-env", url },
        py("n1", code, { z: "tab1", env: "e1" }),
        { id: "out", type: "helper", z: "tab1" },
    ], credentials && { e1: credentials });
}

async function load(nodes, flow) {
    await S.load(nodes, S.tab(flow));
}

describe("kernelexec node (real bridge, real kernels)", function () {
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

    it("runs function-style code on a message (hello)", async function () {
        await load(N.kernelexecNode, [
            py("n1", "msg['payload'] = 'hello ' + msg['payload']\nreturn msg"),
            { id: "out", type: "helper" },
        ]);
        const got = S.messages(helper.getNode("out"), 1);
        helper.getNode("n1").receive({ payload: "world", topic: "t" });
        const [msg] = await got;
        assert.strictEqual(msg.payload, "hello world");
        assert.strictEqual(msg.topic, "t");
    });

    it("sends to several outputs, several messages per output", async function () {
        await load(N.kernelexecNode, [
            py("n1", "return [msg, [{'payload': 1}, {'payload': 2}], None]", { outputs: 3, wires: [["o1"], ["o2"], ["o3"]] }),
            { id: "o1", type: "helper" }, { id: "o2", type: "helper" }, { id: "o3", type: "helper" },
        ]);
        const first = S.messages(helper.getNode("o1"), 1);
        const second = S.messages(helper.getNode("o2"), 2);
        let third = 0;
        helper.getNode("o3").on("input", () => { third += 1; });
        helper.getNode("n1").receive({ payload: "a" });
        const [m1] = await first;
        const [a, b] = await second;
        assert.strictEqual(m1.payload, "a");
        assert.deepStrictEqual([a.payload, b.payload], [1, 2]);
        assert.strictEqual(a._msgid, m1._msgid, "new messages carry the input's _msgid, as in the function node");
        await S.bridgeRoundTrip(); // all the bridge sent for the message is in,
        await S.nextTurn(); // and delivered
        assert.strictEqual(third, 0);
    });

    it("delivers node.send() during and after the execution, in order", async function () {
        const returned = path.join(S.tempDir(), "returned"); // the late send waits for it
        const code = [
            "import os, threading, time",
            "node.send({'payload': 'early'})",
            "def late():",
            `    while not os.path.exists(${JSON.stringify(returned)}):`,
            "        time.sleep(0.005)",
            "    node.send({'payload': 'late'})",
            "threading.Thread(target=late).start()",
            "msg['payload'] = 'result'",
            "return msg",
        ].join("\n");
        await load(N.kernelexecNode, [py("n1", code), { id: "out", type: "helper" }]);
        const got = S.messages(helper.getNode("out"), 3);
        const first = S.messages(helper.getNode("out"), 2);
        helper.getNode("n1").receive({ payload: 0 });
        await first;
        fs.writeFileSync(returned, ""); // the result is out: now the thread sends
        const msgs = await got;
        assert.deepStrictEqual(msgs.map((m) => m.payload), ["early", "result", "late"]);
    });

    it("reports a Python exception to a Catch node with the user traceback", async function () {
        await load([N.kernelexecNode, N.catchNode], [
            py("n1", "x = 1\nraise ValueError('bad value ' + str(msg['payload']))"),
            { id: "c1", type: "catch", scope: null, uncaught: false, wires: [["caught"]] },
            { id: "out", type: "helper" },
            { id: "caught", type: "helper" },
        ]);
        const got = S.messages(helper.getNode("caught"), 1);
        helper.getNode("n1").receive({ payload: 7 });
        const [msg] = await got;
        assert.strictEqual(msg.payload, 7);
        assert.match(msg.error.message, /^ValueError: bad value 7/);
        assert.match(msg.error.message, /line 2/);
        assert.strictEqual(msg.error.source.id, "n1");
        assert.match(msg.error.stack, /line 2/);
        assert.match(msg.error.stack, /ValueError/);
    });

    it("triggers Complete nodes, also when the code calls node.done() itself", async function () {
        const release = path.join(S.tempDir(), "release"); // n2 calls node.done() once it exists
        await load([N.kernelexecNode, N.completeNode], [
            py("n1", "return msg"),
            py("n2", `import os, threading, time\nnode.send(msg)\ndef later():\n    while not os.path.exists(${JSON.stringify(release)}):\n        time.sleep(0.005)\n    node.done()\nthreading.Thread(target=later).start()`, { wires: [["out2"]] }),
            { id: "k1", type: "complete", scope: ["n1", "n2"], uncaught: false, wires: [["completed"]] },
            { id: "out", type: "helper" }, { id: "out2", type: "helper" }, { id: "completed", type: "helper" },
        ]);
        const completed = S.messages(helper.getNode("completed"), 2);
        const firstCompleted = S.messages(helper.getNode("completed"), 1);
        const sent2 = S.messages(helper.getNode("out2"), 1);
        helper.getNode("n2").receive({ payload: 2 });
        helper.getNode("n1").receive({ payload: 1 });
        assert.strictEqual((await sent2)[0].payload, 2);
        await firstCompleted;
        fs.writeFileSync(release, ""); // only now does n2 call node.done()
        const [first, second] = await completed;
        assert.strictEqual(first.payload, 1, "n1 completes first: n2 waits for its node.done()");
        assert.strictEqual(second.payload, 2);
    });

    it("sends warnings and print() output to the log, node.error(text, msg) once to Catch", async function () {
        const code = "print('printed', msg['payload'])\nnode.warn('careful')\nif msg['payload'] == 'bad':\n    node.error('rejected', msg)\nreturn msg";
        await load([N.kernelexecNode, N.catchNode], [
            py("n1", code, { stdoutToMsg: true }),
            { id: "c1", type: "catch", scope: ["n1"], uncaught: false, wires: [["caught"]] },
            { id: "out", type: "helper" }, { id: "caught", type: "helper" },
        ]);
        const n1 = helper.getNode("n1");
        const warned = S.call(n1, "warn", (w) => w === "careful");
        const logged = S.call(n1, "log", (l) => /printed ok/.test(l));
        const got = S.messages(helper.getNode("out"), 1);
        n1.receive({ payload: "ok" });
        await warned;
        await logged;
        assert.strictEqual((await got)[0].stdout, "printed ok\n");
        let catches = 0;
        const caught = S.messages(helper.getNode("caught"), 1);
        helper.getNode("caught").on("input", () => { catches += 1; });
        n1.receive({ payload: "bad" });
        const [err] = await caught;
        assert.match(err.error.message, /rejected/);
        await S.bridgeRoundTrip(); // all the bridge sent for the message is in,
        await S.nextTurn(); // and delivered
        assert.strictEqual(catches, 1);
    });

    it("runs script-style code (result, output_topic, additional_data)", async function () {
        const code = "log(f'got {payload}')\nresult = {'doubled': payload * 2}\noutput_topic = f'math/{topic}'\nadditional_data = {'by': node_id}";
        await load(N.kernelexecNode, [py("n1", code), { id: "out", type: "helper" }]);
        const got = S.messages(helper.getNode("out"), 1);
        helper.getNode("n1").receive({ payload: 21, topic: "x" });
        const [msg] = await got;
        assert.deepStrictEqual(msg.payload, { doubled: 42 });
        assert.strictEqual(msg.topic, "math/x");
        assert.deepStrictEqual(msg.additionalData, { by: "n1" });
    });

    it("shows the pool status, then the status set from Python", async function () {
        await load([N.kernelexecNode, N.statusNode], [
            py("n1", "node.status({'fill': 'blue', 'shape': 'ring', 'text': 'seen ' + str(msg['payload'])})\nreturn msg"),
            { id: "out", type: "helper" },
        ]);
        const n1 = helper.getNode("n1");
        await S.call(n1, "status", (s) => s && s.fill === "green" && /hot 0\/1 busy/.test(s.text));
        const user = S.call(n1, "status", (s) => s && s.text === "seen 5");
        n1.receive({ payload: 5 });
        const [status] = await user;
        assert.deepStrictEqual(status, { fill: "blue", shape: "ring", text: "seen 5" });
    });

    it("answers from the first kernel up while another is still in its setup, and says so", async function () {
        // the first kernel to run the setup goes on; the other waits on a FIFO the test writes
        const dir = S.tempDir();
        const claimed = path.join(dir, "claimed");
        const gate = path.join(dir, "gate");
        execFileSync("mkfifo", [gate]);
        const setup = [
            "import os",
            `try:\n    os.close(os.open(${JSON.stringify(claimed)}, os.O_CREAT | os.O_EXCL))`,
            `except FileExistsError:\n    open(${JSON.stringify(gate)}).read()`,
        ].join("\n");
        await load(N.kernelexecNode, [py("n1", "return msg", { workers: 2, initialize: setup }), { id: "out", type: "helper" }]);
        const n1 = helper.getNode("n1");
        await S.call(n1, "status", (s) => s && /hot 0\/2 busy, 1 starting/.test(s.text));
        const got = S.messages(helper.getNode("out"), 1);
        n1.receive({ payload: "first" });
        assert.strictEqual((await got)[0].payload, "first");
        const everyone = S.call(n1, "status", (s) => s && s.text === "hot 0/2 busy");
        await fs.promises.writeFile(gate, "go");   // off the event loop: a FIFO's open waits for its reader
        await everyone;
    });

    it("reads and writes node, flow and global context, Buffers included", async function () {
        const code = [
            "n = context.get('count') or 0",
            "context.set('count', n + 1)",
            "flow.set('blob', b'\\x00\\x01\\x02')",
            "msg['payload'] = {'count': n + 1, 'greeting': global_.get('greeting'), 'keys': sorted(context.keys())}",
            "return msg",
        ].join("\n");
        await load(N.kernelexecNode, [py("n1", code), { id: "out", type: "helper" }]);
        const n1 = helper.getNode("n1");
        n1.context().global.set("greeting", "hi");
        const got = S.messages(helper.getNode("out"), 2);
        n1.receive({ payload: 1 });
        n1.receive({ payload: 2 });
        const msgs = await got;
        assert.deepStrictEqual(msgs.map((m) => m.payload.count), [1, 2]);
        assert.strictEqual(msgs[0].payload.greeting, "hi");
        assert.deepStrictEqual(msgs[1].payload.keys, ["count"]);
        assert.strictEqual(n1.context().get("count"), 2);
        assert.deepStrictEqual([...n1.context().flow.get("blob")], [0, 1, 2]);
    });

    it("answers an HTTP request (http in -> python -> http response)", async function () {
        let httpNode = null;
        const httpIn = (RED) => {
            httpNode = RED.httpNode;
            return N.httpInNode(RED);
        };
        await load([N.kernelexecNode, httpIn], [
            { id: "in", type: "http in", url: "/py", method: "post", wires: [["n1"]] },
            py("n1", "msg['payload'] = {'sum': sum(msg['payload']['numbers']), 'has_req': 'req' in msg}\nmsg['statusCode'] = 201\nreturn msg", { wires: [["res"]] }),
            { id: "res", type: "http response", statusCode: "" },
            { id: "in2", type: "http in", url: "/late", method: "get", wires: [["n2"]] },
            py("n2", "import threading\nthreading.Timer(0.3, lambda: node.send(dict(msg, payload='answered later'))).start()\nreturn None", { wires: [["res"]] }),
        ]);
        // A real HTTP request on an ephemeral server serving Node-RED's httpNode app.
        // msg.req / msg.res never reach Python; the node puts them back on the output message.
        const request = require("supertest");
        const res = await request(httpNode).post("/py").send({ numbers: [1, 2, 3] }).set("Content-Type", "application/json");
        assert.strictEqual(res.status, 201);
        assert.deepStrictEqual(res.body, { sum: 6, has_req: false });
        // a node.send() after the message finished: matched by _msgid, msg.res is still put back
        const late = await request(httpNode).get("/late");
        assert.strictEqual(late.status, 200);
        assert.strictEqual(late.text, "answered later");
    });

    it("round-trips a 16 MiB Buffer through blob files and leaves none behind", async function () {
        await load(N.kernelexecNode, [
            py("n1", "data = msg['payload']\nassert isinstance(data, bytes), type(data)\nmsg['payload'] = data[::-1]\nmsg['size'] = len(data)\nreturn msg"),
            { id: "out", type: "helper" },
        ]);
        const input = Buffer.alloc(16 * 1024 * 1024);
        for (let i = 0; i < input.length; i += 4096) {
            input[i] = i % 251;
        }
        input[0] = 1;
        const got = S.messages(helper.getNode("out"), 1);
        helper.getNode("n1").receive({ payload: input });
        const [msg] = await got;
        assert.ok(Buffer.isBuffer(msg.payload));
        assert.strictEqual(msg.size, input.length);
        assert.ok(msg.payload.equals(Buffer.from(input).reverse()));
        const pids = [process.pid].concat(S.bridgeProcesses());
        await S.waitFor(() => S.allBlobFiles(pids).length === 0, 30000, "blob files to be removed");
    });

    it("keeps one warm blob file in hot mode, none in cold mode, and removes it on stop", async function () {
        await load(N.kernelexecNode, [
            py("nWarm", "return msg"),
            py("nColdBlob", "return msg", { mode: "cold" }),
            { id: "out", type: "helper" },
        ]);
        const spares = () => S.ourBlobFiles().filter((f) => f.includes("-spare-"));
        const send = async (id, fill) => {
            const input = Buffer.alloc(1024 * 1024, fill);
            const got = S.messages(helper.getNode("out"), 1);
            helper.getNode(id).receive({ payload: input });
            const [msg] = await got;
            assert.ok(msg.payload.equals(input), `${id}: the Buffer came back intact`);
        };
        await send("nColdBlob", 1);
        await S.waitFor(() => S.ourBlobFiles().length === 0, 30000, "the cold node's files to be removed");
        await send("nWarm", 2);
        assert.strictEqual(spares().length, 1, "the hot node kept the file it wrote");
        await send("nWarm", 3);   // written into the warm file: the bytes are the new ones
        await send("nWarm", 4);
        await S.waitFor(() => S.ourBlobFiles().length === 1, 30000, "only the spare to stay");
        assert.strictEqual(spares().length, 1);
        await S.unload();
        assert.deepStrictEqual(S.ourBlobFiles(), []);
    });

    it("fails a message that runs past the timeout and keeps the kernel's state", async function () {
        await load([N.kernelexecNode, N.catchNode], [
            py("n1", "import time\nstate['n'] = state.get('n', 0) + 1\nif msg['payload'] == 'slow':\n    time.sleep(30)\nmsg['payload'] = state['n']\nreturn msg", { timeout: 1, initialize: "state = {}" }),
            { id: "c1", type: "catch", scope: ["n1"], uncaught: false, wires: [["caught"]] },
            { id: "out", type: "helper" }, { id: "caught", type: "helper" },
        ]);
        const caught = S.messages(helper.getNode("caught"), 1);
        helper.getNode("n1").receive({ payload: "slow" });
        const [err] = await caught; // (without the timeout it would succeed, after 30 s)
        assert.match(err.error.message, /TIMEOUT|timed out|timeout/i);
        const got = S.messages(helper.getNode("out"), 1);
        helper.getNode("n1").receive({ payload: "fast" });
        assert.strictEqual((await got)[0].payload, 2, "setup state survived the timeout");
    });

    it("fails the message when the kernel dies (os._exit) and keeps serving", async function () {
        await load([N.kernelexecNode, N.catchNode], [
            py("n1", "import os\nif msg['payload'] == 'die':\n    os._exit(3)\nreturn msg"),
            { id: "c1", type: "catch", scope: ["n1"], uncaught: false, wires: [["caught"]] },
            { id: "out", type: "helper" }, { id: "caught", type: "helper" },
        ]);
        const caught = S.messages(helper.getNode("caught"), 1);
        helper.getNode("n1").receive({ payload: "die" });
        const [err] = await caught;
        assert.match(err.error.message, /die|dead|KERNEL_DIED/i);
        const got = S.messages(helper.getNode("out"), 1, 30000);
        helper.getNode("n1").receive({ payload: "alive" });
        assert.strictEqual((await got)[0].payload, "alive");
    });

    it("in a burst, fails only the message that killed its kernel; the others get their results once", async function () {
        await load([N.kernelexecNode, N.catchNode], [
            { id: "src", type: "helper", wires: [["n1"]] },
            py("n1", "import os\nif msg['payload'] == 10:\n    os._exit(1)\nreturn msg"),
            { id: "c1", type: "catch", scope: ["n1"], uncaught: false, wires: [["caught"]] },
            { id: "out", type: "helper" }, { id: "caught", type: "helper" },
        ]);
        const got = S.messages(helper.getNode("out"), 49, 60000);
        const caught = S.messages(helper.getNode("caught"), 1, 60000);
        for (let i = 0; i < 50; i++) {
            helper.getNode("src").send({ payload: i });
        }
        const [err] = await caught;
        assert.strictEqual(err.payload, 10);
        assert.strictEqual(err.error.code, "KERNEL_DIED");
        assert.match(err.error.message, /while this message was running/);
        const payloads = (await got).map((m) => m.payload).sort((a, b) => a - b);
        assert.deepStrictEqual(payloads, Array.from({ length: 50 }, (_, i) => i).filter((i) => i !== 10));
    });

    it("fails a message it cannot take in (100k levels deep, a throwing getter) through a Catch node, and goes on", async function () {
        await load([N.kernelexecNode, N.catchNode], [
            { id: "src", type: "helper", wires: [["n1"]] },
            py("n1", "return msg"),
            { id: "c1", type: "catch", scope: ["n1"], uncaught: false, wires: [["caught"]] },
            { id: "out", type: "helper" }, { id: "caught", type: "helper" },
        ]);
        const src = helper.getNode("src");
        let deep = { leaf: true };
        for (let i = 0; i < 100000; i++) {
            deep = { a: deep };
        }
        const getter = { ok: 1 };
        Object.defineProperty(getter, "boom", { enumerable: true, get() { throw new Error("getter refused"); } });
        const cyclic = { name: "loop" };
        cyclic.self = cyclic;
        const caught = S.messages(helper.getNode("caught"), 4);
        src.send({ payload: deep, topic: "deep" });   // through the flow, as Node-RED delivers it
        src.send({ payload: getter, topic: "getter" });
        src.send({ payload: 10n, topic: "bigint" });
        src.send({ payload: cyclic, topic: "cyclic" });
        const errors = await caught;
        const byTopic = new Map(errors.map((m) => [m.topic, m]));
        assert.deepStrictEqual([...byTopic.keys()].sort(), ["bigint", "cyclic", "deep", "getter"]);
        const deepErr = byTopic.get("deep");
        assert.match(deepErr.error.message, /could not be prepared for Python.*RangeError/);
        assert.match(deepErr.error.message, /msg\.payload could not be copied/);
        assert.strictEqual(deepErr.payload, undefined, "the payload that cannot be copied is not in the report");
        assert.match(byTopic.get("getter").error.message, /getter refused/);
        assert.match(byTopic.get("bigint").error.message, /BigInt/);
        assert.match(byTopic.get("cyclic").error.message, /circular/);
        for (const m of errors) {
            assert.strictEqual(m.error.source.id, "n1");
        }
        const got = S.messages(helper.getNode("out"), 1);
        src.send({ payload: "next" });
        assert.strictEqual((await got)[0].payload, "next");
    });

    it("shows a syntax error at deploy and fails messages with it", async function () {
        await load([N.kernelexecNode, N.catchNode], [
            py("n1", "x = 1\nreturn msg +"),
            { id: "c1", type: "catch", scope: ["n1"], uncaught: false, wires: [["caught"]] },
            { id: "out", type: "helper" }, { id: "caught", type: "helper" },
        ]);
        const n1 = helper.getNode("n1");
        const red = S.call(n1, "status", (st) => st && st.fill === "red");
        const caught = S.messages(helper.getNode("caught"), 1);
        n1.receive({ payload: 1 });   // waits for the pool, then fails with its error
        const [status] = await red;
        assert.match(status.text, /line 2|invalid syntax|SyntaxError/i);
        const [err] = await caught;
        assert.strictEqual(err.error.code, "SYNTAX_ERROR");
        assert.match(err.error.message, /line 2/);
    });

    it("shows a failing setup once, in red, and fails messages with SETUP_FAILED", async function () {
        await load([N.kernelexecNode, N.catchNode], [
            py("n1", "return msg", { initialize: "import json\nraise RuntimeError('no model file')" }),
            { id: "c1", type: "catch", scope: ["n1"], uncaught: false, wires: [["caught"]] },
            { id: "out", type: "helper" }, { id: "caught", type: "helper" },
        ]);
        const n1 = helper.getNode("n1");
        const red = S.call(n1, "status", (st) => st && st.fill === "red");
        const caught = S.messages(helper.getNode("caught"), 1);
        n1.receive({ payload: 1 });
        const [status] = await red;
        assert.match(status.text, /no model file/);
        const [err] = await caught;
        assert.strictEqual(err.error.code, "SETUP_FAILED");
        assert.match(err.error.message, /no model file/);
        assert.match(err.error.stack || "", /line 2/);
    });

    it("refuses a message it cannot convert (circular) with a clear error", async function () {
        await load([N.kernelexecNode, N.catchNode], [
            py("n1", "return msg"),
            { id: "c1", type: "catch", scope: ["n1"], uncaught: false, wires: [["caught"]] },
            { id: "out", type: "helper" }, { id: "caught", type: "helper" },
        ]);
        const caught = S.messages(helper.getNode("caught"), 1);
        const payload = { a: {} };
        payload.a.self = payload;
        helper.getNode("n1").receive({ payload });
        const [err] = await caught;
        assert.match(err.error.message, /msg\.payload\.a\.self: circular reference/);
        assert.strictEqual(err.error.code, "CONVERSION_ERROR");
    });

    it("runs messages in parallel on several workers, in arrival order with keepOrder", async function () {
        // the first message of each node is held until the test releases it; the second runs
        // meanwhile (on the other worker) and leaves a file when done
        const code = "import os, time\nwhile msg.get('hold') and not os.path.exists(msg['hold']):\n    time.sleep(0.005)\nif msg.get('ran'):\n    open(msg['ran'], 'w').close()\nreturn msg";
        const dir = S.tempDir();
        const file = (id, what) => path.join(dir, `${id}-${what}`);
        await load(N.kernelexecNode, [
            py("nFree", code, { workers: 2, wires: [["outFree"]] }),
            py("nOrdered", code, { workers: 2, keepOrder: true, wires: [["outOrdered"]] }),
            { id: "outFree", type: "helper" }, { id: "outOrdered", type: "helper" },
        ]);
        await Promise.all(["nFree", "nOrdered"].map((id) => S.call(helper.getNode(id), "status", (st) => st && /0\/2 busy/.test(st.text))));
        const free = S.messages(helper.getNode("outFree"), 2);
        const ordered = S.messages(helper.getNode("outOrdered"), 2);
        for (const id of ["nFree", "nOrdered"]) {
            helper.getNode(id).receive({ payload: 1.0, hold: file(id, "release") });
        }
        // the second message once the first runs: the pool may batch messages that arrive together
        await Promise.all(["nFree", "nOrdered"].map((id) => S.call(helper.getNode(id), "status", (st) => st && /1\/2 busy/.test(st.text))));
        for (const id of ["nFree", "nOrdered"]) {
            helper.getNode(id).receive({ payload: 0.1, ran: file(id, "ran") });
        }
        // the two workers ran the messages side by side: the second ends while the first is held
        await Promise.all(["nFree", "nOrdered"].map((id) => S.fileAppears(file(id, "ran"))));
        for (const id of ["nFree", "nOrdered"]) {
            fs.writeFileSync(file(id, "release"), "");
        }
        assert.deepStrictEqual((await free).map((m) => m.payload), [0.1, 1.0]);
        assert.deepStrictEqual((await ordered).map((m) => m.payload), [1.0, 0.1]);
    });

    it("isolates messages in cold mode but keeps them in hot mode", async function () {
        const code = "global counter\ncounter += 1\nmsg['payload'] = counter\nreturn msg";
        await load(N.kernelexecNode, [
            py("nHot", code, { initialize: "counter = 0", wires: [["outHot"]] }),
            py("nCold", code, { initialize: "counter = 0", mode: "cold", wires: [["outCold"]] }),
            { id: "outHot", type: "helper" }, { id: "outCold", type: "helper" },
        ]);
        const hot = S.messages(helper.getNode("outHot"), 2);
        const cold = S.messages(helper.getNode("outCold"), 2);
        for (const id of ["nHot", "nCold"]) {
            helper.getNode(id).receive({ payload: 0 });
            helper.getNode(id).receive({ payload: 0 });
        }
        assert.deepStrictEqual((await hot).map((m) => m.payload).sort(), [1, 2]);
        assert.deepStrictEqual((await cold).map((m) => m.payload), [1, 1]);
    });

    it("fails in-flight messages when the bridge dies, restarts it and serves again", async function () {
        const running = path.join(S.tempDir(), "running");
        await load([N.kernelexecNode, N.catchNode], [
            py("n1", `import time\nif msg['payload'] == 'slow':\n    open(${JSON.stringify(running)}, 'w').close()\n    time.sleep(20)\nreturn msg`),
            { id: "c1", type: "catch", scope: ["n1"], uncaught: false, wires: [["caught"]] },
            { id: "out", type: "helper" }, { id: "caught", type: "helper" },
        ]);
        const n1 = helper.getNode("n1");
        await S.call(n1, "status", (s) => s && s.fill === "green");
        const caught = S.messages(helper.getNode("caught"), 1);
        n1.receive({ payload: "slow" });
        await S.fileAppears(running); // the message runs
        const [bridge] = bridges.active();
        const tree = S.processTree(bridge.child.pid);
        process.kill(bridge.child.pid, "SIGKILL");
        const [err] = await caught;
        assert.match(err.error.message, /bridge process died/);
        const got = S.messages(helper.getNode("out"), 1, 40000);
        n1.receive({ payload: "again" });
        assert.strictEqual((await got)[0].payload, "again");
        // the killed bridge's kernels notice their parent is gone and exit
        await S.waitFor(() => tree.slice(1).every((pid) => !S.alive(pid)), 30000, "orphaned kernels to exit");
    });
});

describe("kernelexec node life cycle", function () {
    this.timeout(60000);

    afterEach(async function () {
        await S.unload();
    });

    for (const transport of ["pipe", "websocket"]) {
        it(`speaks to the bridge it started over ${transport === "pipe" ? "the inherited socket pair (default)" : "its WebSocket when KERNELEXEC_BRIDGE_TRANSPORT=websocket"}`, async function () {
            const before = process.env.KERNELEXEC_BRIDGE_TRANSPORT;
            if (transport === "websocket") {
                process.env.KERNELEXEC_BRIDGE_TRANSPORT = "websocket";
            }
            try {
                await S.load(N.kernelexecNode, S.tab([py("n1", "msg['payload'] += 1\nreturn msg"), { id: "out", type: "helper" }]));
                const got = S.messages(helper.getNode("out"), 1);
                helper.getNode("n1").receive({ payload: 1 });
                assert.strictEqual((await got)[0].payload, 2);
                const [bridge] = bridges.active();
                assert.strictEqual(bridge.ws instanceof PipeSocket, transport === "pipe");
                assert.strictEqual(bridge.child.spawnargs.includes("--node-fd"), transport === "pipe");
            } finally {
                if (before === undefined) {
                    delete process.env.KERNELEXEC_BRIDGE_TRANSPORT;
                } else {
                    process.env.KERNELEXEC_BRIDGE_TRANSPORT = before;
                }
            }
        });
    }

    it("starts the bridge so that it forks its kernel template (the -X room of early.py)", async function () {
        // a forked template's command line area is the bridge's own (kernelexec/handles/early.py);
        // a spawned one has its own: without the room this falls back to spawning, silently
        await S.load(N.kernelexecNode, S.tab([py("n1", "return msg"), { id: "out", type: "helper" }]));
        const got = S.messages(helper.getNode("out"), 1);
        helper.getNode("n1").receive({ payload: 1 });
        await got;
        const [bridge] = bridges.active();
        const comm = (pid) => fs.readFileSync(`/proc/${pid}/comm`, "utf8").trim();
        const cmdlineBytes = (pid) => fs.readFileSync(`/proc/${pid}/cmdline`).length;
        const templates = S.processTree(bridge.child.pid).filter((pid) => comm(pid) === "kx-template");
        assert.strictEqual(templates.length, 1, "one kernel template under the bridge");
        assert.strictEqual(cmdlineBytes(templates[0]), cmdlineBytes(bridge.child.pid), "forked, not spawned");
    });

    it("leaves no bridge, kernel or file behind after a redeploy and unload", async function () {
        const flow = S.tab([py("n1", "return msg", { workers: 2, finalize: "print('stopping')" }), { id: "out", type: "helper" }]);
        await S.load(N.kernelexecNode, flow);
        let got = S.messages(helper.getNode("out"), 1);
        helper.getNode("n1").receive({ payload: 1 });
        await got;
        const first = S.bridgeProcesses();
        assert.ok(first.length >= 3, "a bridge and two kernels: " + first);
        // redeploy: the same flow with changed code
        await helper.setFlows(S.tab([py("n1", "msg['payload'] = 2\nreturn msg"), { id: "out", type: "helper" }]), "nodes");
        got = S.messages(helper.getNode("out"), 1);
        helper.getNode("n1").receive({ payload: 1 });
        assert.strictEqual((await got)[0].payload, 2);
        const second = S.bridgeProcesses();
        await S.unload();
        assert.deepStrictEqual(bridges.active(), []);
        const all = Array.from(new Set(first.concat(second)));
        await S.waitFor(() => all.every((pid) => !S.alive(pid)), 30000, "bridge and kernels to exit: " + all.filter(S.alive));
        assert.deepStrictEqual(S.allBlobFiles(all.concat([process.pid])), []);
    });

    it("maps node properties and the environment node onto the protocol's config fields", async function () {
        const { poolConfig } = require("../nodes/kernelexec.js");
        const { CONFIG_FIELDS } = require("../lib/protocol");
        await S.load(N.kernelexecNode, [
            { id: "e1", type: "kernelexec-env", python: "/opt/py/bin/python", requirements: "numpy\n# comment\npandas", memoryLimit: "512M", cpuLimit: "0.5", network: false, user: "nobody", gatewayUrl: "http://gw:8888" },
        ], { e1: { gatewayToken: "secret" } });
        const env = helper.getNode("e1");
        assert.deepStrictEqual(env.envConfig(), {
            requirements: "numpy\n# comment\npandas", memory_limit: "512M", cpu_limit: 0.5, network: false,
            user: "nobody", gateway_url: "http://gw:8888", gateway_token: "secret",
        });
        assert.deepStrictEqual(env.bridgeOptions(), { python: "/opt/py/bin/python" });
        const config = poolConfig({ name: "n", func: "return msg", initialize: "import os", finalize: "", outputs: "2", mode: "cold", workers: "3", timeout: "1.5", queueLimit: "10", keepOrder: true, messagePath: "jupyter", notebook: " /nb/node.ipynb " }, env);
        for (const key of Object.keys(config)) {
            assert.ok(key in CONFIG_FIELDS, `${key} is a spec config field`);
        }
        assert.deepStrictEqual(Object.assign({}, config, { env: null }), {
            name: "n", code: "return msg", setup: "import os", stop: "", outputs: 2, mode: "cold", workers: 3,
            timeout: 1.5, queue_limit: 10, keep_order: true, message_path: "jupyter", env: null, notebook: "/nb/node.ipynb",
        });
        const defaults = poolConfig({}, null);
        assert.strictEqual(defaults.code, CONFIG_FIELDS.code.default);
        assert.strictEqual(defaults.workers, CONFIG_FIELDS.workers.default);
        assert.strictEqual(defaults.queue_limit, CONFIG_FIELDS.queue_limit.default);
        assert.strictEqual(defaults.timeout, 0);
        assert.strictEqual(defaults.message_path, CONFIG_FIELDS.message_path.default);
    });

    it("fails a running message and removes its blob files when the node is stopped", async function () {
        await S.load(N.kernelexecNode, S.tab([
            py("n1", "import time\ntime.sleep(30)\nreturn msg", { finalize: "print('bye')" }),
            { id: "out", type: "helper" },
        ]));
        const n1 = helper.getNode("n1");
        await S.call(n1, "status", (st) => st && st.fill === "green");
        // done(err) calls node.error(err, msg); helper.unload() removes its spies before the
        // nodes close, so watch the node instance itself
        let failure = null;
        n1.error = (e, m) => { failure = failure || (m && Buffer.isBuffer(m.payload) ? e : null); };
        n1.receive({ payload: Buffer.alloc(1024 * 1024, 1) });
        await S.waitFor(() => S.ourBlobFiles().length === 1, 30000, "the input blob file");
        const pids = S.bridgeProcesses();
        const t0 = Date.now();
        await S.unload();
        // a contract, not a speed: Node-RED gives up on a node's close after 15 s
        assert.ok(Date.now() - t0 < 15000, "closed within Node-RED's close timeout");
        assert.ok(failure instanceof Error, "the running message failed");
        assert.match(failure.message, /stopped|closed/i);
        assert.deepStrictEqual(S.ourBlobFiles(), []);
        await S.waitFor(() => pids.every((pid) => !S.alive(pid)), 30000, "bridge and kernels to exit");
    });

    it("uses the environment node's Python, one bridge per distinct Python", async function () {
        const python = process.env.KERNELEXEC_PYTHON;
        await S.load(N.kernelexecNode, [
            { id: "tab1", type: "tab" },
            { id: "e1", type: "kernelexec-env", python },
            py("n1", "import sys\nmsg['payload'] = sys.executable\nreturn msg", { z: "tab1", env: "e1" }),
            py("n2", "return msg", { z: "tab1" }),
            { id: "out", type: "helper", z: "tab1" },
        ]);
        const got = S.messages(helper.getNode("out"), 2);
        helper.getNode("n1").receive({ payload: 1 });
        helper.getNode("n2").receive({ payload: 2 });
        const msgs = await got;
        assert.ok(msgs.some((m) => typeof m.payload === "string" && m.payload.length > 0));
        // same interpreter (env node and KERNELEXEC_PYTHON): one bridge for both nodes
        assert.strictEqual(bridges.active().length, 1);
    });

    it("connects to an already running bridge by URL and token (a credential), and leaves it running", async function () {
        const { spawn } = require("child_process");
        const token = "test-token-" + process.pid;
        const server = spawn(process.env.KERNELEXEC_PYTHON, ["-m", "kernelexec", "serve", "--port", "0"], {
            env: Object.assign({}, process.env, { KERNELEXEC_TOKEN: token }), stdio: ["ignore", "pipe", "inherit"],
        });
        try {
            const ready = await new Promise((resolve, reject) => {
                server.stdout.once("data", (d) => resolve(JSON.parse(d.toString().split("\n")[0])));
                server.once("exit", (code) => reject(new Error("bridge exited " + code)));
            });
            const url = `ws://127.0.0.1:${ready.port}/ws`;
            await loadWithBridgeUrl(url, { token }, "msg['payload'] = 'remote ' + str(msg['payload'])\nreturn msg");
            const got = S.messages(helper.getNode("out"), 1);
            helper.getNode("n1").receive({ payload: 1 });
            assert.strictEqual((await got)[0].payload, "remote 1");
            assert.strictEqual(bridges.active()[0].url, url);
            await S.unload();
            assert.ok(S.alive(server.pid), "the node does not stop a bridge it did not start");
        } finally {
            server.kill("SIGTERM");
            await new Promise((r) => (server.exitCode !== null ? r() : server.once("exit", r)));
        }
    });

    it("reports an unreachable bridge URL without crashing", async function () {
        await loadWithBridgeUrl("ws://127.0.0.1:9/ws", { token: "nope" });
        const [text] = await S.call(helper.getNode("n1"), "error", (e) => typeof e === "string");
        assert.match(text, /Cannot connect to the kernelexec bridge at ws:\/\/127\.0\.0\.1:9\/ws/);
    });

    it("reports a malformed bridge URL without crashing", async function () {
        await loadWithBridgeUrl("ws://bad url");
        const [text] = await S.call(helper.getNode("n1"), "error", (e) => typeof e === "string");
        assert.match(text, /Cannot connect to the kernelexec bridge at ws:\/\/bad url/);
    });

    for (const variant of ["welcomes", "refuses"]) {
        it(`reports a bridge of another protocol major version (it ${variant} the hello)`, async function () {
            await versionMismatch(variant);
        });
    }

    async function versionMismatch(variant) {
        // The real bridge always matches; a minimal WebSocket server plays a future one, which
        // either welcomes us with its version or (as kernelexec serve does) refuses the hello.
        const WebSocket = require("ws");
        const server = new WebSocket.Server({ host: "127.0.0.1", port: 0 });
        const answer = variant === "welcomes"
            ? { type: "welcome", protocol_version: "99.0", server: "future", pid: 1, blob_dir: "/tmp" }
            : { type: "error", error: { code: "VERSION_MISMATCH", type: "ProtocolError", message: "the client speaks protocol 1.0 but this bridge speaks 99.0", traceback: null, line: null }, req_id: null, node_id: null };
        server.on("connection", (ws) => ws.on("message", () => {
            ws.send(JSON.stringify(answer));
            if (variant === "refuses") {
                ws.close(1002);
            }
        }));
        await new Promise((r) => server.once("listening", r));
        try {
            await loadWithBridgeUrl(`ws://127.0.0.1:${server.address().port}/ws`, { token: "t" });
            const [text] = await S.call(helper.getNode("n1"), "error", (e) => typeof e === "string");
            assert.match(text, /speaks protocol 99\.0|bridge speaks 99\.0/);
        } finally {
            await S.unload();
            server.close();
        }
    }

    // Protocol 1.1: a WebSocket message may carry an array of frames. A minimal bridge records
    // how the node's frames arrive and answers each execute with a send frame and a result.
    async function fakeBridge(version) {
        const WebSocket = require("ws");
        const server = new WebSocket.Server({ host: "127.0.0.1", port: 0 });
        const seen = { messages: 0, arrays: 0, executes: 0 };
        server.on("connection", (ws) => ws.on("message", (data) => {
            const parsed = JSON.parse(data.toString());
            const frames = Array.isArray(parsed) ? parsed : [parsed];
            if (frames[0].type !== "hello") {
                seen.messages += 1;
                seen.arrays += Array.isArray(parsed) ? 1 : 0;
            }
            const out = [];
            for (const frame of frames) {
                if (frame.type === "hello") {
                    ws.send(JSON.stringify({ type: "welcome", protocol_version: version, server: "fake", pid: 1, blob_dir: "/tmp" }));
                } else if (frame.type === "configure") {
                    out.push({ type: "pool_state", node_id: frame.node_id, state: "ready", busy: 0, total: 1, queued: 0, error: null, detail: "" });
                } else if (frame.type === "execute") {
                    seen.executes += 1;
                    const early = Object.assign({}, frame.msg, { payload: "early-" + frame.msg.payload });
                    out.push({ type: "send", node_id: frame.node_id, req_id: frame.req_id, outputs: [[early]] });
                    out.push({ type: "result", node_id: frame.node_id, req_id: frame.req_id, outputs: [[frame.msg]], logs: [], status: [], stdout: "", error: null, done: true, sent: 1, timing: { queued_ms: 0, exec_ms: 0 } });
                } else if (frame.type === "close") {
                    out.push({ type: "closed", node_id: frame.node_id });
                }
            }
            if (version === "1.0") {
                out.forEach((frame) => ws.send(JSON.stringify(frame)));
            } else if (out.length > 0) {
                ws.send(JSON.stringify(out.length === 1 ? out[0] : out));
            }
        }));
        await new Promise((r) => server.once("listening", r));
        return { server, seen };
    }

    for (const version of ["1.1", "1.0"]) {
        it(`sends a burst ${version === "1.0" ? "one frame per message to a 1.0 bridge" : "as arrays of frames to a 1.1 bridge, and reads arrays in order"}`, async function () {
            const { server, seen } = await fakeBridge(version);
            const count = 300;
            try {
                await loadWithBridgeUrl(`ws://127.0.0.1:${server.address().port}/ws`, { token: "t" });
                const n1 = helper.getNode("n1");
                await S.call(n1, "status", (s) => s && s.fill === "green");
                const got = S.messages(helper.getNode("out"), 2 * count);
                for (let i = 0; i < count; i++) {
                    n1.receive({ payload: i });
                }
                const payloads = (await got).map((m) => m.payload);
                assert.strictEqual(seen.executes, count);
                for (let i = 0; i < count; i++) {   // every result, after its own send frame
                    const early = payloads.indexOf("early-" + i);
                    const result = payloads.indexOf(i);
                    assert.ok(early >= 0 && result > early, `message ${i}: send at ${early}, result at ${result}`);
                }
                if (version === "1.0") {
                    assert.strictEqual(seen.arrays, 0);
                    assert.ok(seen.messages >= count, `${seen.messages} messages for ${count} executes`);
                } else {
                    assert.ok(seen.arrays >= 1, "no array of frames");
                    assert.ok(seen.messages < count / 2, `${seen.messages} messages for ${count} executes`);
                }
            } finally {
                await S.unload();
                server.close();
            }
        });
    }

    it("shows what to install when the Python does not exist, without crashing", async function () {
        const saved = process.env.KERNELEXEC_PYTHON;
        process.env.KERNELEXEC_PYTHON = "/nonexistent/python3";
        try {
            await S.load([N.kernelexecNode, N.catchNode], S.tab([
                py("n1", "return msg"),
                { id: "c1", type: "catch", scope: ["n1"], uncaught: false, wires: [["caught"]] },
                { id: "out", type: "helper" }, { id: "caught", type: "helper" },
            ]));
            const n1 = helper.getNode("n1");
            const red = S.call(n1, "status", (s) => s && s.fill === "red");
            const error = S.call(n1, "error", (e) => typeof e === "string");
            const [status] = await red;
            assert.match(status.text, /not found/);
            const [text] = await error;
            assert.match(text, /\/nonexistent\/python3/);
            assert.match(text, /Install Python 3\.10 or later/);
            const caught = S.messages(helper.getNode("caught"), 1);
            n1.receive({ payload: 1 });
            assert.match((await caught)[0].error.message, /Install Python 3\.10 or later/);
        } finally {
            process.env.KERNELEXEC_PYTHON = saved;
            await S.unload();
        }
    });

    it("takes the Python from settings.js (kernelexecPython) when no environment node names one", async function () {
        helper.settings({ kernelexecPython: "/nonexistent/from-settings/python3" });
        try {
            await S.load(N.kernelexecNode, S.tab([py("n1", "return msg"), { id: "out", type: "helper" }]));
            const [text] = await S.call(helper.getNode("n1"), "error", (e) => typeof e === "string");
            assert.match(text, /\/nonexistent\/from-settings\/python3/);
        } finally {
            helper.settings({});
            await S.unload();
        }
    });

    it("names the missing module and the pip command when Python lacks kernelexec", async function () {
        const python = "/usr/bin/python3";
        if (!fs.existsSync(python) || require("child_process").spawnSync(python, ["-c", "import kernelexec"]).status === 0) {
            this.skip();
        }
        await S.load(N.kernelexecNode, [
            { id: "tab1", type: "tab" },
            { id: "e1", type: "kernelexec-env", python },
            py("n1", "return msg", { z: "tab1", env: "e1" }),
            { id: "out", type: "helper", z: "tab1" },
        ]);
        try {
            const [text] = await S.call(helper.getNode("n1"), "error", (e) => typeof e === "string");
            assert.match(text, /module 'kernelexec' is missing/);
            assert.match(text, /\/usr\/bin\/python3 -m pip install \S+/);
            assert.match(text, /Leave the interpreter empty/);
        } finally {
            await S.unload();
        }
    });
});

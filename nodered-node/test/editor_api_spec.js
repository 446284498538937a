// The editor's admin endpoints (lib/editor_api.js) on a real runtime, real bridge and kernels:
// Run shows each output, node.send/status/warn, print output, and errors with the user's line
// numbers (setup and on-message); a run past its limit stops and leaves no kernel; completion
// knows what the setup imported and the runtime's names; hover gives help; an environment
// node's packages are listed. Permissions are checked in editor_auth_spec.js.
"use strict";
const assert = require("assert");
const S = require("./support");
const { helper } = S;

const FLOW = [
    { id: "tab1", type: "tab" },
    { id: "e1", type: "kernelexec-env", python: process.env.KERNELEXEC_PYTHON },
    { id: "n1", type: "kernelexec", z: "tab1", func: "return msg", outputs: 1, wires: [[]] },
];

function post(path, body) {
    return helper.request().post(path).send(body).expect(200).then((res) => res.body);
}

/** Kernel processes under the bridges of this runtime. */
function kernels() {
    return S.bridgeProcesses().length;
}

describe("editor endpoints: Run, completion, environment view", function () {
    this.timeout(120000);
    let stopKeeper;

    before(async function () {
        await S.load(S.nodes.kernelexecNode, FLOW);
        stopKeeper = S.keepBridge();
    });

    after(async function () {
        require("../lib/editor_api").closeAll();
        await S.unload();
        await stopKeeper();
    });

    it("runs setup and code on a sample message: outputs per port, send, status, warn, print", async function () {
        const answer = await post("/kernelexec/run", {
            setup: "factor = 3",
            func: "print('seen', msg['payload'])\nnode.warn('careful')\nnode.status({'text': 'busy'})\n" +
                "node.send([{'payload': 'early'}, None])\nreturn [{'payload': msg['payload'] * factor}, {'payload': 'b'}]",
            outputs: 2,
            msg: { payload: 14 },
        });
        assert.strictEqual(answer.error, null, JSON.stringify(answer.error));
        assert.deepStrictEqual(answer.outputs.map((port) => port.map((m) => m.payload)), [[42], ["b"]]);
        assert.deepStrictEqual(answer.sent.map((outputs) => outputs[0][0].payload), ["early"]);
        assert.deepStrictEqual(answer.status, [{ text: "busy" }]);
        assert.deepStrictEqual(answer.logs, [{ level: "warn", text: "careful" }]);
        assert.strictEqual(answer.stdout, "seen 14\n");
    });

    it("shows an on-message error with the user's line number, and a setup error with its line", async function () {
        let answer = await post("/kernelexec/run", { func: "x = 1\ny = x / 0\nreturn msg", msg: { payload: 1 } });
        assert.strictEqual(answer.error.where, "message");
        assert.strictEqual(answer.error.type, "ZeroDivisionError");
        assert.strictEqual(answer.error.line, 2);
        answer = await post("/kernelexec/run", { setup: "import json\nimport no_such_module_kx", func: "return msg", msg: {} });
        assert.strictEqual(answer.error.where, "setup");
        assert.match(answer.error.message, /no_such_module_kx/);
        assert.strictEqual(answer.error.line, 2);
    });

    it("stops a run past its time limit and leaves no kernel behind", async function () {
        const before = kernels();
        const answer = await post("/kernelexec/run", { func: "import time\ntime.sleep(60)\nreturn msg", timeout: 1, msg: {} });
        assert.strictEqual(answer.error.code, "TIMEOUT");
        await S.waitFor(() => kernels() <= before, 30000, "the run's kernel to go");
    });

    it("completes what the setup imported and the runtime's names; gives hover help", async function () {
        const body = { node: "n1", setup: "import numpy as np" };
        let answer = await post("/kernelexec/complete", Object.assign({ op: "complete", code: "x = np.ara", cursor: 10 }, body));
        assert.ok(answer.reply && answer.reply.matches.includes("arange"), JSON.stringify(answer));
        assert.deepStrictEqual([answer.reply.cursor_start, answer.reply.cursor_end], [7, 10]);
        answer = await post("/kernelexec/complete", Object.assign({ op: "complete", code: "m", cursor: 1 }, body));
        assert.ok(answer.reply.matches.includes("msg"), JSON.stringify(answer.reply.matches));
        for (const name of ["node", "context", "flow", "global_", "env"]) {
            answer = await post("/kernelexec/complete", Object.assign({ op: "complete", code: name.slice(0, 3), cursor: 3 }, body));
            assert.ok(answer.reply.matches.includes(name), name + ": " + JSON.stringify(answer.reply.matches));
        }
        answer = await post("/kernelexec/complete", Object.assign({ op: "inspect", code: "np.arange(3)", cursor: 9 }, body));
        assert.ok(answer.reply.found, JSON.stringify(answer));
        assert.match(answer.reply.data["text/plain"], /arange/);
    });

    it("answers completion with the setup's error while the setup fails, from one pool", async function () {
        const body = { node: "n2", setup: "import no_such_module_kx", op: "complete", code: "x", cursor: 1 };
        const first = await post("/kernelexec/complete", body);
        assert.strictEqual(first.error.where, "setup");
        assert.match(first.error.message, /no_such_module_kx/);
        const clients = S.bridgeProcesses().length;
        const second = await post("/kernelexec/complete", body);
        assert.match(second.error.message, /no_such_module_kx/);
        assert.ok(S.bridgeProcesses().length <= clients, "a new kernel for the same failing setup");
    });

    it("shows an environment node's state and installed packages; refuses what it cannot do", async function () {
        const state = (await helper.request().get("/kernelexec/envs/e1").expect(200)).body;
        assert.strictEqual(state.kind, "configured");
        assert.strictEqual(state.state, "ready", JSON.stringify(state));
        assert.strictEqual(state.python, process.env.KERNELEXEC_PYTHON);
        const list = (await helper.request().get("/kernelexec/envs/e1/packages").expect(200)).body;
        assert.strictEqual(list.error, null);
        const names = new Map(list.packages.map((p) => [p.name.toLowerCase(), p.version]));
        assert.strictEqual(names.get("kernelexec"), require("../package.json").version);
        assert.ok(names.has("ipykernel") && names.has("numpy"), JSON.stringify(list.packages.slice(0, 5)));
        await helper.request().get("/kernelexec/envs/nosuchenv").expect(404);
        await helper.request().post("/kernelexec/envs/e1/rebuild").expect(409);
    });
});

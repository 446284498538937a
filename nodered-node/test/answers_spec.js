// The answer socket (lib/answers.js, kernelexec/kernel/answers.py): a hot kernel of a bridge
// this runtime started writes a plain message's result there, and the bridge sends none.
"use strict";
const assert = require("assert");
const fs = require("fs");
const net = require("net");
const bridges = require("../lib/bridge");
const { AnswerServer } = require("../lib/answers");
const S = require("./support");

const { helper } = S;
const N = S.nodes;

function frameBytes(obj) {
    const body = Buffer.from(JSON.stringify(obj));
    const head = Buffer.alloc(4);
    head.writeUInt32BE(body.length, 0);
    return Buffer.concat([head, body]);
}

/** A kernel's side: connect, send the frames, resolve when the server closed the connection or `until` holds. */
function kernelSide(offer, frames) {
    return new Promise((resolve) => {
        const socket = net.connect(offer.path, () => {
            for (const frame of frames) {
                socket.write(frameBytes(frame));
            }
        });
        socket.on("error", () => {});
        socket.on("close", () => resolve(socket));
    });
}

describe("answer socket: who may write there", function () {
    it("listens in a directory only this user can enter, takes a kernel's results only with the token, only for its node, and removes the directory", async function () {
        const got = [];
        const server = new AnswerServer(1 << 20, (nodeId, frame) => got.push([nodeId, frame.req_id]));
        const offer = server.listen();
        assert.ok(offer && offer.token.length >= 32);
        const dir = require("path").dirname(offer.path);
        assert.strictEqual(fs.statSync(dir).mode & 0o777, 0o700);
        // a wrong token: the connection is closed, nothing is taken
        await kernelSide(offer, [{ token: "x".repeat(offer.token.length), node_id: "n1", pid: 1 }, { type: "result", node_id: "n1", req_id: "forged" }]);
        assert.deepStrictEqual(got, []);
        // the token: results of its own node only, and only result frames
        const closing = kernelSide(offer, [
            { token: offer.token, node_id: "n1", pid: 1 },
            { type: "result", node_id: "n1", req_id: "r1" },
            { type: "result", node_id: "n2", req_id: "other-node" },
            { type: "send", node_id: "n1", req_id: "not-a-result" },
            { type: "result", node_id: "n1", req_id: "r2" },
        ]);
        await S.waitFor(() => got.length === 2, 10000, "two results");
        assert.deepStrictEqual(got, [["n1", "r1"], ["n1", "r2"]]);
        server.close();
        await closing;   // close() ends the kernels' connections too
        assert.strictEqual(fs.existsSync(dir), false);
    });
});

describe("answer socket in Node-RED (real bridge, real kernels)", function () {
    this.timeout(60000);

    afterEach(async function () {
        await S.unload();
    });

    it("a plain result comes from the kernel, a message with node.send from the bridge; each exactly once; the socket goes with the bridge", async function () {
        const code = "if msg.get('send'):\n    node.send({'payload': 'early ' + str(msg['payload'])})\nreturn msg";
        await S.load(N.kernelexecNode, S.tab([
            { id: "n1", type: "kernelexec", func: code, outputs: 1, mode: "hot", workers: 1, wires: [["out"]] },
            { id: "out", type: "helper" },
        ]));
        const [bridge] = bridges.active();
        const out = helper.getNode("out");
        // a first answer: the pool is ready; then the kernel's ready on the answer socket
        const warm = S.messages(out, 1);
        helper.getNode("n1").receive({ payload: "warm" });
        await warm;
        await S.waitFor(() => bridge.answers.takesRequests("n1"), 30000, "the kernel to take requests");
        const taken0 = bridge.answers.taken;
        const sent0 = bridge.answers.sent;
        const taken = () => bridge.answers.taken - taken0;
        const sent = () => bridge.answers.sent - sent0;
        const seen = [];
        out.on("input", (msg) => seen.push(msg.payload));
        const five = S.messages(out, 5);
        for (let i = 0; i < 5; i++) {
            helper.getNode("n1").receive({ payload: i });
        }
        await five;
        assert.strictEqual(taken(), 5, "the five results came through the answer socket");
        assert.strictEqual(sent(), 1, "the first went to the kernel itself, the four that came meanwhile to the bridge");
        for (let i = 5; i < 8; i++) {   // one at a time: each straight to the kernel
            const one = S.messages(out, 1);
            helper.getNode("n1").receive({ payload: i });
            await one;
        }
        assert.strictEqual(sent(), 4);
        assert.strictEqual(taken(), 8);
        const two = S.messages(out, 2);
        helper.getNode("n1").receive({ payload: "with a send", send: true });
        await two;
        assert.strictEqual(taken(), 8, "its send frame comes through the bridge, so does its result");
        await S.bridgeRoundTrip();   // anything else the bridge sent is in
        await S.nextTurn();
        assert.deepStrictEqual(seen, [0, 1, 2, 3, 4, 5, 6, 7, "early with a send", "with a send"]);
        // a burst with one worker: the answers of the plain messages after the one with a
        // send (its result waits at the bridge for the send frame) wait for its result
        const burst = S.messages(out, 9);
        helper.getNode("n1").receive({ payload: "first", send: true });
        for (let i = 10; i < 15; i++) {
            helper.getNode("n1").receive({ payload: i });
        }
        helper.getNode("n1").receive({ payload: "last", send: true });
        await burst;
        await S.bridgeRoundTrip();
        await S.nextTurn();
        const burstSeen = seen.slice(10);
        const results = burstSeen.filter((p) => !String(p).startsWith("early"));
        assert.deepStrictEqual(results, ["first", 10, 11, 12, 13, 14, "last"], "one worker: results in the order the messages came");
        assert.ok(burstSeen.indexOf("early first") < burstSeen.indexOf("first"), "a send before its own result");
        assert.ok(burstSeen.indexOf("early last") < burstSeen.indexOf("last"), "a send before its own result");
        const dir = require("path").dirname(bridge.answers.offer.path);
        await S.unload();
        await S.waitFor(() => bridges.active().length === 0, 30000, "the bridge stopped");
        assert.strictEqual(fs.existsSync(dir), false, "the answer socket's directory is removed");
    });

    it("a kernel that dies on a message written to it: the message fails with KERNEL_DIED, the next one runs on a fresh kernel", async function () {
        const code = "import os\nif msg.get('die'):\n    os._exit(3)\nreturn msg";
        await S.load([N.kernelexecNode, N.catchNode], S.tab([
            { id: "n1", type: "kernelexec", func: code, outputs: 1, mode: "hot", workers: 1, wires: [["out"]] },
            { id: "c1", type: "catch", scope: ["n1"], uncaught: false, wires: [["caught"]] },
            { id: "out", type: "helper" }, { id: "caught", type: "helper" },
        ]));
        const [bridge] = bridges.active();
        const warm = S.messages(helper.getNode("out"), 1);
        helper.getNode("n1").receive({ payload: "warm" });
        await warm;
        await S.waitFor(() => bridge.answers.takesRequests("n1"), 30000, "a kernel that takes requests");
        const sent = bridge.answers.sent;
        const caught = S.messages(helper.getNode("caught"), 1);
        helper.getNode("n1").receive({ payload: "fatal", die: true });
        const [failed] = await caught;
        assert.strictEqual(bridge.answers.sent, sent + 1, "it went to the kernel itself");
        assert.strictEqual(failed.error.code, "KERNEL_DIED");
        assert.strictEqual(failed.payload, "fatal");
        const after = S.messages(helper.getNode("out"), 1);
        helper.getNode("n1").receive({ payload: "after" });
        assert.strictEqual((await after)[0].payload, "after");
    });

    for (const [name, path] of [["KERNELEXEC_NO_DIRECT", "results only"], ["KERNELEXEC_NO_ANSWERS", "neither"]]) {
        it(`${name}=1 (troubleshooting): ${path === "neither" ? "every message and result through the bridge" : "messages to the bridge, results from the kernel"}`, async function () {
            process.env[name] = "1";
            try {
                await S.load(N.kernelexecNode, S.tab([
                    { id: "n1", type: "kernelexec", func: "return msg", outputs: 1, mode: "hot", workers: 1, wires: [["out"]] },
                    { id: "out", type: "helper" },
                ]));
                const [bridge] = bridges.active();
                for (let i = 0; i < 3; i++) {   // one at a time: each could go to the kernel itself
                    const one = S.messages(helper.getNode("out"), 1);
                    helper.getNode("n1").receive({ payload: i });
                    assert.strictEqual((await one)[0].payload, i);
                }
                assert.strictEqual(bridge.answers.sent, 0, "no message written to the kernel");
                assert.strictEqual(bridge.answers.taken, path === "neither" ? 0 : 3);
            } finally {
                delete process.env[name];
            }
        });
    }
});

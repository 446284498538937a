// Every example flow (examples/*.json, as the demo loads them: one tab each) runs on real
// kernels: inject nodes are replaced by direct receive() calls on their targets, debug nodes by
// helper nodes, and the HTTP example answers real requests.
"use strict";
const assert = require("assert");
const S = require("./support");
const { exampleFlows } = require("../scripts/demo");

const { helper } = S;
const N = S.nodes;

function injected(node) {
    switch (node.payloadType) {
    case "num": return Number(node.payload);
    case "json": return JSON.parse(node.payload);
    case "date": return Date.now();
    default: return node.payload;
    }
}

describe("example flows (all tabs at once, real kernels)", function () {
    this.timeout(120000);
    let flows;
    let httpNode;
    const received = new Map();

    before(async function () {
        flows = exampleFlows();
        const runnable = flows
            .filter((n) => n.type !== "comment")
            .map((n) => (n.type === "inject" || n.type === "debug" ? { id: n.id, z: n.z, type: "helper", name: n.name, wires: [] } : n));
        const httpIn = (RED) => {
            httpNode = RED.httpNode;
            return N.httpInNode(RED);
        };
        await S.load([N.kernelexecNode, N.catchNode, httpIn], runnable);
        for (const node of flows.filter((n) => n.type === "debug")) {
            received.set(node.id, []);
            helper.getNode(node.id).on("input", (msg) => received.get(node.id).push(msg));
        }
    });

    after(async function () {
        await S.unload();
    });

    function debugOf(tabLabel, name) {
        const tab = flows.find((n) => n.type === "tab" && n.label.startsWith(tabLabel));
        const node = flows.find((n) => n.z === tab.id && n.type === "debug" && (name === undefined || n.name === name));
        return received.get(node.id);
    }

    function press(tabLabel, injectName) {
        const tab = flows.find((n) => n.type === "tab" && n.label.startsWith(tabLabel));
        const inject = flows.find((n) => n.z === tab.id && n.type === "inject" && n.name === injectName);
        for (const target of inject.wires[0]) {
            helper.getNode(target).receive({ payload: injected(inject), topic: inject.topic || "" });
        }
    }

    it("loads every example on its own tab", function () {
        const tabs = flows.filter((n) => n.type === "tab").map((n) => n.label);
        assert.strictEqual(tabs.length, 8);
        assert.ok(flows.filter((n) => n.type !== "tab" && n.type !== "kernelexec-env").every((n) => Boolean(n.z)));
    });

    it("01 hello world", async function () {
        press("01", "world");
        await S.waitFor(() => debugOf("01").length === 1, 60000, "hello");
        assert.strictEqual(debugOf("01")[0].payload, "Hello world from Python!");
    });

    it("02 several outputs and messages", async function () {
        press("02", "[3, 8, 15, 42]");
        await S.waitFor(() => debugOf("02", "each").length === 4, 60000, "outputs");
        assert.deepStrictEqual(debugOf("02", "even")[0].payload, [8, 42]);
        assert.deepStrictEqual(debugOf("02", "odd")[0].payload, [3, 15]);
        assert.deepStrictEqual(debugOf("02", "each").map((m) => m.payload), [3, 8, 15, 42]);
    });

    it("03 state in the kernel and in context", async function () {
        press("03", "tick");
        press("03", "tick");
        await S.waitFor(() => debugOf("03", "").length === 2, 60000, "state");
        assert.deepStrictEqual(debugOf("03", "").map((m) => m.payload), [
            { kernel_history: 1, flow_count: 1 }, { kernel_history: 2, flow_count: 2 }]);
    });

    it("04 process an image Buffer (Pillow, numpy)", async function () {
        press("04", "make image");
        await S.waitFor(() => debugOf("04").length === 1, 60000, "image");
        const msg = debugOf("04")[0];
        assert.ok(Buffer.isBuffer(msg.payload));
        assert.strictEqual(msg.payload.subarray(1, 4).toString(), "PNG");
        assert.deepStrictEqual(msg.stats.size, [640, 480]);
        assert.ok(msg.stats.mean > 200 && msg.stats.mean < 255);
    });

    it("05 numpy and pandas on JSON", async function () {
        press("05", "sensor readings");
        await S.waitFor(() => debugOf("05").length === 1, 60000, "pandas");
        const { payload } = debugOf("05")[0];
        assert.deepStrictEqual(payload.by_sensor.a, { count: 2, mean: 21, max: 21.5 });
        assert.strictEqual(payload.z_scores.length, 5);
    });

    it("06 errors caught by a Catch node", async function () {
        press("06", "10");
        press("06", "0");
        await S.waitFor(() => debugOf("06", "caught").length === 1 && debugOf("06", "").length === 1, 60000, "catch");
        assert.strictEqual(debugOf("06", "")[0].payload, 10);
        assert.match(debugOf("06", "caught")[0].error.message, /^ZeroDivisionError: division by zero \(line 1\)/);
    });

    it("07 HTTP endpoint answered by Python", async function () {
        const request = require("supertest");
        const get = await request(httpNode).get("/hello-python?name=Ada");
        assert.deepStrictEqual(get.body, { greeting: "Hello Ada", from: "python" });
        const post = await request(httpNode).post("/stats").send({ values: [1, 2, 3, 10] });
        assert.deepStrictEqual(post.body, { mean: 4, median: 2.5 });
        const bad = await request(httpNode).post("/stats").send({});
        assert.strictEqual(bad.status, 400);
    });

    it("08 cold mode", async function () {
        press("08", "go");
        await S.waitFor(() => debugOf("08").length >= 1, 60000, "first");
        press("08", "go");
        const tab = flows.find((n) => n.type === "tab" && n.label.startsWith("08"));
        const debugs = flows.filter((n) => n.z === tab.id && n.type === "debug").map((n) => received.get(n.id));
        await S.waitFor(() => debugs.every((list) => list.length === 2), 60000, "cold and hot");
        const all = debugs.flat().map((m) => m.payload).sort();
        assert.deepStrictEqual(all, ["cold: counter = 1 (always 1)", "cold: counter = 1 (always 1)", "hot: counter = 1", "hot: counter = 2"]);
    });
});

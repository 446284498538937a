// The bridge connection's receiving side without a bridge process: frames of many messages
// are dispatched in arrival order, in slices that let the event loop run between them.
"use strict";
const assert = require("assert");
const { Bridge } = require("../lib/bridge");

function spin(ms) {
    const until = performance.now() + ms;
    while (performance.now() < until) {
        // a frame handler that takes a while (done(err), a Catch node, logging...)
    }
}

function fakeBridge(handle) {
    const bridge = new Bridge({ key: "test", python: "python3" });
    bridge.state = "ready";
    bridge.generation = 1;
    bridge.clients.set("n1", { id: "n1", frame: handle });
    return bridge;
}

function message(from, count) {
    const frames = [];
    for (let i = from; i < from + count; i++) {
        frames.push({ type: "result", node_id: "n1", req_id: "r" + i, i });
    }
    return Buffer.from(JSON.stringify(frames));
}

describe("bridge: received frames", function () {
    it("dispatches thousands of frames in order, yielding to the event loop between slices", async function () {
        const seen = [];
        const bridge = fakeBridge((frame) => {
            spin(0.1);
            seen.push(frame.i);
        });
        let ticks = 0;
        const timer = setInterval(() => { ticks += 1; }, 5);
        const started = performance.now();
        bridge.receive(message(0, 2000), 1);
        bridge.receive(message(2000, 1000), 1);
        assert.ok(seen.length < 3000, "not everything in one go");
        while (seen.length < 3000 && performance.now() - started < 20000) {
            await new Promise((resolve) => setTimeout(resolve, 5));
        }
        clearInterval(timer);
        assert.deepStrictEqual(seen, Array.from({ length: 3000 }, (_, i) => i));
        assert.ok(ticks >= 5, `a 5 ms timer kept firing while ~300 ms of frames were handled (${ticks} ticks)`);
        assert.strictEqual(bridge.draining, false);
    });

    it("dispatches what arrived at once when the connection closes, and survives a failing handler", function () {
        const seen = [];
        const bridge = fakeBridge((frame) => {
            if (frame.i === 5) {
                throw new Error("a bug");
            }
            spin(0.05);
            seen.push(frame.i);
        });
        bridge.receive(message(0, 2000), 1);
        assert.ok(seen.length < 1999);
        bridge.drain(Infinity);
        assert.strictEqual(seen.length, 1999);
        assert.strictEqual(seen[seen.length - 1], 1999);
        assert.strictEqual(bridge.draining, false);
        assert.strictEqual(bridge.drainTimer, null);
    });
});

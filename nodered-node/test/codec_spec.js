// lib/codec.js on its own: markers, blob files, kept properties, clear errors.
"use strict";
const assert = require("assert");
const fs = require("fs");
const os = require("os");
const path = require("path");
const codec = require("../lib/codec");
const { BLOB_THRESHOLD, BLOB_PREFIX } = require("../lib/protocol");

describe("codec", function () {
    let dir;
    beforeEach(function () {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "kx-codec-"));
    });
    afterEach(function () {
        fs.rmSync(dir, { recursive: true, force: true });
    });

    it("carries small Buffers inline and large ones in 0600 blob files", async function () {
        const small = Buffer.from("héllo");
        const big = Buffer.alloc(BLOB_THRESHOLD, 7);
        const { msg, files } = await codec.encodeMessage({ payload: { small, big } }, { blobDir: dir, reqId: "r1" });
        assert.deepStrictEqual(msg.payload.small, { $kx: "buffer", b64: small.toString("base64") });
        assert.strictEqual(msg.payload.big.$kx, "blob");
        assert.strictEqual(msg.payload.big.size, big.length);
        assert.strictEqual(path.basename(msg.payload.big.path), `${BLOB_PREFIX}${process.pid}-r1-0`);
        assert.deepStrictEqual(files, [msg.payload.big.path]);
        assert.strictEqual(fs.statSync(files[0]).mode & 0o777, 0o600);
        assert.ok(fs.readFileSync(files[0]).equals(big));
        await codec.removeFiles(files);
        assert.ok(!fs.existsSync(files[0]));
    });

    it("decodes markers back to Buffers and removes blob files it read", async function () {
        const file = path.join(dir, BLOB_PREFIX + "1-x-0");
        fs.writeFileSync(file, Buffer.from([1, 2, 3]));
        const out = await codec.decodeValue([[{ a: { $kx: "buffer", b64: "AQI=" }, b: { $kx: "blob", path: file, size: 3 } }]], { blobDir: dir });
        assert.ok(Buffer.isBuffer(out[0][0].a));
        assert.deepStrictEqual([...out[0][0].b], [1, 2, 3]);
        assert.ok(!fs.existsSync(file));
    });

    it("refuses blob paths outside the blob directory", async function () {
        await assert.rejects(codec.decodeValue({ $kx: "blob", path: "/etc/passwd", size: 1 }, { blobDir: dir }), /not a kernelexec file/);
    });

    it("turns NaN and Infinity into null, Dates into ISO strings", async function () {
        const { msg } = await codec.encodeMessage({ payload: [NaN, Infinity, -Infinity, 1.5, new Date(0)] }, { blobDir: dir, reqId: "r" });
        assert.deepStrictEqual(msg.payload, [null, null, null, 1.5, "1970-01-01T00:00:00.000Z"]);
    });

    it("fails clearly on circular objects, BigInt and nested functions", async function () {
        const a = { b: {} };
        a.b.a = a;
        await assert.rejects(codec.encodeMessage({ payload: a }, { blobDir: dir, reqId: "r" }), /msg\.payload\.b\.a: circular reference/);
        await assert.rejects(codec.encodeMessage({ payload: { n: 10n } }, { blobDir: dir, reqId: "r" }), (err) => err.code === "CONVERSION_ERROR" && /msg\.payload\.n: cannot send a BigInt/.test(err.message));
        await assert.rejects(codec.encodeMessage({ payload: [() => 1] }, { blobDir: dir, reqId: "r" }), /msg\.payload\[0\]: cannot send a function/);
    });

    it("keeps a top-level property it cannot encode (not msg.payload) on the JS side", async function () {
        const loop = {};
        loop.self = loop;
        const { msg, kept } = await codec.encodeMessage({ payload: 1, big: 5n, loop, fine: [1] }, { blobDir: dir, reqId: "r" });
        assert.deepStrictEqual(msg, { payload: 1, fine: [1] });
        assert.deepStrictEqual(Object.keys(kept).sort(), ["big", "loop"]);
        assert.strictEqual(kept.loop, loop);
    });

    it("keeps shared (non-circular) references", async function () {
        const shared = { x: 1 };
        const { msg } = await codec.encodeMessage({ payload: [shared, shared] }, { blobDir: dir, reqId: "r" });
        assert.deepStrictEqual(msg.payload, [{ x: 1 }, { x: 1 }]);
    });

    it("keeps req, res, functions and class instances on the JS side", function () {
        class Socket {}
        const msg = { _msgid: "m", payload: 1, topic: "t", req: {}, res: { _res: {} }, cb: () => 1, sock: new Socket() };
        const { wire, kept } = codec.splitMessage(msg);
        assert.deepStrictEqual(Object.keys(wire).sort(), ["_msgid", "payload", "topic"]);
        assert.deepStrictEqual(Object.keys(kept).sort(), ["cb", "req", "res", "sock"]);
        const out = codec.restoreKept({ _msgid: "m", payload: 2, res: "mine" }, kept);
        assert.strictEqual(out.req, msg.req);
        assert.strictEqual(out.res, "mine");
    });

    it("sends plain data as it is, and rebuilds only what changes, never the input", function () {
        const payload = { n: 1, text: "t", list: [1, "a", null, true, { x: [2] }] };
        const plain = codec.encodeWire({ payload, topic: "t" }, { blobDir: dir, reqId: "r" });
        assert.strictEqual(plain.msg.payload, payload, "plain data is not copied");
        const input = { keep: { x: 1 }, list: [1, { b: Buffer.from([1]) }, 3], nan: NaN, gone: undefined, sym: Symbol("s") };
        const before = JSON.stringify(input);
        const { msg } = codec.encodeWire({ payload: input }, { blobDir: dir, reqId: "r" });
        assert.strictEqual(JSON.stringify(input), before, "the input is left alone");
        assert.strictEqual(input.list[1].b.length, 1);
        assert.strictEqual(msg.payload.keep, input.keep, "an unchanged branch is shared");
        assert.deepStrictEqual(JSON.parse(JSON.stringify(msg.payload)), { keep: { x: 1 }, list: [1, { b: { $kx: "buffer", b64: "AQ==" } }, 3], nan: null });
        const odd = { u: [undefined, , 1], m: new Map([[1, "one"]]), s: new Set(["a"]), boxed: new Number(5), d: new Date(0), when: { toJSON: () => "j" } };
        const out = codec.encodeWire({ payload: odd }, { blobDir: dir, reqId: "r" }).msg.payload;
        assert.strictEqual(JSON.stringify(out), '{"u":[null,null,1],"m":{"1":"one"},"s":["a"],"boxed":{},"d":"1970-01-01T00:00:00.000Z","when":"j"}');
        assert.throws(() => codec.encodeWire({ payload: { deep: [{ ok: 1 }, { f: () => 1 }] } }, { blobDir: dir, reqId: "r" }), /msg\.payload\.deep\[1\]\.f: cannot send a function/);
    });

    it("tells which outputs need no file read, and decodes those without waiting", function () {
        assert.strictEqual(codec.markers([[{ payload: { a: [1, "x"] } }]]), 0);
        assert.strictEqual(codec.markers([[{ payload: { $kx: "buffer", b64: "AQI=" } }]]), 1);
        assert.strictEqual(codec.markers([[{ a: { $kx: "buffer", b64: "" } }, { b: [{ $kx: "blob", path: "/x", size: 1 }] }]]), 2);
        const out = codec.decodeInline([[{ payload: { $kx: "buffer", b64: "AQI=" } }]]);
        assert.deepStrictEqual(out[0][0].payload, Buffer.from([1, 2]));
    });

    it("encodes context values with Buffers inline whatever their size", function () {
        const value = codec.encodeInline({ b: Buffer.alloc(BLOB_THRESHOLD + 1) });
        assert.strictEqual(value.b.$kx, "buffer");
    });
});

// lib/codec.js on its own: markers, blob files, kept properties, clear errors.
"use strict";
const assert = require("assert");
const fs = require("fs");
const os = require("os");
const path = require("path");
const codec = require("../lib/codec");
const { BLOB_THRESHOLD, BLOB_PREFIX, MARKER } = require("../lib/protocol");

describe("codec", function () {
    let dir;
    beforeEach(function () {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "kx-codec-"));
    });
    afterEach(function () {
        fs.rmSync(dir, { recursive: true, force: true });
    });

    it("carries small Buffers inline and large ones in 0600 blob files named in the frame's table", async function () {
        const small = Buffer.from("héllo");
        const big = Buffer.alloc(BLOB_THRESHOLD, 7);
        const { msg, files, blobs } = await codec.encodeMessage({ payload: { small, big } }, { blobDir: dir, reqId: "r-1" });
        assert.deepStrictEqual(msg.payload.small, { [MARKER]: "buffer", b64: small.toString("base64") });
        assert.deepStrictEqual(msg.payload.big, { [MARKER]: "blob", i: 0 });
        assert.deepStrictEqual(blobs, [{ name: `${BLOB_PREFIX}${process.pid}-r_1-0`, size: big.length }]);
        assert.deepStrictEqual(files, [path.join(dir, blobs[0].name)]);
        assert.strictEqual(fs.statSync(files[0]).mode & 0o777, 0o600);
        assert.ok(fs.readFileSync(files[0]).equals(big));
        await codec.removeFiles(files);
        assert.ok(!fs.existsSync(files[0]));
    });

    it("decodes markers back to Buffers from the frame's table and removes the files it read", async function () {
        const name = BLOB_PREFIX + "1-x_1-0";
        fs.writeFileSync(path.join(dir, name), Buffer.from([1, 2, 3]));
        const value = [[{ a: { [MARKER]: "buffer", b64: "AQI=" }, b: { [MARKER]: "blob", i: 0 } }]];
        const out = await codec.decodeValue(value, { blobDir: dir, reqId: "x-1", blobs: [{ name, size: 3 }] });
        assert.ok(Buffer.isBuffer(out[0][0].a));
        assert.deepStrictEqual([...out[0][0].b], [1, 2, 3]);
        await codec.removals();
        assert.ok(!fs.existsSync(path.join(dir, name)));
    });

    it("never opens a file a message names: a forged reference is an error, the file stays", async function () {
        const secret = path.join(dir, BLOB_PREFIX + "1-r-0");
        fs.writeFileSync(secret, "token=42");
        const forged = { [MARKER]: "blob", path: secret, size: 8 };
        await assert.rejects(codec.decodeValue({ p: forged }, { blobDir: dir, reqId: "r" }), /not an index into this frame's blob table/);
        await assert.rejects(codec.decodeValue({ p: { [MARKER]: "blob", i: 0 } }, { blobDir: dir, reqId: "r", blobs: [] }), /not an index/);
        for (const name of ["../passwd", "/etc/passwd", "passwd", BLOB_PREFIX + "1-other-0"]) {
            await assert.rejects(codec.decodeValue({ p: { [MARKER]: "blob", i: 0 } }, { blobDir: dir, reqId: "r", blobs: [{ name, size: 1 }] }), /does not name a blob file of this request/);
        }
        assert.strictEqual(fs.readFileSync(secret, "utf8"), "token=42");
    });

    it("refuses a symlink or a hard link named like a blob file", async function () {
        const secret = path.join(dir, "secret");
        fs.writeFileSync(secret, "token=42");
        fs.symlinkSync(secret, path.join(dir, BLOB_PREFIX + "1-r-0"));
        fs.linkSync(secret, path.join(dir, BLOB_PREFIX + "1-r-1"));
        const ref = { p: { [MARKER]: "blob", i: 0 } };
        await assert.rejects(codec.decodeValue(ref, { blobDir: dir, reqId: "r", blobs: [{ name: BLOB_PREFIX + "1-r-0", size: 8 }] }), /ELOOP|cannot be read/);
        await assert.rejects(codec.decodeValue(ref, { blobDir: dir, reqId: "r", blobs: [{ name: BLOB_PREFIX + "1-r-1", size: 8 }] }), /has 2 links/);
        assert.strictEqual(fs.readFileSync(secret, "utf8"), "token=42");
    });

    it("reads, as root, only its own files and those of the pool's kernel user", async function () {
        if (!process.geteuid || process.geteuid() !== 0) {
            this.skip();
        }
        const name = BLOB_PREFIX + "1-r-0";
        fs.writeFileSync(path.join(dir, name), "from uid 4242", { mode: 0o600 });
        fs.chownSync(path.join(dir, name), 4242, 4242);
        const ref = { p: { [MARKER]: "blob", i: 0 } };
        const options = { blobDir: dir, reqId: "r", blobs: [{ name, size: 13 }], unlink: false };
        await assert.rejects(codec.decodeValue(ref, options), /belongs to uid 4242/);
        await assert.rejects(codec.decodeValue(ref, { ...options, kernelUid: 4343 }), /belongs to uid 4242/);
        const back = await codec.decodeValue(ref, { ...options, kernelUid: 4242 });
        assert.strictEqual(back.p.toString(), "from uid 4242");
    });

    it("escapes user objects that look like markers, so they come back as the same data", async function () {
        const lookalikes = [
            { [MARKER]: "blob", path: "/etc/passwd", size: 10 },
            { [MARKER]: "blob", i: 0 },
            { [MARKER]: "buffer", b64: "AQI=" },
            { [MARKER]: "esc", v: { [MARKER]: "blob", i: 0 } },
            { [MARKER]: "x", nested: { [MARKER]: "blob", i: 0 }, data: Buffer.from([1]) },
        ];
        for (const value of lookalikes) {
            const encoded = codec.encodeWire({ payload: value }, { blobDir: dir, reqId: "r" });
            assert.deepStrictEqual(encoded.blobs, []);
            const wire = JSON.parse(JSON.stringify(encoded.msg));
            assert.strictEqual(wire.payload[MARKER], "esc");
            assert.strictEqual(codec.markers(wire), 1);
            assert.deepStrictEqual(codec.decodeInline(wire).payload, value);
            const inline = JSON.parse(JSON.stringify(codec.encodeInline(value)));
            assert.deepStrictEqual(await codec.decodeValue(inline, { unlink: false }), value);
        }
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
        // eslint-disable-next-line no-sparse-arrays -- a hole in an array is one of the odd values
        const odd = { u: [undefined, , 1], m: new Map([[1, "one"]]), s: new Set(["a"]), boxed: new Number(5), d: new Date(0), when: { toJSON: () => "j" } };
        const out = codec.encodeWire({ payload: odd }, { blobDir: dir, reqId: "r" }).msg.payload;
        assert.strictEqual(JSON.stringify(out), '{"u":[null,null,1],"m":{"1":"one"},"s":["a"],"boxed":{},"d":"1970-01-01T00:00:00.000Z","when":"j"}');
        assert.throws(() => codec.encodeWire({ payload: { deep: [{ ok: 1 }, { f: () => 1 }] } }, { blobDir: dir, reqId: "r" }), /msg\.payload\.deep\[1\]\.f: cannot send a function/);
    });

    it("tells which outputs need no file read, and decodes those without waiting", function () {
        assert.strictEqual(codec.markers([[{ payload: { a: [1, "x"] } }]]), 0);
        assert.strictEqual(codec.markers([[{ payload: { $kx: "buffer", b64: "AQI=" } }]]), 1);
        assert.strictEqual(codec.markers([[{ a: { $kx: "buffer", b64: "" } }, { b: [{ $kx: "blob", i: 0 }] }]]), 2);
        const out = codec.decodeInline([[{ payload: { $kx: "buffer", b64: "AQI=" } }]]);
        assert.deepStrictEqual(out[0][0].payload, Buffer.from([1, 2]));
    });

    it("encodes context values with Buffers inline whatever their size", function () {
        const value = codec.encodeInline({ b: Buffer.alloc(BLOB_THRESHOLD + 1) });
        assert.strictEqual(value.b.$kx, "buffer");
    });
});

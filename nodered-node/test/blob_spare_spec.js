// lib/blob_spare.js on its own: a hot runner's warm blob file is kept only when it is a file
// the runner wrote (its own inode, this user's, 0600, one link), never sent when its name was
// swapped, never left behind.
"use strict";
const assert = require("assert");
const fs = require("fs");
const os = require("os");
const path = require("path");
const codec = require("../lib/codec");
const { BlobSpare, inodeOf } = require("../lib/blob_spare");
const { BLOB_PREFIX, MARKER } = require("../lib/protocol");

describe("blob spare", function () {
    let dir;
    const MAX = 1024 * 1024;
    const spareFiles = () => fs.readdirSync(dir).filter((f) => f.includes("-spare-"));
    beforeEach(function () {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "kx-spare-"));
    });
    afterEach(function () {
        fs.rmSync(dir, { recursive: true, force: true });
    });

    function blobFile(name, bytes) {
        const file = path.join(dir, name);
        fs.writeFileSync(file, bytes, { mode: 0o600 });
        return file;
    }
    /** The `mine` set of a runner that wrote these files. */
    const wrote = (...files) => new Set(files.map((f) => inodeOf(fs.lstatSync(f))));

    it("keeps a file it was given and writes the next Buffer into it under the new name", function () {
        const spare = new BlobSpare(MAX);
        const old = blobFile(BLOB_PREFIX + "1-a-0", Buffer.alloc(5000, 9));
        const inode = fs.statSync(old).ino;
        assert.strictEqual(spare.keep(old, new Set()), false, "not a file the runner wrote");
        assert.strictEqual(spare.keep(old, wrote(old)), true);
        assert.ok(!fs.existsSync(old), "the old name is gone");
        assert.strictEqual(spareFiles().length, 1);
        const next = path.join(dir, BLOB_PREFIX + `${process.pid}-b-0`);
        const data = Buffer.from("the next message's bytes");
        const mine = new Set();
        assert.strictEqual(spare.take(next, data, mine), true);
        assert.deepStrictEqual(mine, wrote(next), "the next request may keep it again");
        const info = fs.statSync(next);
        assert.strictEqual(info.ino, inode, "the same (warm) file");
        assert.strictEqual(info.nlink, 1);
        assert.ok(fs.readFileSync(next).equals(data), "exactly the new bytes, the old tail cut off");
        assert.deepStrictEqual(spareFiles(), []);
        assert.strictEqual(spare.take(path.join(dir, BLOB_PREFIX + `${process.pid}-c-0`), data), false, "used up");
        const again = blobFile(BLOB_PREFIX + "1-d-0", "x");
        assert.strictEqual(spare.keep(again, wrote(again)), true);
        const big = path.join(dir, BLOB_PREFIX + `${process.pid}-e-0`);
        assert.strictEqual(spare.take(big, Buffer.alloc(MAX + 1)), false, "above the limit: not on the event loop");
        assert.ok(!fs.existsSync(big));
        assert.strictEqual(spareFiles().length, 1, "still there for a Buffer that fits");
        spare.close();
    });

    it("keeps one file at a time, none larger than its limit, and no link, symlink or directory", function () {
        const spare = new BlobSpare(100);
        const big = blobFile(BLOB_PREFIX + "1-big-0", Buffer.alloc(101));
        assert.strictEqual(spare.keep(big, wrote(big)), false);
        const target = blobFile("secret", "token=42");
        const open = blobFile(BLOB_PREFIX + "1-mode-0", "x");
        fs.chmodSync(open, 0o644);
        fs.linkSync(target, path.join(dir, BLOB_PREFIX + "1-hard-0"));
        fs.symlinkSync(target, path.join(dir, BLOB_PREFIX + "1-sym-0"));
        fs.mkdirSync(path.join(dir, BLOB_PREFIX + "1-dir-0"));
        const all = wrote(target, open, path.join(dir, BLOB_PREFIX + "1-sym-0"), path.join(dir, BLOB_PREFIX + "1-dir-0"));
        for (const name of ["1-mode-0", "1-hard-0", "1-sym-0", "1-dir-0", "1-missing-0"]) {
            assert.strictEqual(spare.keep(path.join(dir, BLOB_PREFIX + name), all), false, name);
        }
        assert.strictEqual(fs.readFileSync(target, "utf8"), "token=42");
        const ok = blobFile(BLOB_PREFIX + "1-ok-0", "x");
        assert.strictEqual(spare.keep(ok, wrote(ok)), true);
        const second = blobFile(BLOB_PREFIX + "1-ok-1", "y");
        assert.strictEqual(spare.keep(second, wrote(second)), false, "one spare only");
        assert.ok(fs.existsSync(second), "a file it does not keep is left to the caller");
        spare.close();
        assert.deepStrictEqual(spareFiles(), []);
        assert.strictEqual(spare.keep(second, wrote(second)), false, "closed: keeps nothing");
    });

    it("as root, never keeps a file of another user (a sandboxed kernel's own)", function () {
        if (!process.geteuid || process.geteuid() !== 0) {
            this.skip();
        }
        const file = blobFile(BLOB_PREFIX + "1-k-0", "from the kernel user");
        const mine = wrote(file);
        fs.chownSync(file, 4242, 4242);
        assert.strictEqual(new BlobSpare(MAX).keep(file, mine), false);
        assert.strictEqual(fs.statSync(file).uid, 4242);
    });

    it("sends nothing when the spare's name was swapped for another file", function () {
        const spare = new BlobSpare(MAX);
        const old = blobFile(BLOB_PREFIX + "1-a-0", "old");
        assert.strictEqual(spare.keep(old, wrote(old)), true);
        const [name] = spareFiles();
        fs.unlinkSync(path.join(dir, name));
        blobFile(name, "planted");
        const next = path.join(dir, BLOB_PREFIX + `${process.pid}-b-0`);
        assert.strictEqual(spare.take(next, Buffer.from("secret bytes"), new Set()), false);
        assert.ok(!fs.existsSync(next), "no file under the request's name");
    });

    it("lets a decode keep an output that is the request's own input, and a write reuse it", async function () {
        const spare = new BlobSpare(MAX);
        const mine = new Set();
        const input = codec.encodeWire({ payload: Buffer.alloc(70000, 3) }, { blobDir: dir, reqId: "x-1" });
        const [file] = await codec.writeBlobs(input.pending, spare, mine);
        assert.strictEqual(mine.size, 1);
        const name = BLOB_PREFIX + "1-x_1-0";
        const other = BLOB_PREFIX + "1-x_1-1";
        fs.renameSync(file, path.join(dir, name));   // the kernel hands the very bytes back
        blobFile(other, Buffer.alloc(70000, 4));      // and makes a file of its own
        const ref = { p: { [MARKER]: "blob", i: 1 }, q: { [MARKER]: "blob", i: 0 } };
        const blobs = [{ name: other, size: 70000 }, { name, size: 70000 }];
        const out = await codec.decodeValue(ref, { blobDir: dir, reqId: "x-1", blobs, spare, mine });
        assert.strictEqual(out.p[0], 3);
        await codec.removals();
        assert.strictEqual(spareFiles().length, 1, "its own file kept");
        assert.ok(!fs.existsSync(path.join(dir, other)), "the kernel's file removed");
        const big = Buffer.alloc(80000, 5);
        const encoded = codec.encodeWire({ payload: big }, { blobDir: dir, reqId: "y-1" });
        const [next] = await codec.writeBlobs(encoded.pending, spare, new Set());
        assert.ok(fs.readFileSync(next).equals(big));
        assert.deepStrictEqual(spareFiles(), []);
    });
});

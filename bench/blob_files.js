// Node-side cost of blob files: 200 times encodeMessage then decodeValue of a 1 MiB Buffer in
// /dev/shm (mean ms per call), then the same work done with plain synchronous calls.
// Run: node bench/blob_files.js
"use strict";
const fs = require("fs");
const codec = require("../nodered-node/lib/codec");

const N = 200;
const DIR = fs.existsSync("/dev/shm") ? "/dev/shm" : require("os").tmpdir();

async function codecRoundTrips(buf) {
    const times = { encode: 0n, decode: 0n };
    for (let i = 0; i < N; i++) {
        const reqId = "bench" + i;
        const t0 = process.hrtime.bigint();
        const { msg, blobs } = await codec.encodeMessage({ payload: buf }, { blobDir: DIR, reqId });
        const t1 = process.hrtime.bigint();
        await codec.decodeValue(msg, { blobDir: DIR, blobs, reqId });
        times.encode += t1 - t0;
        times.decode += process.hrtime.bigint() - t1;
    }
    return times;
}

function plainSyncRoundTrips(buf) {
    const t0 = process.hrtime.bigint();
    const { O_WRONLY, O_CREAT, O_EXCL, O_RDONLY, O_NOFOLLOW } = fs.constants;
    for (let i = 0; i < N; i++) {
        const file = `${DIR}/kx-bench-sync-${process.pid}-${i}`;
        const fd = fs.openSync(file, O_WRONLY | O_CREAT | O_EXCL, 0o600);
        fs.writeSync(fd, buf);
        fs.closeSync(fd);
        const rd = fs.openSync(file, O_RDONLY | O_NOFOLLOW);
        const out = Buffer.allocUnsafe(fs.fstatSync(rd).size);
        fs.readSync(rd, out, 0, out.length, 0);
        fs.closeSync(rd);
        fs.unlinkSync(file);
    }
    return process.hrtime.bigint() - t0;
}

(async () => {
    const buf = Buffer.alloc(1 << 20, 7);
    const times = await codecRoundTrips(buf);
    const ms = (ns) => (Number(ns) / N / 1e6).toFixed(3);
    console.log(`codec: encode (write) ${ms(times.encode)} ms, decode (read + unlink) ${ms(times.decode)} ms`);
    console.log(`plain sync write + read + unlink: ${ms(plainSyncRoundTrips(buf))} ms`);
})();

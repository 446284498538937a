// The floor subject: the least a JS-to-Python round trip can cost.
//
// One plain Python process (bench/floor_worker.py) per node, requests pipelined over its
// stdin/stdout with length-prefixed byte frames:
//   u32 json_len | u32 n_buffers | u32 buffer_len * n_buffers | JSON (UTF-8) | raw buffers
// Buffers travel raw after the JSON (which holds {"$b": i} in their place): no base64, no file.
// Replies come back in request order, so a FIFO matches them. A message arriving while nothing
// is in flight is written at once; while replies are pending, writes made in one turn of the
// event loop leave together in one writev (cork/uncork), as a burst wants.
"use strict";
const { spawn } = require("child_process");
const path = require("path");

const WORKER = path.join(__dirname, "..", "floor_worker.py");
const KEPT = new Set(["req", "res"]);

function toWire(value, buffers) {
    if (value === null || typeof value !== "object") {
        return value;
    }
    if (Buffer.isBuffer(value)) {
        buffers.push(value);
        return { $b: buffers.length - 1 };
    }
    if (Array.isArray(value)) {
        return value.map((item) => toWire(item, buffers));
    }
    const out = {};
    for (const key of Object.keys(value)) {
        if (typeof value[key] !== "function") {
            out[key] = toWire(value[key], buffers);
        }
    }
    return out;
}

function fromWire(value, buffers) {
    if (value === null || typeof value !== "object") {
        return value;
    }
    if (Array.isArray(value)) {
        for (let i = 0; i < value.length; i++) {
            value[i] = fromWire(value[i], buffers);
        }
        return value;
    }
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === "$b") {
        return buffers[value.$b];
    }
    for (const key of keys) {
        value[key] = fromWire(value[key], buffers);
    }
    return value;
}

/** Encode a message as frame parts (header, JSON, buffers), kept props split off. */
function encode(msg) {
    const buffers = [];
    const wire = {};
    const kept = {};
    for (const key of Object.keys(msg)) {
        if (KEPT.has(key) || typeof msg[key] === "function") {
            kept[key] = msg[key];
        } else {
            wire[key] = toWire(msg[key], buffers);
        }
    }
    const json = Buffer.from(JSON.stringify(wire));
    const head = Buffer.allocUnsafe(8 + 4 * buffers.length);
    head.writeUInt32LE(json.length, 0);
    head.writeUInt32LE(buffers.length, 4);
    buffers.forEach((b, i) => head.writeUInt32LE(b.length, 8 + 4 * i));
    return { parts: [head, json, ...buffers], kept };
}

/** Incremental frame parser over a stream of chunks. */
class FrameReader {
    constructor(onFrame) {
        this.onFrame = onFrame;
        this.chunks = [];
        this.have = 0;
        this.frame = null;
    }

    peek(n) {
        if (this.chunks[0].length < n) {
            this.chunks = [Buffer.concat(this.chunks)];
        }
        return this.chunks[0];
    }

    take(n) {
        const first = this.chunks[0];
        this.have -= n;
        if (first.length === n) {
            this.chunks.shift();
            return first;
        }
        if (first.length > n) {
            this.chunks[0] = first.subarray(n);
            return first.subarray(0, n);
        }
        const out = Buffer.allocUnsafe(n);
        let at = 0;
        while (at < n) {
            const chunk = this.chunks[0];
            const part = Math.min(chunk.length, n - at);
            chunk.copy(out, at, 0, part);
            at += part;
            if (part === chunk.length) {
                this.chunks.shift();
            } else {
                this.chunks[0] = chunk.subarray(part);
            }
        }
        return out;
    }

    push(chunk) {
        this.chunks.push(chunk);
        this.have += chunk.length;
        for (;;) {
            if (!this.frame) {
                if (this.have < 8) {
                    return;
                }
                let head = this.peek(8);
                const jsonLen = head.readUInt32LE(0);
                const count = head.readUInt32LE(4);
                const headLen = 8 + 4 * count;
                if (this.have < headLen) {
                    return;
                }
                head = this.peek(headLen);
                const sizes = [];
                let total = headLen + jsonLen;
                for (let i = 0; i < count; i++) {
                    sizes.push(head.readUInt32LE(8 + 4 * i));
                    total += sizes[i];
                }
                this.frame = { headLen, jsonLen, sizes, total };
            }
            if (this.have < this.frame.total) {
                return;
            }
            const { headLen, jsonLen, sizes, total } = this.frame;
            this.frame = null;
            const data = this.take(total);
            const text = data.toString("utf8", headLen, headLen + jsonLen);
            const buffers = [];
            let at = headLen + jsonLen;
            for (const size of sizes) {
                buffers.push(data.subarray(at, at + size));
                at += size;
            }
            this.onFrame(text, buffers);
        }
    }
}

module.exports = function (RED) {
    function BenchFloor(config) {
        RED.nodes.createNode(this, config);
        const node = this;
        const python = config.python || process.env.KERNELEXEC_PYTHON || "python3";
        const pending = [];
        let corked = false;
        const child = spawn(python, [WORKER], { stdio: ["pipe", "pipe", "inherit"] });
        node.pid = child.pid;
        child.stdin.on("error", () => {});
        const reader = new FrameReader((text, buffers) => {
            const job = pending.shift();
            const reply = JSON.parse(text);
            if (reply.error) {
                job.done(new Error(reply.error));
                return;
            }
            const out = buffers.length ? fromWire(reply.ok, buffers) : reply.ok;
            Object.assign(out, job.kept);
            job.send(out);
            job.done();
        });
        child.stdout.on("data", (chunk) => reader.push(chunk));
        child.on("exit", (code, signal) => {
            node.exited = true;
            while (pending.length) {
                pending.shift().done(new Error(`floor worker exited (${code || signal})`));
            }
        });
        node.on("input", (msg, send, done) => {
            if (node.exited) {
                done(new Error("floor worker is not running"));
                return;
            }
            const { parts, kept } = encode(msg);
            pending.push({ send, done, kept });
            if (pending.length === 1 && !corked) {
                // Nothing in flight: write now (no batching delay for a lone message).
                for (const part of parts) {
                    child.stdin.write(part);
                }
                return;
            }
            if (!corked) {
                corked = true;
                child.stdin.cork();
                setImmediate(() => {
                    corked = false;
                    child.stdin.uncork();
                });
            }
            for (const part of parts) {
                child.stdin.write(part);
            }
        });
        node.on("close", (removed, done) => {
            if (node.exited) {
                done();
                return;
            }
            const timer = setTimeout(() => child.kill("SIGKILL"), 2000);
            child.once("exit", () => {
                clearTimeout(timer);
                done();
            });
            child.stdin.end();
        });
    }
    RED.nodes.registerType("bench-floor", BenchFloor);
};

module.exports.encode = encode;
module.exports.FrameReader = FrameReader;

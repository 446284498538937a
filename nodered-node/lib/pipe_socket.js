// The bridge protocol over the socket pair Node-RED hands a bridge it starts (stdio fd 3,
// `kernelexec serve --node-fd 3`): the same messages as over the WebSocket (one JSON frame or
// an array of frames), each prefixed by its length (4 bytes, big-endian), without WebSocket
// framing, masking or token (only the two processes hold the socket). See
// kernelexec/server/pipe.py.
//
// PipeSocket offers the part of the `ws` client's interface that lib/bridge.js uses:
// readyState (OPEN = 1), send(text), close(), terminate(), and the events "open", "message"
// (a Buffer), "error" and "close".
"use strict";
const { EventEmitter } = require("events");

const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 3;
const HEADER = 4;

class PipeSocket extends EventEmitter {
    /**
     * @param {import("net").Socket} stream the parent's end of the socket pair
     * @param {number} maxPayload the largest message accepted (the protocol's max_frame_bytes)
     */
    constructor(stream, maxPayload) {
        super();
        this.stream = stream;
        this.maxPayload = maxPayload;
        this.readyState = CONNECTING;
        this.chunks = [];
        this.buffered = 0;
        stream.setNoDelay && stream.setNoDelay(true);
        stream.on("data", (chunk) => this.received(chunk));
        stream.on("error", (err) => this.emit("error", err));
        stream.on("close", () => this.closed());
        setImmediate(() => {
            if (this.readyState === CONNECTING) {
                this.readyState = OPEN;
                this.emit("open");
            }
        });
    }

    send(text) {
        if (this.readyState !== OPEN) {
            return;
        }
        const body = Buffer.from(text, "utf8");
        const header = Buffer.allocUnsafe(HEADER);
        header.writeUInt32BE(body.length, 0);
        this.stream.write(Buffer.concat([header, body], HEADER + body.length));
    }

    received(chunk) {
        this.chunks.push(chunk);
        this.buffered += chunk.length;
        while (this.buffered >= HEADER) {
            const head = this.chunks.length === 1 ? this.chunks[0] : this.joined();
            const size = head.readUInt32BE(0);
            if (size > this.maxPayload) {
                this.emit("error", new Error(`a ${size}-byte message from the bridge is over the limit (${this.maxPayload})`));
                this.terminate();
                return;
            }
            if (this.buffered < HEADER + size) {
                return;
            }
            const all = this.joined();
            const message = all.subarray(HEADER, HEADER + size);
            const rest = all.subarray(HEADER + size);
            this.chunks = rest.length > 0 ? [rest] : [];
            this.buffered = rest.length;
            this.emit("message", message);
            if (this.readyState !== OPEN) {
                return;
            }
        }
    }

    joined() {
        if (this.chunks.length > 1) {
            this.chunks = [Buffer.concat(this.chunks, this.buffered)];
        }
        return this.chunks[0];
    }

    close() {
        if (this.readyState !== CLOSED) {
            this.stream.end();
        }
    }

    terminate() {
        if (this.readyState !== CLOSED) {
            this.stream.destroy();
        }
    }

    closed() {
        if (this.readyState === CLOSED) {
            return;
        }
        this.readyState = CLOSED;
        this.emit("close");
    }
}

module.exports = { PipeSocket, OPEN };

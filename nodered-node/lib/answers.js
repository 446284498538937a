// The answer socket (kernelexec/kernel/answers.py): the kernels of a bridge this runtime
// started write a plain message's result frame here, before the bridge hears of it, so that
// a hot message wakes one process less on its way back.
//
// One Unix socket per Bridge, in a directory of its own (fs.mkdtemp: mode 0700, so only this
// user reaches it), offered in the hello over the socket pair (`answers: {path, token}`). A
// kernel connects and sends {token, node_id} first (length-prefixed JSON, as the socket pair:
// lib/pipe_socket.js); a wrong token closes the connection. Then only `result` frames for that
// node are taken, and handed to the Bridge, which gives them to the node's client: the client
// keeps the first result of a request it holds (the bridge may still send one, e.g. when the
// kernel died right after writing here). Nothing depends on this socket: a result that did
// not go whole through it comes from the bridge.
//
// The other way: a kernel says {type: "ready"} once its setup ran, and its node may then write
// a message's execute frame to it directly (send(); lib/runner.js decides when). The bridge
// accounts for such a message from the kernel's result pipe (kernelexec/directruns.py).
"use strict";
const crypto = require("crypto");
const fs = require("fs");
const net = require("net");
const os = require("os");
const path = require("path");
const { PipeSocket } = require("./pipe_socket");

const SOCKET_NAME = "answers";
const OPEN = 1;   // PipeSocket.readyState: it sends only then
const MAX_PATH = 107;   // sun_path: 108 bytes with the NUL
const open = new Set();   // directories to remove if the process exits without close()

class AnswerServer {
    /**
     * @param maxPayload the largest frame accepted
     * @param onAnswer   (nodeId, frame) for each result frame of an introduced kernel
     */
    constructor(maxPayload, onAnswer) {
        this.maxPayload = maxPayload;
        this.onAnswer = onAnswer;
        this.server = null;
        this.dir = null;
        this.offer = null;
        this.sockets = new Set();
        this.readyKernels = new Map();   // node id -> {pid, socket}: the kernel that takes requests
        this.taken = 0;   // result frames handed on (diagnostics, tests)
        this.sent = 0;    // execute frames written to kernels (diagnostics, tests)
    }

    /** Listen (once); the hello's `answers` object, or null when the socket cannot be made. */
    listen() {
        if (this.offer || this.server) {
            return this.offer;
        }
        let dir = null;
        try {
            dir = fs.mkdtempSync(path.join(os.tmpdir(), "kernelexec-"));
            const where = path.join(dir, SOCKET_NAME);
            if (Buffer.byteLength(where) > MAX_PATH) {
                throw new Error("path too long");
            }
            const server = net.createServer((socket) => this.accepted(socket));
            server.on("error", () => this.close());
            server.listen(where);   // a path: bound at once, connections wait in the backlog
            this.server = server;
            this.dir = dir;
            open.add(dir);
            this.offer = { path: where, token: crypto.randomBytes(24).toString("hex") };
        } catch (err) {
            if (dir) {
                fs.rmSync(dir, { recursive: true, force: true });
            }
            return null;
        }
        return this.offer;
    }

    accepted(socket) {
        this.sockets.add(socket);
        const pipe = new PipeSocket(socket, this.maxPayload);
        pipe.on("error", () => socket.destroy());
        let kernel = null;   // {nodeId, pid, socket, pipe} once it introduced itself
        socket.on("error", () => {});
        socket.on("close", () => {
            this.sockets.delete(socket);
            if (kernel && this.readyKernels.get(kernel.nodeId) === kernel) {
                this.readyKernels.delete(kernel.nodeId);
            }
        });
        pipe.on("message", (data) => {
            let frame;
            try {
                frame = JSON.parse(data.toString());
            } catch (err) {
                socket.destroy();
                return;
            }
            if (kernel === null) {
                kernel = this.introduced(frame, socket, pipe);
                if (kernel === null) {
                    socket.destroy();
                }
            } else if (frame && frame.type === "result" && frame.node_id === kernel.nodeId) {
                this.taken += 1;
                this.onAnswer(kernel.nodeId, frame);
            } else if (frame && frame.type === "ready") {
                this.readyKernels.set(kernel.nodeId, kernel);
            }
        });
    }

    /** The kernel a connection's first frame introduces, when its token is this socket's. */
    introduced(frame, socket, pipe) {
        if (!this.offer || !frame || typeof frame.token !== "string" || typeof frame.node_id !== "string" ||
                !Number.isInteger(frame.pid)) {
            return null;
        }
        const theirs = Buffer.from(frame.token);
        const ours = Buffer.from(this.offer.token);
        if (theirs.length !== ours.length || !crypto.timingSafeEqual(theirs, ours)) {
            return null;
        }
        return { nodeId: frame.node_id, pid: frame.pid, socket, pipe };
    }

    /** Whether a kernel of `nodeId` takes requests (it said ready, its connection is open). */
    takesRequests(nodeId) {
        const kernel = this.readyKernels.get(nodeId);
        return Boolean(kernel && kernel.pipe.readyState === OPEN && !kernel.socket.destroyed && kernel.socket.writable);
    }

    /** Write an execute frame (JSON text) to the ready kernel of `nodeId`: its pid, or null. */
    send(nodeId, text) {
        if (!this.takesRequests(nodeId)) {
            return null;
        }
        const kernel = this.readyKernels.get(nodeId);
        kernel.pipe.send(text);   // length-prefixed, as on the socket pair
        this.sent += 1;
        return kernel.pid;
    }

    /** The bridge is gone: its kernels' connections too (the next bridge's kernels connect anew). */
    dropKernels() {
        for (const socket of this.sockets) {
            socket.destroy();
        }
        this.sockets.clear();
        this.readyKernels.clear();
    }

    close() {
        this.dropKernels();
        if (this.server) {
            this.server.close();
            this.server = null;
        }
        if (this.dir) {
            fs.rmSync(this.dir, { recursive: true, force: true });
            open.delete(this.dir);
            this.dir = null;
        }
        this.offer = null;
    }
}

process.once("exit", () => {
    for (const dir of open) {
        fs.rmSync(dir, { recursive: true, force: true });
    }
});

module.exports = { AnswerServer };

// Node-RED message <-> protocol value encoding (spec.json "value_encoding").
//
//   Buffer below blob_threshold_bytes  -> {"$kx": "buffer", "b64": ...}
//   Buffer at or above it              -> {"$kx": "blob", "path", "size"}: a 0600 file in the
//                                         bridge's blob_dir named <blob_prefix><pid>-<req_id>-<n>
//   NaN / Infinity                     -> null (as JSON.stringify does)
//   circular objects, BigInt, nested functions -> CodecError (the message fails, nothing crashes)
//
// Top-level message properties that cannot cross a process boundary (msg.req, msg.res, functions,
// sockets and other class instances) are split off by splitMessage() and kept on the JS side;
// so is any other top-level property that fails to encode, except msg.payload (an error).
"use strict";
const fs = require("fs");
const path = require("path");
const { MARKER, BLOB_THRESHOLD, BLOB_PREFIX } = require("./protocol");

const KEPT_NAMES = new Set(["req", "res"]);

/** A value that cannot be converted; `where` is the property path, e.g. msg.payload.a[2]. */
class CodecError extends Error {
    constructor(where, reason) {
        super(`${where}: ${reason}`);
        this.name = "CodecError";
        this.code = "CONVERSION_ERROR";
        this.where = where;
        this.reason = reason;
    }
}

function isPlainObject(value) {
    const proto = Object.getPrototypeOf(value);
    return proto === Object.prototype || proto === null;
}

function isCrossable(value) {
    if (typeof value === "function") {
        return false;
    }
    if (value === null || typeof value !== "object") {
        return true;
    }
    return Array.isArray(value) || isPlainObject(value) || Buffer.isBuffer(value) ||
        ArrayBuffer.isView(value) || value instanceof ArrayBuffer || value instanceof Date ||
        value instanceof Map || value instanceof Set;
}

/**
 * Split a message into what travels to Python and what stays here (msg.req, msg.res,
 * functions, class instances such as sockets). msg.payload always travels.
 */
function splitMessage(msg) {
    const wire = {};
    const kept = {};
    for (const key of Object.keys(msg)) {
        const value = msg[key];
        if (key !== "payload" && (KEPT_NAMES.has(key) || !isCrossable(value))) {
            kept[key] = value;
        } else {
            wire[key] = value;
        }
    }
    return { wire, kept };
}

/** Put kept properties back on an output message that belongs to the same input message. */
function restoreKept(msg, kept) {
    for (const [key, value] of Object.entries(kept)) {
        if (!(key in msg)) {
            msg[key] = value;
        }
    }
    return msg;
}

class Encoder {
    constructor(options) {
        this.inline = !options || !options.blobDir;
        this.blobDir = options && options.blobDir;
        this.stem = options && `${BLOB_PREFIX}${process.pid}-${options.reqId}-`;
        this.pending = [];
        this.ancestors = new Set();
    }

    bytes(buf) {
        if (this.inline || buf.length < BLOB_THRESHOLD) {
            return { [MARKER]: "buffer", b64: buf.toString("base64") };
        }
        const file = path.join(this.blobDir, this.stem + this.pending.length);
        this.pending.push({ file, buf });
        return { [MARKER]: "blob", path: file, size: buf.length };
    }

    value(value, where) {
        switch (typeof value) {
        case "string":
        case "boolean":
            return value;
        case "number":
            return Number.isFinite(value) ? value : null;
        case "bigint":
            throw new CodecError(where, "cannot send a BigInt to Python; convert it to a Number or a String first");
        case "function":
            throw new CodecError(where, "cannot send a function to Python");
        case "undefined":
        case "symbol":
            return undefined;
        }
        if (value === null) {
            return null;
        }
        return this.object(value, where);
    }

    object(value, where) {
        if (Buffer.isBuffer(value) || value instanceof Uint8Array) {
            return this.bytes(Buffer.from(value.buffer, value.byteOffset, value.byteLength));
        }
        if (value instanceof ArrayBuffer) {
            return this.bytes(Buffer.from(value));
        }
        if (ArrayBuffer.isView(value)) {
            return Array.from(value, (v) => this.value(v, where));
        }
        if (value instanceof Date) {
            return isNaN(value.getTime()) ? null : value.toISOString();
        }
        if (this.ancestors.has(value)) {
            throw new CodecError(where, "circular reference; Python can only receive trees of values");
        }
        this.ancestors.add(value);
        try {
            return this.container(value, where);
        } finally {
            this.ancestors.delete(value);
        }
    }

    container(value, where) {
        if (typeof value.toJSON === "function") {
            return this.value(value.toJSON(), where);
        }
        if (Array.isArray(value) || value instanceof Set) {
            return Array.from(value, (v, i) => {
                const out = this.value(v, `${where}[${i}]`);
                return out === undefined ? null : out;
            });
        }
        const out = {};
        const entries = value instanceof Map ? Array.from(value, ([k, v]) => [String(k), v]) : Object.entries(value);
        for (const [key, v] of entries) {
            const encoded = this.value(v, `${where}.${key}`);
            if (encoded !== undefined) {
                out[key] = encoded;
            }
        }
        return out;
    }

    async flush() {
        const written = [];
        try {
            for (const { file, buf } of this.pending) {
                written.push(file);
                await fs.promises.writeFile(file, buf, { mode: 0o600, flag: "wx" });
            }
        } catch (err) {
            await removeFiles(written);
            throw err;
        }
        return written;
    }
}

/**
 * Encode a message's crossable part for an execute frame. Large Buffers are written to files
 * in blobDir; the caller owns `files` and must removeFiles() them when the request ends.
 * `kept`: top-level properties (not payload) that could not be encoded, to keep on the JS side.
 */
async function encodeMessage(wire, options) {
    const encoder = new Encoder(options);
    const msg = {};
    const kept = {};
    for (const [key, value] of Object.entries(wire)) {
        const mark = encoder.pending.length;
        try {
            const encoded = encoder.value(value, `msg.${key}`);
            if (encoded !== undefined) {
                msg[key] = encoded;
            }
        } catch (err) {
            // msg.payload must cross; another top-level property JSON cannot carry stays here
            if (key === "payload" || !(err instanceof CodecError)) {
                throw err;
            }
            encoder.pending.length = mark;
            kept[key] = value;
        }
    }
    const files = await encoder.flush();
    return { msg, files, kept };
}

/** Encode one value with every Buffer inline (context replies). */
function encodeInline(value, where) {
    const out = new Encoder(null).value(value, where || "value");
    return out === undefined ? null : out;
}

function collectBlobs(value, found) {
    if (Array.isArray(value)) {
        for (const item of value) {
            collectBlobs(item, found);
        }
    } else if (value && typeof value === "object") {
        if (value[MARKER] === "blob") {
            found.push(value);
            return found;
        }
        for (const key of Object.keys(value)) {
            collectBlobs(value[key], found);
        }
    }
    return found;
}

function replaceMarkers(value, blobs) {
    if (Array.isArray(value)) {
        return value.map((v) => replaceMarkers(v, blobs));
    }
    if (!value || typeof value !== "object") {
        return value;
    }
    if (value[MARKER] === "buffer" && typeof value.b64 === "string") {
        return Buffer.from(value.b64, "base64");
    }
    if (value[MARKER] === "blob" && blobs.has(value)) {
        return blobs.get(value);
    }
    for (const key of Object.keys(value)) {
        value[key] = replaceMarkers(value[key], blobs);
    }
    return value;
}

/**
 * Turn markers back into Buffers. Blob files are read and then removed (`unlink`, default true):
 * the reader of an output owns the file once it has it.
 */
async function decodeValue(value, options) {
    const unlink = !options || options.unlink !== false;
    const blobDir = options && options.blobDir;
    const markers = collectBlobs(value, []);
    const blobs = new Map();
    let failure = null;
    for (const marker of markers) {
        if (!isBlobPath(marker.path, blobDir)) {
            failure = failure || new CodecError("blob " + marker.path, "is not a kernelexec file in the blob directory");
            continue;
        }
        try {
            blobs.set(marker, await fs.promises.readFile(marker.path));
        } catch (err) {
            failure = failure || new CodecError("blob " + marker.path, "cannot be read: " + err.message);
        }
    }
    if (unlink) {
        await removeFiles(markers.map((m) => m.path).filter((p) => isBlobPath(p, blobDir)));
    }
    if (failure) {
        throw failure;
    }
    return replaceMarkers(value, blobs);
}

/** Only files named like blobs, directly inside the blob directory, are read or removed. */
function isBlobPath(file, blobDir) {
    if (typeof file !== "string" || !path.isAbsolute(file)) {
        return false;
    }
    const base = path.basename(file);
    return base.startsWith(BLOB_PREFIX) && (!blobDir || path.join(blobDir, base) === path.normalize(file));
}

/** Remove files, ignoring the ones already gone. Never throws. */
async function removeFiles(files) {
    await Promise.all((files || []).map((file) => fs.promises.unlink(file).catch(() => {})));
}

/** Remove the blob files a value refers to without reading them (outputs nobody will take). */
function discardBlobs(value, blobDir) {
    const paths = collectBlobs(value, []).map((m) => m.path).filter((p) => isBlobPath(p, blobDir));
    return removeFiles(paths);
}

module.exports = {
    CodecError,
    splitMessage,
    restoreKept,
    encodeMessage,
    encodeInline,
    decodeValue,
    removeFiles,
    discardBlobs,
};

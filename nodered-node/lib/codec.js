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

// The encoder returns a value unchanged (the very same object) when JSON.stringify would
// already write it as the protocol wants: plain objects and arrays whose values are strings,
// finite numbers, booleans, null or such containers. Only what differs (a Buffer, a Date,
// NaN, a Map, a class instance...) is rebuilt, with its containers up to the top, so that a
// message of plain data crosses without a copy. The property path of a value (for errors:
// msg.payload.a[2]) is kept as a stack of keys and only made into a string for an error.
class Encoder {
    constructor(options) {
        this.inline = !options || !options.blobDir;
        this.blobDir = options && options.blobDir;
        this.stem = options && `${BLOB_PREFIX}${process.pid}-${options.reqId}-`;
        this.pending = [];
        this.ancestors = new Set();
        this.root = "msg";
        this.keys = [];   // the path below root: strings (object keys) and numbers (indexes)
    }

    /** Encode `value`, found at `where` (a path such as msg.payload) in error messages. */
    encode(value, where) {
        this.root = where;
        this.keys.length = 0;
        return this.value(value);
    }

    where() {
        let out = this.root;
        for (const key of this.keys) {
            out += typeof key === "number" ? `[${key}]` : `.${key}`;
        }
        return out;
    }

    fail(reason) {
        throw new CodecError(this.where(), reason);
    }

    bytes(buf) {
        if (this.inline || buf.length < BLOB_THRESHOLD) {
            return { [MARKER]: "buffer", b64: buf.toString("base64") };
        }
        const file = path.join(this.blobDir, this.stem + this.pending.length);
        this.pending.push({ file, buf });
        return { [MARKER]: "blob", path: file, size: buf.length };
    }

    value(value) {
        switch (typeof value) {
        case "string":
        case "boolean":
            return value;
        case "number":
            return Number.isFinite(value) ? value : null;
        case "bigint":
            return this.fail("cannot send a BigInt to Python; convert it to a Number or a String first");
        case "function":
            return this.fail("cannot send a function to Python");
        case "undefined":
        case "symbol":
            return undefined;
        }
        if (value === null) {
            return null;
        }
        return this.object(value);
    }

    object(value) {
        if (Buffer.isBuffer(value) || value instanceof Uint8Array) {
            return this.bytes(Buffer.from(value.buffer, value.byteOffset, value.byteLength));
        }
        if (value instanceof ArrayBuffer) {
            return this.bytes(Buffer.from(value));
        }
        if (ArrayBuffer.isView(value)) {
            return Array.from(value, (v) => this.value(v));
        }
        if (value instanceof Date) {
            return isNaN(value.getTime()) ? null : value.toISOString();
        }
        if (this.ancestors.has(value)) {
            return this.fail("circular reference; Python can only receive trees of values");
        }
        this.ancestors.add(value);
        try {
            return this.container(value);
        } finally {
            this.ancestors.delete(value);
        }
    }

    container(value) {
        if (typeof value.toJSON === "function") {
            return this.value(value.toJSON());
        }
        if (Array.isArray(value)) {
            return this.array(value);
        }
        if (value instanceof Set) {
            return this.array(Array.from(value), true);
        }
        if (value instanceof Map) {
            return this.entries(Array.from(value, ([k, v]) => [String(k), v]));
        }
        if (!isPlainObject(value)) {   // a class instance: its own enumerable properties
            return this.entries(Object.entries(value));
        }
        const keys = Object.keys(value);
        let out = null;   // the copy, made at the first value that changes
        this.keys.push("");
        for (let i = 0; i < keys.length; i++) {
            const key = keys[i];
            const v = value[key];
            this.keys[this.keys.length - 1] = key;
            const encoded = this.value(v);
            if (out === null && encoded !== v) {
                out = {};
                for (let j = 0; j < i; j++) {
                    out[keys[j]] = value[keys[j]];
                }
            }
            if (out !== null && encoded !== undefined) {
                out[key] = encoded;
            }
        }
        this.keys.pop();
        return out === null ? value : out;
    }

    /** An array's items (undefined becomes null, as in JSON); `copy`: never the same array. */
    array(value, copy = false) {
        let out = copy ? [] : null;
        this.keys.push(0);
        for (let i = 0; i < value.length; i++) {
            const v = value[i];
            this.keys[this.keys.length - 1] = i;
            let encoded = this.value(v);
            if (encoded === undefined) {
                encoded = null;
            }
            if (out === null && encoded !== v) {
                out = value.slice(0, i);
            }
            if (out !== null) {
                out.push(encoded);
            }
        }
        this.keys.pop();
        return out === null ? value : out;
    }

    entries(entries) {
        const out = {};
        this.keys.push("");
        for (const [key, v] of entries) {
            this.keys[this.keys.length - 1] = key;
            const encoded = this.value(v);
            if (encoded !== undefined) {
                out[key] = encoded;
            }
        }
        this.keys.pop();
        return out;
    }
}

/**
 * Encode a message's crossable part for an execute frame, without writing anything:
 * `msg` (JSON-safe; parts of the input that need no change are the input's own objects, so
 * serialize it before anything can change them), `kept` (top-level properties, not payload,
 * that could not be encoded, to keep on the JS side) and `pending` (Buffers too large to go
 * inline: write them with writeBlobs(pending) before sending msg).
 */
function encodeWire(wire, options) {
    const encoder = new Encoder(options);
    const msg = {};
    const kept = {};
    for (const key of Object.keys(wire)) {
        const value = wire[key];
        const mark = encoder.pending.length;
        try {
            const encoded = encoder.encode(value, `msg.${key}`);
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
    return { msg, kept, pending: encoder.pending };
}

/** Write the blob files of encodeWire's `pending`; on failure none is left. Returns the paths. */
async function writeBlobs(pending) {
    const written = [];
    try {
        for (const { file, buf } of pending) {
            written.push(file);
            await fs.promises.writeFile(file, buf, { mode: 0o600, flag: "wx" });
        }
    } catch (err) {
        await removeFiles(written);
        throw err;
    }
    return written;
}

/**
 * Encode a message's crossable part for an execute frame. Large Buffers are written to files
 * in blobDir; the caller owns `files` and must removeFiles() them when the request ends.
 * `kept`: top-level properties (not payload) that could not be encoded, to keep on the JS side.
 */
async function encodeMessage(wire, options) {
    const { msg, kept, pending } = encodeWire(wire, options);
    const files = pending.length > 0 ? await writeBlobs(pending) : [];
    return { msg, files, kept };
}

/** Encode one value with every Buffer inline (context replies). */
function encodeInline(value, where) {
    const out = new Encoder(null).encode(value, where || "value");
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

/** What decoding `value` needs: 0 nothing, 1 inline Buffers only, 2 blob files to read. */
function markers(value) {
    if (value === null || typeof value !== "object") {
        return 0;
    }
    let found = 0;
    if (Array.isArray(value)) {
        for (let i = 0; i < value.length && found < 2; i++) {
            found = Math.max(found, markers(value[i]));
        }
        return found;
    }
    const kind = value[MARKER];
    if (kind === "blob") {
        return 2;
    }
    if (kind === "buffer" && typeof value.b64 === "string") {
        return 1;
    }
    for (const key in value) {
        if (found === 2) {
            break;
        }
        found = Math.max(found, markers(value[key]));
    }
    return found;
}

const NO_BLOBS = new Map();

/**
 * decodeValue without waiting, for a value without blob markers (markers(value) < 2): inline
 * Buffers are decoded in place. Returns `value`.
 */
function decodeInline(value) {
    return replaceMarkers(value, NO_BLOBS);
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
    encodeWire,
    writeBlobs,
    encodeMessage,
    encodeInline,
    markers,
    decodeInline,
    decodeValue,
    removeFiles,
    discardBlobs,
};

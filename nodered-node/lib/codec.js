// Node-RED message <-> protocol value encoding (spec.json "value_encoding"). The one JS module
// that knows the markers (their names come from spec.json through protocol.js):
//
//   Buffer below blob_threshold_bytes  -> buffer marker {MARKER: "buffer", b64}
//   Buffer at or above it              -> blob marker {MARKER: "blob", i}: entry i of the frame's
//                                         blob table (frame.blobs, [{name, size}]), a 0600 file in
//                                         the bridge's blob_dir named <blob_prefix><pid>-<req_id>-<n>
//   a plain object with a MARKER key   -> escaped {MARKER: "esc", v: object}: it stays data
//   NaN / Infinity                     -> null (as JSON.stringify does)
//   circular objects, BigInt, nested functions -> CodecError (the message fails, nothing crashes)
//
// Top-level message properties that cannot cross a process boundary (msg.req, msg.res, functions,
// sockets and other class instances) are split off by splitMessage() and kept on the JS side;
// so is any other top-level property that fails to encode, except msg.payload (an error).
"use strict";
const fs = require("fs");
const path = require("path");
const { MARKER, KINDS, KEYS, BLOB_TABLE, BLOB_ENTRY, BLOB_THRESHOLD, BLOB_PREFIX, BLOB_NAME_SAFE } = require("./protocol");
const { inodeOf } = require("./blob_spare");

const UNSAFE = new RegExp(`[^${BLOB_NAME_SAFE}]`, "g");
const BLOB_NAME = new RegExp(`^${BLOB_PREFIX.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}(\\d+)-(.+)-(\\d+)$`);
const hasOwn = (value, key) => Object.prototype.hasOwnProperty.call(value, key);

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

/** The req_id as it appears in blob file names (spec blob_name_safe; null: "_"). */
function safeReqId(reqId) {
    return reqId ? String(reqId).replace(UNSAFE, "_") : "_";
}

/** Whether `name` is a writer's blob file name for `reqId` (a bare name, no directory). */
function nameMatches(name, reqId) {
    const match = typeof name === "string" ? BLOB_NAME.exec(name) : null;
    return match !== null && match[2] === safeReqId(reqId);
}

function escape(obj) {
    return { [MARKER]: KINDS.escape, [KEYS.escaped]: obj };
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
        this.stem = options && `${BLOB_PREFIX}${process.pid}-${safeReqId(options.reqId)}-`;
        this.pending = [];
        this.table = [];   // the blob table: what the frame carries beside the body
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
            return { [MARKER]: KINDS.buffer, [KEYS.b64]: buf.toString("base64") };
        }
        const name = this.stem + this.pending.length;
        this.pending.push({ file: path.join(this.blobDir, name), buf });
        this.table.push({ [BLOB_ENTRY.name]: name, [BLOB_ENTRY.size]: buf.length });
        return { [MARKER]: KINDS.blob, [KEYS.index]: this.table.length - 1 };
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
        const result = out === null ? value : out;
        return hasOwn(value, MARKER) ? escape(result) : result;
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
        return hasOwn(out, MARKER) ? escape(out) : out;
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
            encoder.table.length = mark;
            kept[key] = value;
        }
    }
    return { msg, kept, pending: encoder.pending, blobs: encoder.table };
}

/** The execute frame of an encodeWire() result (its blob table beside msg, when it has one). */
function executeFrame(nodeId, reqId, encoded) {
    const frame = { type: "execute", node_id: nodeId, req_id: reqId, msg: encoded.msg };
    if (encoded.blobs.length > 0) {
        frame[BLOB_TABLE] = encoded.blobs;
    }
    return frame;
}

/**
 * Blob files up to this size are written and read with synchronous calls: one open, one
 * write or read, one close on the event loop costs less than the thread-pool round trips of
 * fs.promises (measured in docs/performance.md, "Blob files"); larger ones stay off the loop.
 */
const SYNC_IO_MAX = 4 * 1024 * 1024;
const WRITE_FLAGS = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;

/** Write a new file; returns its fstat (its inode is the writer's: BlobSpare's `mine`). */
function writeFileSyncExclusive(file, buf) {
    const fd = fs.openSync(file, WRITE_FLAGS, 0o600);
    try {
        for (let at = 0; at < buf.length;) {
            at += fs.writeSync(fd, buf, at, buf.length - at);
        }
        return fs.fstatSync(fd);
    } finally {
        fs.closeSync(fd);
    }
}

/**
 * Write the blob files of encodeWire's `pending`; on failure none is left. Returns the paths.
 * `spare` (a hot runner's BlobSpare, optional) takes the first Buffer into its warm file;
 * `mine` (a Set, optional) receives the inodes written up to SYNC_IO_MAX (lib/blob_spare.js).
 */
async function writeBlobs(pending, spare, mine) {
    const written = [];
    try {
        for (const { file, buf } of pending) {
            written.push(file);
            if (spare && spare.take(file, buf, mine)) {
                continue;
            }
            if (buf.length <= SYNC_IO_MAX) {
                const info = writeFileSyncExclusive(file, buf);
                if (mine) {
                    mine.add(inodeOf(info));
                }
            } else {
                await fs.promises.writeFile(file, buf, { mode: 0o600, flag: WRITE_FLAGS });
            }
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
    const { msg, kept, pending, blobs } = encodeWire(wire, options);
    const files = pending.length > 0 ? await writeBlobs(pending) : [];
    return { msg, files, kept, blobs };
}

/** Encode one value with every Buffer inline (context replies). */
function encodeInline(value, where) {
    const out = new Encoder(null).encode(value, where || "value");
    return out === undefined ? null : out;
}

/** Markers back to values: buffers, escaped objects, and blob markers (from `blobs`, the Buffers
 * of the frame's table by index; without one, a blob marker is an error: it names no file). */
function replaceMarkers(value, blobs) {
    if (Array.isArray(value)) {
        for (let i = 0; i < value.length; i++) {
            value[i] = replaceMarkers(value[i], blobs);
        }
        return value;
    }
    if (!value || typeof value !== "object") {
        return value;
    }
    const kind = value[MARKER];
    if (kind === KINDS.buffer && typeof value[KEYS.b64] === "string") {
        return Buffer.from(value[KEYS.b64], "base64");
    }
    if (kind === KINDS.blob) {
        const index = value[KEYS.index];
        if (!Number.isInteger(index) || !blobs || index < 0 || index >= blobs.length) {
            throw new CodecError("blob " + JSON.stringify(index), `is not an index into this frame's blob table (${blobs ? blobs.length : 0} entries)`);
        }
        return blobs[index];
    }
    const target = kind === KINDS.escape && isObject(value[KEYS.escaped]) ? value[KEYS.escaped] : value;
    for (const key of Object.keys(target)) {
        target[key] = replaceMarkers(target[key], blobs);
    }
    return target;
}

function isObject(value) {
    return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** What decoding `value` needs: 0 nothing, 1 inline markers only (buffers, escapes), 2 blobs. */
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
    if (kind === KINDS.blob) {
        return 2;
    }
    if (kind === KINDS.buffer && typeof value[KEYS.b64] === "string") {
        return 1;
    }
    let target = value;
    if (kind !== undefined) {
        found = 1;
        if (kind === KINDS.escape && isObject(value[KEYS.escaped])) {
            target = value[KEYS.escaped];   // its own keys are data, its values are searched
        }
    }
    for (const key in target) {
        if (found === 2) {
            break;
        }
        found = Math.max(found, markers(target[key]));
    }
    return found;
}

/**
 * decodeValue without waiting, for a value without blob markers (markers(value) < 2): inline
 * markers are decoded in place. Returns the decoded value.
 */
function decodeInline(value) {
    return replaceMarkers(value, null);
}

const READ_FLAGS = fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK;

/** The path of a table entry, when its name is a blob of `reqId` (else null). */
function entryPath(entry, reqId, blobDir) {
    const name = entry && entry[BLOB_ENTRY.name];
    return blobDir && nameMatches(name, reqId) ? path.join(blobDir, name) : null;
}

function ownerOk(uid, me, kernelUid) {
    return uid === me || (me === 0 && Number.isInteger(kernelUid) && uid === kernelUid);
}

/**
 * Read one table entry's file: only a blob name of this request, directly in the blob directory,
 * opened without following a symlink, a regular file with one link owned by this user (root:
 * or by `kernelUid`, the user the pool's kernels run as, given by its pool_state frames).
 */
async function readEntry(entry, reqId, blobDir, kernelUid) {
    const file = entryPath(entry, reqId, blobDir);
    if (file === null) {
        const pattern = `${BLOB_PREFIX}<pid>-${safeReqId(reqId)}-<n>`;
        throw new CodecError("blob " + JSON.stringify(entry),
            `does not name a blob file of this request (${pattern}) in the blob directory`);
    }
    const size = entry[BLOB_ENTRY.size];
    const data = Number.isInteger(size) && size <= SYNC_IO_MAX
        ? readCheckedSync(file, kernelUid)
        : await readChecked(file, kernelUid);
    if (Number.isInteger(size) && size !== data.length) {
        throw new CodecError("blob " + file, `holds ${data.length} bytes but its table says ${size}`);
    }
    return data;
}

/** Why a blob file's fstat disqualifies it (null when it is fine). */
function statProblem(info, kernelUid) {
    const me = process.geteuid ? process.geteuid() : info.uid;
    return !info.isFile() ? "is not a regular file"
        : info.nlink !== 1 ? `has ${info.nlink} links (a blob file has one)`
            : !ownerOk(info.uid, me, kernelUid)
                ? `belongs to uid ${info.uid}, not to this user (${me}) nor to the pool's kernel user`
                : null;
}

function refuse(file, problem) {
    throw new CodecError("blob " + file, problem + "; it was not made by kernelexec for this request");
}

function readCheckedSync(file, kernelUid) {
    let fd;
    try {
        fd = fs.openSync(file, READ_FLAGS);
    } catch (err) {
        throw new CodecError("blob " + file, "cannot be read: " + err.message);
    }
    try {
        const info = fs.fstatSync(fd);
        const problem = statProblem(info, kernelUid);
        if (problem) {
            refuse(file, problem);
        }
        const data = Buffer.allocUnsafe(info.size);
        let at = 0;
        while (at < data.length) {
            const got = fs.readSync(fd, data, at, data.length - at, at);
            if (got === 0) {
                break;
            }
            at += got;
        }
        return at === data.length ? data : data.subarray(0, at);
    } finally {
        fs.closeSync(fd);
    }
}

async function readChecked(file, kernelUid) {
    let handle;
    try {
        handle = await fs.promises.open(file, READ_FLAGS);
    } catch (err) {
        throw new CodecError("blob " + file, "cannot be read: " + err.message);
    }
    try {
        const info = await handle.stat();
        const problem = statProblem(info, kernelUid);
        if (problem) {
            refuse(file, problem);
        }
        const data = Buffer.allocUnsafe(info.size);  // read in place: no chunks to concatenate
        let at = 0;
        while (at < data.length) {
            const { bytesRead } = await handle.read(data, at, data.length - at, at);
            if (bytesRead === 0) {
                break;
            }
            at += bytesRead;
        }
        return at === data.length ? data : data.subarray(0, at);
    } finally {
        await handle.close();
    }
}

/**
 * Turn markers back into values. Blob markers index `blobs` (the frame's blob table; files of
 * request `reqId` in `blobDir`): the files are read and then removed (`unlink`, default true):
 * the reader of an output owns the file once it has it. `kernelUid`: see readEntry.
 */
async function decodeValue(value, options) {
    const unlink = !options || options.unlink !== false;
    const blobDir = options && options.blobDir;
    const table = options && Array.isArray(options.blobs) ? options.blobs : [];
    const reqId = options ? options.reqId : null;
    const kernelUid = options ? options.kernelUid : undefined;
    const buffers = [];
    let failure = null;
    for (const entry of table) {
        try {
            buffers.push(await readEntry(entry, reqId, blobDir, kernelUid));
        } catch (err) {
            failure = failure || err;
            buffers.push(null);
        }
    }
    if (unlink) {   // not awaited: the reader has the bytes (removals())
        const spare = options && options.spare;
        const read = spare ? tablePaths(table.filter((_, i) => buffers[i] !== null), reqId, blobDir) : null;
        removeFiles(keepOne(tablePaths(table, reqId, blobDir), spare, options && options.mine, read));
    }
    if (failure) {
        throw failure;
    }
    return replaceMarkers(value, options && Array.isArray(options.blobs) ? buffers : null);
}

/** Removals started and not finished yet: nobody waits for one on a message's way. */
const removing = new Set();

/** Remove files, ignoring the ones already gone. Never throws. */
function removeFiles(files) {
    if (!files || files.length === 0) {
        return Promise.resolve();
    }
    const removal = Promise.all(files.map((file) => fs.promises.unlink(file).catch(() => {})));
    removing.add(removal);
    return removal.then(() => {
        removing.delete(removal);
    });
}

/** Settles when every removal started so far has finished (a closing node, tests). */
function removals() {
    return Promise.all(Array.from(removing));
}

/** The paths of a blob table's files (only blob names of `reqId`, in blobDir). */
function tablePaths(table, reqId, blobDir) {
    return (Array.isArray(table) ? table : [])
        .map((e) => entryPath(e, reqId, blobDir))
        .filter((p) => p !== null);
}

/**
 * The files to remove, once `spare` (a hot runner's BlobSpare, optional) kept the first of
 * `mayKeep` (default: all of them) whose inode is one of `mine`.
 */
function keepOne(files, spare, mine, mayKeep) {
    const kept = spare && mine ? (mayKeep || files).find((file) => spare.keep(file, mine)) : undefined;
    return kept === undefined ? files : files.filter((file) => file !== kept);
}

/** Remove the files of a blob table (only blob names of `reqId`, in blobDir). Never throws. */
function removeTable(table, reqId, blobDir) {
    return removeFiles(tablePaths(table, reqId, blobDir));
}

/** The blob table a frame carries ([] when none). */
function tableOf(frame) {
    const table = frame && frame[BLOB_TABLE];
    return Array.isArray(table) ? table : [];
}

/** Remove the blob files of a result or send frame nobody will read. */
function discardBlobs(frame, blobDir) {
    return removeTable(frame && frame[BLOB_TABLE], frame && frame.req_id, blobDir);
}

module.exports = {
    SYNC_IO_MAX,
    CodecError,
    splitMessage,
    restoreKept,
    encodeWire,
    executeFrame,
    writeBlobs,
    encodeMessage,
    encodeInline,
    markers,
    safeReqId,
    tableOf,
    decodeInline,
    decodeValue,
    removeFiles,
    keepOne,
    removals,
    discardBlobs,
};

// The bridge protocol, read from the package's copy of kernelexec/protocol/spec.json.
// No other file holds protocol literals: frame types, config fields and error codes come from here.
"use strict";
const fs = require("fs");
const path = require("path");

const SPEC_PATH = path.join(__dirname, "..", "spec.json");
const spec = JSON.parse(fs.readFileSync(SPEC_PATH, "utf8"));
const encoding = spec.value_encoding;

/** The states of a pool_state frame, by name: POOL_STATES.READY === "ready" (spec pool_states). */
const POOL_STATES = Object.freeze(Object.fromEntries(spec.pool_states.map((s) => [s.toUpperCase(), s])));

/** The ops of a context request, by name: CONTEXT_OPS.GET === "get" (spec context_ops). */
const CONTEXT_OPS = Object.freeze(Object.fromEntries(spec.context_ops.map((s) => [s.toUpperCase(), s])));

/** The pool configuration defaults, by protocol field name. */
function configDefaults() {
    const out = {};
    for (const [name, field] of Object.entries(spec.config_fields)) {
        out[name] = field.default;
    }
    return out;
}

/** True when `version` ("MAJOR.MINOR") is `min` or later. */
function atLeast(version, min) {
    if (typeof version !== "string") {
        return false;
    }
    const [major, minor] = version.split(".").map(Number);
    const [wantMajor, wantMinor] = min.split(".").map(Number);
    return major > wantMajor || (major === wantMajor && minor >= wantMinor);
}

/** True when a bridge speaking `version` can talk to us (same major number). */
function compatible(version) {
    return typeof version === "string" && version.split(".")[0] === spec.version.split(".")[0];
}

module.exports = {
    spec,
    SPEC_PATH,
    PROTOCOL_VERSION: spec.version,
    MARKER: encoding.marker_key,
    KINDS: encoding.kinds,   // {buffer, blob, escape}: the marker's values
    KEYS: encoding.keys,     // {b64, index, escaped}: the markers' other keys
    BLOB_TABLE: encoding.blob_table.field,
    BLOB_ENTRY: encoding.blob_table.entry,   // {name, size}
    BLOB_THRESHOLD: encoding.blob_threshold_bytes,
    BLOB_PREFIX: encoding.blob_prefix,
    BLOB_NAME_SAFE: encoding.blob_name_safe,
    MAX_FRAME_BYTES: spec.max_frame_bytes,
    ERROR_CODES: Object.keys(spec.error_codes),
    CONFIG_FIELDS: spec.config_fields,
    SERVER_FRAMES: Object.keys(spec.server_frames),
    POOL_STATES,
    CONTEXT_OPS,
    // Since this version a WebSocket message may carry an array of frames (spec "transport").
    BATCH_VERSION: spec.batch_version,
    configDefaults,
    compatible,
    atLeast,
};

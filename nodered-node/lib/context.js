// context_request frames: the Python code reads and writes Node-RED context (node, flow,
// global) live, through the node's own context objects, so persistent stores work too.
"use strict";
const codec = require("./codec");
const { t } = require("./i18n");

/** Run one context operation on a Node-RED context store (async stores included). */
function contextOp(store, frame) {
    return new Promise((resolve, reject) => {
        const cb = (err, value) => (err ? reject(err) : resolve(value));
        if (frame.op === "keys") {
            store.keys(cb);
        } else if (frame.op === "get") {
            store.get(frame.key, (err, value) => {
                if (err) {
                    reject(err);
                    return;
                }
                try {
                    resolve(codec.encodeInline(value, frame.scope + "." + frame.key));
                } catch (e) {
                    reject(e);
                }
            });
        } else if (frame.op === "set") {
            codec.decodeValue(frame.value, { unlink: false })
                .then((value) => store.set(frame.key, value === null ? undefined : value, (err) => (err ? reject(err) : resolve(null))), reject);
        } else {
            reject(new Error(t("kernelexec.error.contextOp", { op: frame.op })));
        }
    });
}

module.exports = { contextOp };

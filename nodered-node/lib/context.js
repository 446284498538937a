// context_request frames: the Python code reads and writes Node-RED context (node, flow,
// global) live, through the node's own context objects, so persistent stores work too.
// As in the function node: `store` names a store of settings.js contextStorage (absent: the
// default one; an unknown name is Node-RED's business: it warns and uses the default store),
// and `key` may be a list of keys (get answers a list; set takes a list of values).
"use strict";
const codec = require("./codec");
const { t } = require("./i18n");
const { CONTEXT_OPS } = require("./protocol");

function storeName(frame) {
    return typeof frame.store === "string" && frame.store !== "" ? frame.store : undefined;
}

/** Run one context operation on a Node-RED context store (async stores included). */
function contextOp(store, frame) {
    return new Promise((resolve, reject) => {
        const name = storeName(frame);
        const cb = (err, value) => (err ? reject(err) : resolve(value));
        if (frame.op === CONTEXT_OPS.KEYS) {
            if (name === undefined) {
                store.keys(cb);
            } else {
                store.keys(name, cb);
            }
        } else if (frame.op === CONTEXT_OPS.GET) {
            store.get(frame.key, name, (err, ...values) => {
                if (err) {
                    reject(err);
                    return;
                }
                try {
                    const value = Array.isArray(frame.key) ? frame.key.map((k, i) => values[i]) : values[0];
                    resolve(codec.encodeInline(value, frame.scope + "." + frame.key));
                } catch (e) {
                    reject(e);
                }
            });
        } else if (frame.op === CONTEXT_OPS.SET) {
            codec.decodeValue(frame.value, { unlink: false }).then((value) => {
                const stored = Array.isArray(frame.key) && Array.isArray(value)
                    ? value.map((v) => (v === null ? undefined : v))
                    : value === null ? undefined : value;
                store.set(frame.key, stored, name, (err) => (err ? reject(err) : resolve(null)));
            }, reject);
        } else {
            reject(new Error(t("kernelexec.error.contextOp", { op: frame.op })));
        }
    });
}

module.exports = { contextOp };

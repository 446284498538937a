// Localized runtime strings. Every key lives in nodes/locales/<lang>/kernelexec.json.
// RED._ is used when the runtime has loaded our catalog; when it has not (for example
// node-red-node-test-helper's RED._ returns the key itself) the en-US catalog is read directly,
// so users and tests always see a sentence, never a bare key.
"use strict";
const fs = require("fs");
const path = require("path");

const CATALOG = path.join(__dirname, "..", "nodes", "locales", "en-US", "kernelexec.json");
let translate = null;
let fallback = null;

function init(RED) {
    if (RED && typeof RED._ === "function") {
        translate = RED._;
    }
}

function lookup(key) {
    if (!fallback) {
        fallback = JSON.parse(fs.readFileSync(CATALOG, "utf8"));
    }
    let node = fallback;
    for (const part of key.split(".")) {
        node = node && typeof node === "object" ? node[part] : undefined;
    }
    return typeof node === "string" ? node : key;
}

function substitute(text, subs) {
    return text.replace(/__([a-zA-Z0-9_]+)__/g, (whole, name) =>
        (subs && subs[name] !== undefined ? String(subs[name]) : whole));
}

/** t(key, {name: value}) -> the localized sentence. */
function t(key, subs) {
    if (translate) {
        const out = translate(key, subs);
        if (typeof out === "string" && out !== key && !out.endsWith(":" + key)) {
            return out;
        }
    }
    return substitute(lookup(key), subs);
}

module.exports = { init, t };

// The package ships a byte-identical copy of kernelexec/protocol/spec.json.
"use strict";
const assert = require("assert");
const fs = require("fs");
const path = require("path");
const protocol = require("../lib/protocol");

const SOURCE = path.join(__dirname, "..", "..", "kernelexec", "protocol", "spec.json");

describe("protocol spec copy", function () {
    it("is byte-identical to ../kernelexec/protocol/spec.json", function () {
        if (!fs.existsSync(SOURCE)) {
            this.skip();
        }
        const copy = fs.readFileSync(protocol.SPEC_PATH);
        const source = fs.readFileSync(SOURCE);
        assert.ok(copy.equals(source), "nodered-node/spec.json differs from kernelexec/protocol/spec.json: run `npm run copy-spec` and commit the copy");
    });

    it("is committed along with the spec (when the spec itself is committed)", function () {
        // `npm test` refreshes the copy first (pretest); this catches a spec change committed
        // without its copy.
        const { execFileSync } = require("child_process");
        const committed = (file) => {
            try {
                return execFileSync("git", ["show", "HEAD:" + file], { cwd: path.join(__dirname, "..", ".."), stdio: ["ignore", "pipe", "ignore"] });
            } catch (err) {
                return null;
            }
        };
        const source = committed("kernelexec/protocol/spec.json");
        if (!fs.existsSync(SOURCE) || source === null || !source.equals(fs.readFileSync(SOURCE))) {
            this.skip();   // no git, or the spec is being edited: the copy is checked above
        }
        const copy = committed("nodered-node/spec.json");
        assert.ok(copy && copy.equals(source), "kernelexec/protocol/spec.json was committed without nodered-node/spec.json: commit the copy");
    });

    it("compares versions for batching (arrays of frames since 1.1)", function () {
        assert.ok(protocol.atLeast(protocol.PROTOCOL_VERSION, protocol.BATCH_VERSION));
        assert.ok(protocol.atLeast("1.1", "1.1") && protocol.atLeast("1.10", "1.1") && protocol.atLeast("2.0", "1.1"));
        assert.ok(!protocol.atLeast("1.0", "1.1") && !protocol.atLeast("0.9", "1.1") && !protocol.atLeast(undefined, "1.1"));
    });

    it("exposes the constants the codec and bridge use", function () {
        assert.strictEqual(protocol.MARKER, "$kx");
        assert.ok(protocol.BLOB_THRESHOLD > 0);
        assert.ok(protocol.BLOB_PREFIX.length > 0);
        assert.ok(protocol.compatible(protocol.PROTOCOL_VERSION));
        assert.ok(!protocol.compatible("999.0"));
        assert.strictEqual(protocol.configDefaults().code, "return msg");
    });

    it("has an en-US message for every RED._ key used at runtime", function () {
        const catalog = require("../nodes/locales/en-US/kernelexec.json");
        const dirs = [path.join(__dirname, "..", "lib"), path.join(__dirname, "..", "nodes")];
        const missing = [];
        for (const dir of dirs) {
            for (const file of fs.readdirSync(dir).filter((f) => f.endsWith(".js"))) {
                const text = fs.readFileSync(path.join(dir, file), "utf8");
                for (const m of text.matchAll(/\bt\(\s*"(kernelexec\.[A-Za-z0-9_.]*[A-Za-z0-9_])"/g)) {
                    const value = m[1].split(".").reduce((o, k) => (o ? o[k] : undefined), catalog);
                    if (typeof value !== "string") {
                        missing.push(`${file}: ${m[1]}`);
                    }
                }
            }
        }
        assert.deepStrictEqual(missing, []);
    });

    it("has an en-US message for every data-i18n key of the editor", function () {
        const catalog = require("../nodes/locales/en-US/kernelexec.json");
        const html = fs.readFileSync(path.join(__dirname, "..", "nodes", "kernelexec.html"), "utf8");
        const keys = [...html.matchAll(/data-i18n="([^"]*)"/g)].flatMap((m) => m[1].split(";"));
        const missing = keys
            .map((k) => k.replace(/^\[[a-z]+\]/, ""))
            .filter((k) => k.startsWith("kernelexec."))
            .filter((k) => typeof k.split(".").reduce((o, part) => (o ? o[part] : undefined), catalog) !== "string");
        assert.ok(keys.length > 20, "the editor's data-i18n keys were found");
        assert.deepStrictEqual(missing, []);
    });

    it("has, in every locale, the en-US keys, placeholders and help pages", function () {
        const root = path.join(__dirname, "..", "nodes", "locales");
        const flatten = (obj, prefix = "", out = {}) => {
            for (const [key, value] of Object.entries(obj)) {
                if (value && typeof value === "object") {
                    flatten(value, prefix + key + ".", out);
                } else {
                    out[prefix + key] = value;
                }
            }
            return out;
        };
        const placeholders = (text) => (text.match(/__[A-Za-z0-9_]+__|\{\{[^{}]+\}\}|%[sdifjoO]/g) || []).sort();
        const helpNames = (file) => [...fs.readFileSync(file, "utf8").matchAll(/<script\b[^>]*\bdata-help-name="([^"]*)"/g)].map((m) => m[1]).sort();
        const english = flatten(JSON.parse(fs.readFileSync(path.join(root, "en-US", "kernelexec.json"), "utf8")));
        const englishHelp = helpNames(path.join(root, "en-US", "kernelexec.html"));
        assert.deepStrictEqual(englishHelp, ["kernelexec", "kernelexec-env"]);
        // Directory names must be ones Node-RED looks up (e.g. "fr", not "fr-FR").
        let known = null;
        try {
            known = fs.readdirSync(path.join(path.dirname(require.resolve("@node-red/editor-client/package.json")), "locales"));
        } catch (err) {
            known = null;   // editor-client not installed: skip the name check only
        }
        const locales = fs.readdirSync(root, { withFileTypes: true }).filter((d) => d.isDirectory() && d.name !== "en-US").map((d) => d.name);
        assert.ok(locales.length > 0, "no translated locale under nodes/locales");
        const problems = [];
        for (const locale of locales) {
            if (known && !known.includes(locale)) {
                problems.push(`${locale}: not a Node-RED locale directory name (${known.join(", ")})`);
            }
            let catalog;
            try {
                catalog = flatten(JSON.parse(fs.readFileSync(path.join(root, locale, "kernelexec.json"), "utf8")));
            } catch (err) {
                problems.push(`${locale}/kernelexec.json: ${err.message}`);
                continue;
            }
            for (const key of Object.keys(english)) {
                if (!(key in catalog)) {
                    problems.push(`${locale}: missing ${key}`);
                } else if (typeof catalog[key] !== "string" || catalog[key] === "") {
                    problems.push(`${locale}: ${key} is not a non-empty string`);
                } else {
                    const theirs = placeholders(catalog[key]);
                    for (const p of new Set(placeholders(english[key]))) {
                        if (!theirs.includes(p)) {
                            problems.push(`${locale}: ${key} lacks placeholder ${p}`);
                        }
                    }
                    for (const p of new Set(theirs)) {
                        if (!placeholders(english[key]).includes(p)) {
                            problems.push(`${locale}: ${key} has unknown placeholder ${p}`);
                        }
                    }
                }
            }
            for (const key of Object.keys(catalog)) {
                if (!(key in english)) {
                    problems.push(`${locale}: extra key ${key}`);
                }
            }
            const help = path.join(root, locale, "kernelexec.html");
            if (!fs.existsSync(help)) {
                problems.push(`${locale}: no kernelexec.html help`);
            } else {
                const names = helpNames(help);
                if (JSON.stringify(names) !== JSON.stringify(englishHelp)) {
                    problems.push(`${locale}/kernelexec.html: data-help-name ${names.join(", ")}, en-US has ${englishHelp.join(", ")}`);
                }
            }
        }
        assert.deepStrictEqual(problems, []);
    });

    it("gives the editor the spec's limits and defaults", function () {
        const html = fs.readFileSync(path.join(__dirname, "..", "nodes", "kernelexec.html"), "utf8");
        const f = protocol.CONFIG_FIELDS;
        const limits = /var LIMITS = \{ outputs: \[(\d+), (\d+)\], workers: \[(\d+), (\d+)\]/.exec(html);
        assert.ok(limits, "LIMITS line in kernelexec.html");
        const expected = [f.outputs.min, f.outputs.max, f.workers.min, f.workers.max];
        assert.deepStrictEqual(limits.slice(1).map(Number), expected);
        const value = (name) => new RegExp(`\\b${name}: \\{ value: ([^,}]+)`).exec(html)[1].trim();
        assert.strictEqual(JSON.parse(value("func")), f.code.default);
        assert.strictEqual(Number(value("outputs")), f.outputs.default);
        // a new node's timeout is settings.js functionTimeout, as a new function node's, else the spec's
        assert.strictEqual(value("timeout"), "RED.settings.functionTimeout || " + f.timeout.default);
        assert.strictEqual(JSON.parse(value("mode")), f.mode.default);
        assert.strictEqual(Number(value("workers")), f.workers.default);
        assert.strictEqual(Number(value("queueLimit")), f.queue_limit.default);
        assert.strictEqual(value("keepOrder"), String(f.keep_order.default));
        assert.strictEqual(JSON.parse(value("messagePath")), f.message_path.default);
    });

    it("uses no console.* in runtime code", function () {
        const dirs = [path.join(__dirname, "..", "lib"), path.join(__dirname, "..", "nodes")];
        for (const dir of dirs) {
            for (const file of fs.readdirSync(dir).filter((f) => f.endsWith(".js"))) {
                const text = fs.readFileSync(path.join(dir, file), "utf8");
                assert.ok(!/\bconsole\./.test(text), `${file} uses console.*`);
            }
        }
    });
});

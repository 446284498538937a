// Node-RED as a user runs it: red.js in its own process, on a user directory of the test's
// making (palette_spec.js, editor_auth_spec.js), plus a small HTTP client for its admin API.
"use strict";
const http = require("http");
const path = require("path");
const { spawn } = require("child_process");

// KERNELEXEC_NODE_RED=5: Node-RED 5.0.x (the node-red-5 devDependency), as test/support.js and
// scripts/demo.js choose it; anything else: the node-red devDependency (4.1.x).
const RUNTIME = process.env.KERNELEXEC_NODE_RED === "5" ? "node-red-5" : "node-red";
const RED_JS = require.resolve(RUNTIME + "/red.js");
const NODE_RED_VERSION = require(RUNTIME + "/package.json").version;

/**
 * Why red.js cannot run on this Node.js, or null. Node-RED 5.0's red.js exits at once on a
 * Node.js below its engines range (>= 22.9); embedded (test/support.js, scripts/demo.js) it
 * only warns. A spec that needs red.js skips, saying so, rather than run another version.
 */
function redJsRefusal() {
    const pkg = require(RUNTIME + "/package.json");
    const semver = require(require.resolve("semver", { paths: [path.dirname(require.resolve(RUNTIME + "/package.json"))] }));
    return semver.satisfies(process.version, pkg.engines.node) ? null
        : `Node-RED ${pkg.version}'s red.js refuses Node.js ${process.version} (it needs ${pkg.engines.node})`;
}

/** In a before() hook: skip the suite, saying why, when red.js cannot run here. */
function skipUnlessRedJsRuns(context) {
    const refusal = redJsRefusal();
    if (refusal) {
        process.stdout.write(`      skipped: ${refusal}\n`);
        context.skip();
    }
}

function request(port, method, urlPath, body, headers) {
    return new Promise((resolve, reject) => {
        const data = body === undefined ? null : Buffer.from(JSON.stringify(body));
        const req = http.request({ host: "127.0.0.1", port, method, path: urlPath, headers: Object.assign(
            data ? { "content-type": "application/json", "content-length": data.length } : {}, headers || {}) }, (res) => {
            let text = "";
            res.on("data", (c) => { text += c; });
            res.on("end", () => (res.statusCode < 300 ? resolve(text)
                : reject(Object.assign(new Error(`${method} ${urlPath}: ${res.statusCode} ${text}`), { status: res.statusCode }))));
        });
        req.on("error", reject);
        req.end(data);
    });
}

/**
 * Node-RED in its own process; `wait(re)` resolves when its output matches. red.js, or with
 * `embedded` (and only where red.js refuses this Node.js) embedded_red.js on the same runtime.
 */
function startNodeRed(userDir, env, options) {
    const embedded = Boolean(options && options.embedded && redJsRefusal());
    const args = embedded ? [path.join(__dirname, "embedded_red.js"), RUNTIME, userDir]
        : [RED_JS, "--port", "0", "--userDir", userDir, "--settings", path.join(userDir, "settings.js")];
    const child = spawn(process.execPath, args, { env, cwd: userDir, stdio: ["ignore", "pipe", "pipe"] });
    const red = { child, output: "", waiters: [] };
    const onData = (chunk) => {
        red.output += chunk;
        red.waiters = red.waiters.filter((w) => {
            const m = w.re.exec(red.output.slice(w.from));
            if (m) {
                clearTimeout(w.timer);
                w.resolve(m);
            }
            return !m;
        });
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("exit", (code) => red.waiters.forEach((w) => w.reject(new Error(`Node-RED exited (${code}):\n${red.output}`))));
    red.wait = (re, ms, from) => new Promise((resolve, reject) => {
        const m = re.exec(red.output.slice(from || 0));
        if (m) {
            resolve(m);
            return;
        }
        const w = { re, from: from || 0, resolve, reject, timer: setTimeout(() => reject(new Error(`no ${re} within ${ms} ms:\n${red.output}`)), ms) };
        red.waiters.push(w);
    });
    red.stop = () => new Promise((resolve) => {
        if (child.exitCode !== null) {
            resolve();
            return;
        }
        child.once("exit", resolve);
        child.kill("SIGINT");
        setTimeout(() => child.kill("SIGKILL"), 30000).unref();
    });
    return red;
}

module.exports = { request, startNodeRed, skipUnlessRedJsRuns, NODE_RED_VERSION };

// What a palette install gives a user with nothing but python3: the packed tarball (npm pack,
// which builds the bundled kernelexec wheel) is installed with npm into a fresh Node-RED user
// directory; Node-RED (red.js, its own process) starts with a PATH whose only Python is a
// plain python3 without kernelexec and no KERNELEXEC_PYTHON; the hello-world example is
// deployed through the admin API and its inject button pressed: the node builds its Python
// environment under the user directory (status "setting up Python: ..."), then answers.
// A restart answers again without building. Needs the package index (as a palette install
// does) and a python3 >= 3.10 without kernelexec (skipped otherwise).
// Node-RED version: the one the run chooses (red_process.js: 4.1.x for `npm test`, 5.0.x for
// `npm run test:nr5`), so each version gets this test from its own suite run; not both versions
// in one run, as one pass costs ~50 s (npm pack, npm install, a Python environment built from
// the package index). Node-RED 5.0's red.js needs Node.js >= 22.9: on an older one it is skipped.
"use strict";
const assert = require("assert");
const fs = require("fs");
const os = require("os");
const path = require("path");
const { spawnSync } = require("child_process");
const WebSocket = require("ws");
const { request, startNodeRed, skipUnlessRedJsRuns, NODE_RED_VERSION } = require("./red_process");

const PACKAGE_DIR = path.join(__dirname, "..");
const PKG = require("../package.json");
const EXAMPLE = path.join(PACKAGE_DIR, "examples", "01 - Hello world.json");
const PYTHON_NODE = "00000000000000p2";
const INJECT_NODE = "00000000000000i3";
const ANSWER = "Hello world from Python!";

/** A python3 >= 3.10 that does not have kernelexec (a user's plain Python), or null. */
function plainPython() {
    for (const candidate of ["/usr/bin/python3", "/usr/local/bin/python3"]) {
        const res = spawnSync(candidate, ["-c", "import sys, venv, ensurepip; assert sys.version_info >= (3, 10)\ntry:\n import kernelexec\nexcept ImportError:\n sys.exit(0)\nsys.exit(1)"]);
        if (res.status === 0) {
            return candidate;
        }
    }
    return null;
}

function exec(cmd, args, options) {
    const res = spawnSync(cmd, args, Object.assign({ encoding: "utf8", maxBuffer: 64 << 20 }, options));
    if (res.status !== 0) {
        throw new Error(`${cmd} ${args.join(" ")} failed (${res.status}):\n${res.stdout}\n${res.stderr}`);
    }
    return res.stdout;
}

/** The node's status texts, from the editor's comms WebSocket. */
function watchStatus(port, nodeId) {
    const texts = [];
    const ws = new WebSocket(`ws://127.0.0.1:${port}/comms`);
    ws.on("open", () => ws.send(JSON.stringify({ subscribe: "status/#" })));
    ws.on("message", (data) => {
        for (const item of [].concat(JSON.parse(data.toString()))) {
            if (item.topic === "status/" + nodeId && item.data && item.data.text) {
                texts.push(item.data.text);
            }
        }
    });
    ws.on("error", () => {});
    return { texts, close: () => ws.close() };
}

function flows() {
    const nodes = JSON.parse(fs.readFileSync(EXAMPLE, "utf8"));
    return [{ id: "palettetab000001", type: "tab", label: "hello" }].concat(nodes.map((n) => Object.assign({}, n, { z: "palettetab000001" },
        n.type === "debug" ? { console: true } : {})));
}

describe("palette install: from the npm tarball to an answer with a plain python3", function () {
    this.timeout(20 * 60000);
    let tmp = null;
    let red = null;
    let python = null;

    before(function () {
        skipUnlessRedJsRuns(this);
        python = plainPython();
        if (!python) {
            this.skip();   // needs a python3 >= 3.10 with venv and without kernelexec
        }
        tmp = fs.mkdtempSync(path.join(os.tmpdir(), "kx-palette-"));
    });

    after(async function () {
        if (red) {
            await red.stop();
        }
        if (tmp) {
            fs.rmSync(tmp, { recursive: true, force: true });
        }
    });

    it("has one version for both halves: package.json repeats pyproject.toml's", function () {
        const { pyprojectVersion } = require("../scripts/build-wheel.js");
        const pyproject = fs.readFileSync(path.join(PACKAGE_DIR, "..", "pyproject.toml"), "utf8");
        assert.strictEqual(pyprojectVersion(pyproject), PKG.version);
    });

    afterEach(function () {
        if (this.currentTest.state === "failed" && red) {
            process.stdout.write("Node-RED output:\n" + red.output + "\n");
        }
    });

    it("packs, installs, builds its Python on the first deploy and answers; answers again after a restart", async function () {
        // npm pack runs prepack: the spec copy and the wheel
        const packed = exec("npm", ["pack", "--silent", "--pack-destination", tmp], { cwd: PACKAGE_DIR }).trim().split("\n").pop();
        const tarball = path.join(tmp, packed);
        const listing = exec("tar", ["-tzf", tarball]);
        assert.match(listing, new RegExp(`package/python/kernelexec-${PKG.version.replace(/\./g, "\\.")}-py3-none-any\\.whl`));

        const userDir = path.join(tmp, "user");
        fs.mkdirSync(userDir);
        fs.writeFileSync(path.join(userDir, "package.json"), JSON.stringify({ name: "node-red-project", private: true }));
        exec("npm", ["install", "--no-fund", "--no-audit", "--loglevel=error", tarball], { cwd: userDir });
        fs.writeFileSync(path.join(userDir, "settings.js"), "module.exports = { uiHost: '127.0.0.1', flowFile: 'flows.json', credentialSecret: false };\n");

        // the only Python on PATH: a plain python3 (no kernelexec, no uv)
        const bin = path.join(tmp, "bin");
        fs.mkdirSync(bin);
        fs.symlinkSync(python, path.join(bin, "python3"));
        const env = Object.assign({}, process.env, { PATH: bin });
        delete env.KERNELEXEC_PYTHON;
        delete env.VIRTUAL_ENV;

        red = startNodeRed(userDir, env);
        const port = Number((await red.wait(/now running at http:\/\/127\.0\.0\.1:(\d+)/, 60000))[1]);
        assert.ok(red.output.includes(`Node-RED version: v${NODE_RED_VERSION}`), "the chosen Node-RED runs: " + NODE_RED_VERSION);
        await red.wait(/Started flows/, 60000);
        const status = watchStatus(port, PYTHON_NODE);
        const deployed = Date.now();
        const mark = red.output.length;
        await request(port, "POST", "/flows", flows(), { "Node-RED-Deployment-Type": "full" });
        await red.wait(/Started flows/, 60000, mark);
        await request(port, "POST", "/inject/" + INJECT_NODE);
        await red.wait(new RegExp(ANSWER), 15 * 60000);
        const first = (Date.now() - deployed) / 1000;
        status.close();
        assert.ok(fs.existsSync(path.join(userDir, "kernelexec-python", PKG.version, "bin", "python")), "no managed environment in the user directory");
        assert.ok(status.texts.some((s) => /^setting up Python: installing \d+ packages/.test(s)), "status texts: " + status.texts.join(" | "));
        assert.deepStrictEqual(fs.readdirSync(path.join(userDir, "kernelexec-python")).filter((f) => f.startsWith(".")), [], "leftovers of the build");
        await red.stop();
        assert.match(red.output, /Python environment .* ready in/);

        // second start: the environment is there, nothing is built
        const restarted = Date.now();
        red = startNodeRed(userDir, env);
        const port2 = Number((await red.wait(/now running at http:\/\/127\.0\.0\.1:(\d+)/, 60000))[1]);
        await red.wait(/Started flows/, 60000);
        await request(port2, "POST", "/inject/" + INJECT_NODE);
        await red.wait(new RegExp(ANSWER), 120000);
        const second = (Date.now() - restarted) / 1000;
        assert.doesNotMatch(red.output, /building the Python environment/);
        await red.stop();
        red = null;
        process.stdout.write(`      first deploy on a fresh user directory (environment build included): ${first.toFixed(1)} s; after a restart: ${second.toFixed(1)} s\n`);
    });
});

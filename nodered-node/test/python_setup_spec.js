// lib/python_setup.js when things go wrong: no python3, a too old one, no venv module, no
// package index (each a clear error, nothing half-built left, a stale lock and a dead build's
// leftovers swept), and the handshake's version check (a configured Python with another
// kernelexec: an error saying what to do; the managed environment: removed and rebuilt).
// The building itself is covered end to end by palette_spec.js.
"use strict";
const assert = require("assert");
const fs = require("fs");
const os = require("os");
const path = require("path");
const { spawnSync } = require("child_process");
const S = require("./support");
const pythonSetup = require("../lib/python_setup");
const bridges = require("../lib/bridge");

const { helper } = S;
const VERSION = require("../package.json").version;
const REAL_PYTHON = ["/usr/bin/python3", "/usr/local/bin/python3"].find((p) =>
    spawnSync(p, ["-c", "import sys, venv, ensurepip; assert sys.version_info >= (3, 10)"]).status === 0);

function script(dir, name, text) {
    const file = path.join(dir, name);
    fs.writeFileSync(file, "#!/bin/sh\n" + text + "\n", { mode: 0o755 });
    return file;
}

/** The python of .venv, reporting kernelexec `version` (as a bridge of another release would); it
 * drops the interpreter's -X option, as a bridge that does not know it ignores it. */
function otherVersionPython(dir, version) {
    const venv = process.env.KERNELEXEC_PYTHON;
    const code = "import sys, importlib.metadata as m; v = m.version; " +
        `m.version = lambda n: '${version}' if n == 'kernelexec' else v(n); ` +
        "import runpy; sys.argv = ['kernelexec'] + sys.argv[1:]; runpy.run_module('kernelexec', run_name='__main__')";
    return script(dir, "python", `[ "$1" = -X ] && shift 2\nshift 2\nexec ${venv} -c "${code}" "$@"`);
}

describe("python_setup: errors that say what to do, nothing half-built", function () {
    this.timeout(120000);
    let tmp;
    let saved;

    beforeEach(function () {
        tmp = fs.mkdtempSync(path.join(os.tmpdir(), "kx-setup-"));
        fs.mkdirSync(path.join(tmp, "bin"));
        fs.mkdirSync(path.join(tmp, "user"));
        saved = {};
        for (const key of ["PATH", "PIP_INDEX_URL", "PIP_RETRIES", "PIP_FIND_LINKS", "PIP_CONFIG_FILE"]) {
            saved[key] = process.env[key];
        }
        process.env.PATH = path.join(tmp, "bin");
        pythonSetup.configure({ userDir: path.join(tmp, "user") });
    });

    afterEach(function () {
        for (const [key, value] of Object.entries(saved)) {
            if (value === undefined) {
                delete process.env[key];
            } else {
                process.env[key] = value;
            }
        }
        fs.rmSync(tmp, { recursive: true, force: true });
    });

    function leftovers() {
        const root = path.join(tmp, "user", "kernelexec-python");
        return fs.existsSync(root) ? fs.readdirSync(root) : [];
    }

    it("no python3 on the PATH: says so and what to install", async function () {
        await assert.rejects(pythonSetup.resolve(), (err) => {
            assert.strictEqual(err.code, "NO_PYTHON");
            assert.match(err.message, /No python3 \(version 3\.10 or later\) was found on the PATH/);
            assert.match(err.message, /Install Python 3\.10 or later/);
            return true;
        });
        assert.deepStrictEqual(leftovers(), []);
    });

    it("a python3 older than 3.10: names it, its version and what to install", async function () {
        script(path.join(tmp, "bin"), "python3", "echo 3.8; echo /opt/old/bin/python3");
        await assert.rejects(pythonSetup.resolve(), (err) => {
            assert.strictEqual(err.code, "PYTHON_TOO_OLD");
            assert.match(err.message, /\/opt\/old\/bin\/python3\) is Python 3\.8; kernelexec needs Python 3\.10 or later/);
            return true;
        });
        assert.deepStrictEqual(leftovers(), []);
    });

    it("a python3 without the venv module: says which package to install", async function () {
        if (!REAL_PYTHON) {
            this.skip();
        }
        script(path.join(tmp, "bin"), "python3", `case "$*" in *"import venv"*) echo "No module named 'ensurepip'" >&2; exit 1;; esac\nexec ${REAL_PYTHON} "$@"`);
        await assert.rejects(pythonSetup.resolve(), (err) => {
            assert.strictEqual(err.code, "NO_VENV");
            assert.match(err.message, /has no venv module/);
            assert.match(err.message, /apt install python3\.\d+-venv/);
            return true;
        });
        assert.deepStrictEqual(leftovers(), []);
    });

    it("no package index: says so and how to point at one; sweeps a dead build and its lock; leaves nothing", async function () {
        if (!REAL_PYTHON) {
            this.skip();
        }
        fs.symlinkSync(REAL_PYTHON, path.join(tmp, "bin", "python3"));
        process.env.PIP_INDEX_URL = "http://127.0.0.1:9/simple";   // nothing listens there
        process.env.PIP_RETRIES = "0";
        process.env.PIP_CONFIG_FILE = os.devNull;   // no local wheel directories or extra indexes either
        delete process.env.PIP_FIND_LINKS;
        // what a Node-RED killed in the middle of a build leaves: its lock and its temporary dir
        const root = path.join(tmp, "user", "kernelexec-python");
        fs.mkdirSync(path.join(root, ".lock"), { recursive: true });
        const dead = spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"], { encoding: "utf8" }).stdout;
        fs.writeFileSync(path.join(root, ".lock", "pid"), dead);
        fs.mkdirSync(path.join(root, `.build-${VERSION}-dead`));
        const seen = [];
        await assert.rejects(pythonSetup.resolve((text) => seen.push(text)), (err) => {
            assert.strictEqual(err.code, "NO_INDEX", err.message);
            assert.match(err.message, /could not be downloaded from the package index/);
            assert.match(err.message, /PIP_INDEX_URL/);
            return true;
        });
        assert.ok(seen.some((s) => /^setting up Python: creating an environment/.test(s)), seen.join(" | "));
        assert.deepStrictEqual(leftovers(), []);
        assert.strictEqual(pythonSetup.state().state, "failed");
    });
});

describe("python_setup: one build for several processes at once (uv)", function () {
    this.timeout(300000);
    const UV = path.join(__dirname, "..", "..", ".venv", "bin", "uv");
    let tmp;

    before(function () {
        if (!REAL_PYTHON || !fs.existsSync(UV)) {
            this.skip();   // needs a plain python3 and uv (from the dev extras)
        }
        tmp = fs.mkdtempSync(path.join(os.tmpdir(), "kx-lock-"));
        fs.mkdirSync(path.join(tmp, "bin"));
        fs.symlinkSync(REAL_PYTHON, path.join(tmp, "bin", "python3"));
        fs.symlinkSync(UV, path.join(tmp, "bin", "uv"));
    });

    after(function () {
        if (tmp) {
            fs.rmSync(tmp, { recursive: true, force: true });
        }
    });

    /** A Node-RED-like process resolving its Python on the shared user directory. */
    function resolveIn(userDir) {
        const code = `const ps = require(${JSON.stringify(require.resolve("../lib/python_setup"))});
const say = (level) => (text) => process.stdout.write(level + " " + text + "\\n");
ps.configure({ userDir: ${JSON.stringify(userDir)}, log: { debug() {}, info: say("info"), warn: say("warn"), error: say("error") } });
ps.resolve(say("status")).then((p) => process.stdout.write("python " + p + "\\n"), (e) => { process.stdout.write("failed " + e.message + "\\n"); process.exitCode = 1; });`;
        return new Promise((resolve) => {
            const child = require("child_process").spawn(process.execPath, ["-e", code], {
                env: Object.assign({}, process.env, { PATH: path.join(tmp, "bin") }), stdio: ["ignore", "pipe", "inherit"],
            });
            let out = "";
            child.stdout.on("data", (c) => { out += c; });
            child.on("close", (status) => resolve({ status, out }));
        });
    }

    it("builds once for two processes deploying at once; the renamed environment runs kernelexec", async function () {
        const userDir = path.join(tmp, "user");
        const [a, b] = await Promise.all([resolveIn(userDir), resolveIn(userDir)]);
        assert.strictEqual(a.status, 0, a.out);
        assert.strictEqual(b.status, 0, b.out);
        const builds = (a.out + b.out).match(/building the Python environment/g) || [];
        assert.strictEqual(builds.length, 1, a.out + b.out);
        const python = path.join(userDir, "kernelexec-python", VERSION, "bin", "python");
        assert.ok(a.out.includes("python " + python) && b.out.includes("python " + python), a.out + b.out);
        assert.match(a.out + b.out, /status setting up Python: installing \d+ packages/);
        const version = spawnSync(python, ["-c", "import importlib.metadata as m, kernelexec.server; print(m.version('kernelexec'))"], { encoding: "utf8" });
        assert.strictEqual(version.stdout.trim(), VERSION, version.stderr);
        // compiled at install (uv --compile-bytecode, as pip does): read without importing it
        const probe = "import importlib.util as u, os, sys\norigin = u.find_spec('ipykernel.kernelapp').origin\nsys.exit(0 if os.path.exists(u.cache_from_source(origin)) else 1)";
        const compiled = spawnSync(python, ["-c", probe], { env: Object.assign({}, process.env, { PYTHONDONTWRITEBYTECODE: "1" }) });
        assert.strictEqual(compiled.status, 0, "ipykernel's bytecode is in the environment");
        assert.deepStrictEqual(fs.readdirSync(path.join(userDir, "kernelexec-python")), [VERSION]);
    });
});

describe("the handshake's version check", function () {
    this.timeout(60000);
    let tmp;

    beforeEach(function () {
        tmp = fs.mkdtempSync(path.join(os.tmpdir(), "kx-version-"));
    });

    afterEach(async function () {
        await S.unload();
        fs.rmSync(tmp, { recursive: true, force: true });
    });

    it("a configured Python whose kernelexec is another version: an error saying what to install", async function () {
        const python = otherVersionPython(tmp, "9.9.9");
        await S.load(S.nodes.kernelexecNode, [
            { id: "tab1", type: "tab" },
            { id: "e1", type: "kernelexec-env", python },
            { id: "n1", type: "kernelexec", z: "tab1", env: "e1", func: "return msg", outputs: 1, wires: [[]] },
        ]);
        const [text] = await S.call(helper.getNode("n1"), "error", (e) => typeof e === "string", 30000);
        assert.match(text, new RegExp(`runs kernelexec 9\\.9\\.9, but this node is version ${VERSION.replace(/\./g, "\\.")}`));
        assert.match(text, /-m pip install \S+/);
        assert.match(text, /leave the interpreter empty/);
        assert.deepStrictEqual(bridges.active().filter((b) => b.child), [], "the bridge of the other version is stopped");
    });

    it("the managed environment answering with another version is removed and rebuilt", async function () {
        const userDir = path.join(tmp, "user");
        const env = path.join(userDir, "kernelexec-python", VERSION);
        fs.mkdirSync(path.join(env, "bin"), { recursive: true });
        fs.copyFileSync(otherVersionPython(tmp, "0.0.1"), path.join(env, "bin", "python"));
        fs.writeFileSync(path.join(env, ".kernelexec-ready"), VERSION + "\n");
        const saved = { PATH: process.env.PATH, KERNELEXEC_PYTHON: process.env.KERNELEXEC_PYTHON };
        process.env.PATH = path.join(tmp, "nobin");   // no python3: the rebuild stops at once, with NO_PYTHON
        delete process.env.KERNELEXEC_PYTHON;
        helper.settings({ userDir });
        try {
            await S.load(S.nodes.kernelexecNode, S.tab([{ id: "n1", type: "kernelexec", func: "return msg", outputs: 1, wires: [[]] }]));
            const n1 = helper.getNode("n1");
            const [text] = await S.call(n1, "error", (e) => typeof e === "string" && /No python3/.test(e), 30000);
            assert.match(text, /No python3/);
            assert.ok(!fs.existsSync(env), "the environment of the other version is still there");
        } finally {
            helper.settings({});
            Object.assign(process.env, saved);
        }
    });
});

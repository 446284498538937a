// Which Python runs the bridge when none is configured, and the managed environment the node
// builds for itself after a palette install (docs/user-guide.md, "Install").
//
// resolve() answers, in order: python3 on PATH when it already has this package's kernelexec
// version; else the managed environment <userDir>/kernelexec-python/<version>/, built once per
// version from the first python3 >= 3.10 found (uv when it is on PATH, else venv + pip), with
// the kernelexec wheel bundled in this npm package (python/) and its dependencies from the
// package index. One build at a time per user directory (a lock directory; several Node-RED
// processes or nodes deploying at once build it once); the build happens in a temporary
// directory renamed into place when it works, removed when it does not.
"use strict";
const { spawn } = require("child_process");
const fs = require("fs");
const os = require("os");
const path = require("path");
const readline = require("readline");
const { t } = require("./i18n");

const VERSION = require("../package.json").version;
const PACKAGE_DIR = path.join(__dirname, "..");
const MIN_PYTHON = [3, 10];
const CANDIDATES = ["python3", "python3.13", "python3.12", "python3.11", "python3.10", "python"];
const PROBE_TIMEOUT_MS = 20000;
const INSTALL_TIMEOUT_MS = 20 * 60000;
const LOCK_POLL_MS = 500;
const READY_MARK = ".kernelexec-ready";
const OUTPUT_TAIL = 8000;
// pip and uv output when the package index cannot be reached
const NO_INDEX = /Could not find a version that satisfies|No matching distribution|Failed to establish a new connection|Name or service not known|Temporary failure in name resolution|Network is unreachable|Connection refused|ConnectionError|ProxyError|dns error|Failed to fetch|error sending request|No solution found/i;

let userDir = null;
let log = { debug() {}, info() {}, warn() {}, error() {} };
const builds = new Map();   // target dir -> Promise of the python path (one build per process)
const states = new Map();   // target dir -> {state, reason, python}

function configure(options) {
    if (options && options.userDir) {
        userDir = options.userDir;
    }
    if (options && options.log) {
        log = options.log;
    }
}

function setupError(code, message, hint) {
    const err = new Error(hint ? message + " " + hint : message);
    err.code = code;
    err.hint = hint || null;
    err.final = true;   // not retried by the bridge's backoff: the next deploy tries again
    return err;
}

/** Where the managed environment of this version lives. */
function envRoot() {
    return path.join(userDir || path.join(os.homedir(), ".node-red"), "kernelexec-python");
}

function envDir() {
    return path.join(envRoot(), VERSION);
}

function envPython(dir) {
    return path.join(dir || envDir(), "bin", "python");
}

/**
 * Run a command; resolves {code, output} (stdout and stderr, tail only). `onLine` sees every
 * line. ENOENT resolves {code: null, missing: true}.
 */
function run(cmd, args, options) {
    const opts = options || {};
    return new Promise((resolve) => {
        let child;
        try {
            child = spawn(cmd, args, { env: opts.env || process.env, stdio: ["ignore", "pipe", "pipe"], cwd: opts.cwd || os.tmpdir() });
        } catch (err) {
            resolve({ code: null, output: err.message, missing: err.code === "ENOENT" });
            return;
        }
        let output = "";
        const onLine = (line) => {
            output = (output + line + "\n").slice(-OUTPUT_TAIL);
            if (opts.onLine) {
                opts.onLine(line);
            }
        };
        readline.createInterface({ input: child.stdout }).on("line", onLine);
        readline.createInterface({ input: child.stderr }).on("line", onLine);
        const timer = setTimeout(() => {
            output += `\n(stopped after ${Math.round((opts.timeout || PROBE_TIMEOUT_MS) / 1000)} s)`;
            child.kill("SIGKILL");
        }, opts.timeout || PROBE_TIMEOUT_MS);
        child.on("error", (err) => {
            clearTimeout(timer);
            resolve({ code: null, output: err.message, missing: err.code === "ENOENT" });
        });
        child.on("close", (code) => {
            clearTimeout(timer);
            resolve({ code, output });
        });
    });
}

/** The kernelexec version `python` has (null when it has none or does not run). */
async function kernelexecVersion(python) {
    const res = await run(python, ["-c", "import importlib.metadata as m; print(m.version('kernelexec'))"]);
    const line = res.code === 0 ? res.output.trim().split("\n").pop() : "";
    return line || null;
}

/** The first python3 >= 3.10 on PATH: {python, version}; a clear error when there is none. */
async function findPython() {
    let old = null;
    for (const name of CANDIDATES) {
        const res = await run(name, ["-c", "import sys; print('%d.%d' % sys.version_info[:2]); print(sys.executable)"]);
        if (res.code !== 0) {
            continue;
        }
        const [version, executable] = res.output.trim().split("\n");
        const [major, minor] = version.split(".").map(Number);
        if (major > MIN_PYTHON[0] || (major === MIN_PYTHON[0] && minor >= MIN_PYTHON[1])) {
            return { python: name, executable: executable || name, version };
        }
        old = old || { python: executable || name, version };
    }
    const min = MIN_PYTHON.join(".");
    if (old) {
        throw setupError("PYTHON_TOO_OLD", t("kernelexec.setup.error.tooOld", { python: old.python, version: old.version, min }),
            t("kernelexec.setup.hint.installPython", { min }));
    }
    throw setupError("NO_PYTHON", t("kernelexec.setup.error.noPython", { min, path: process.env.PATH || "" }),
        t("kernelexec.setup.hint.installPython", { min }));
}

/** What pip/uv installs: the bundled wheel of this version, else (a checkout) the repository. */
function bundledPackage() {
    const dir = path.join(PACKAGE_DIR, "python");
    const wheels = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.startsWith(`kernelexec-${VERSION}-`) && f.endsWith(".whl")) : [];
    if (wheels.length > 0) {
        return path.join(dir, wheels[0]);
    }
    const repo = path.join(PACKAGE_DIR, "..");
    if (fs.existsSync(path.join(repo, "pyproject.toml")) && fs.existsSync(path.join(repo, "kernelexec"))) {
        return repo;
    }
    throw setupError("NO_WHEEL", t("kernelexec.setup.error.noWheel", { version: VERSION, dir }), t("kernelexec.setup.hint.reinstall"));
}

/** What to tell a user to pip install: the bundled wheel (or checkout), else the name. */
function packageHint() {
    try {
        return bundledPackage();
    } catch (ignored) {
        return "kernelexec";
    }
}

/** Counts what pip/uv say they will install: "installing 9 packages…". */
function installProgress(progress) {
    let collected = 0;
    return (line) => {
        log.debug("[kernelexec setup] " + line);
        let m = /^\s*Resolved (\d+) packages?/.exec(line);   // uv
        if (m) {
            progress(t("kernelexec.setup.status.installing", { count: m[1] }));
            return;
        }
        if (/^\s*Collecting /.test(line)) {   // pip
            collected += 1;
            progress(t("kernelexec.setup.status.downloading", { count: collected }));
            return;
        }
        m = /^\s*Installing collected packages: (.*)$/.exec(line);   // pip
        if (m) {
            progress(t("kernelexec.setup.status.installing", { count: m[1].split(",").length }));
        }
    };
}

function installError(res, python) {
    const tail = res.output.trim().split("\n").slice(-4).join(" | ");
    if (NO_INDEX.test(res.output)) {
        return setupError("NO_INDEX", t("kernelexec.setup.error.noIndex", { output: tail }), t("kernelexec.setup.hint.index"));
    }
    return setupError("INSTALL_FAILED", t("kernelexec.setup.error.installFailed", { python, output: tail }));
}

/** Create the environment in `dir` and install kernelexec into it. */
async function build(dir, progress) {
    const found = await findPython();
    const pkg = bundledPackage();
    const uv = (await run("uv", ["--version"])).code === 0;
    progress(t("kernelexec.setup.status.creating", { version: found.version }));
    log.info(t("kernelexec.setup.log.building", { dir, python: found.executable, version: found.version, tool: uv ? "uv" : "venv + pip", package: pkg }));
    const python = envPython(dir);
    const onLine = installProgress(progress);
    let res;
    if (uv) {
        res = await run("uv", ["venv", "--quiet", "--python", found.python, dir], { onLine });
        if (res.code !== 0) {
            throw setupError("VENV_FAILED", t("kernelexec.setup.error.venvFailed", { python: found.executable, output: res.output.trim() }));
        }
        // bytecode now, as pip does by default: without it every kernel start compiles ipykernel's
        // imports when __pycache__ cannot be written (PYTHONDONTWRITEBYTECODE, a kernel user)
        res = await run("uv", ["pip", "install", "--compile-bytecode", "--python", python, pkg], { onLine, timeout: INSTALL_TIMEOUT_MS });
    } else {
        res = await run(found.python, ["-c", "import venv, ensurepip"]);
        if (res.code !== 0) {
            throw setupError("NO_VENV", t("kernelexec.setup.error.noVenv", { python: found.executable }),
                t("kernelexec.setup.hint.venv", { version: found.version }));
        }
        res = await run(found.python, ["-m", "venv", dir], { onLine, timeout: INSTALL_TIMEOUT_MS });
        if (res.code !== 0) {
            throw setupError("VENV_FAILED", t("kernelexec.setup.error.venvFailed", { python: found.executable, output: res.output.trim() }),
                t("kernelexec.setup.hint.venv", { version: found.version }));
        }
        res = await run(python, ["-m", "pip", "install", "--disable-pip-version-check", "--no-input", pkg], { onLine, timeout: INSTALL_TIMEOUT_MS });
    }
    if (res.code !== 0) {
        throw installError(res, found.executable);
    }
    fs.writeFileSync(path.join(dir, READY_MARK), VERSION + "\n");
}

function isReady(dir) {
    try {
        return fs.readFileSync(path.join(dir, READY_MARK), "utf8").trim() === VERSION && fs.existsSync(envPython(dir));
    } catch (ignored) {
        return false;
    }
}

/** Remove a directory by renaming it aside first (a reader never sees half of it). */
function discard(dir) {
    if (!fs.existsSync(dir)) {
        return;
    }
    const aside = path.join(path.dirname(dir), `.discard-${path.basename(dir)}-${process.pid}-${Date.now()}`);
    try {
        fs.renameSync(dir, aside);
    } catch (ignored) {
        fs.rmSync(dir, { recursive: true, force: true });
        return;
    }
    fs.rmSync(aside, { recursive: true, force: true });
}

function alive(pid) {
    try {
        process.kill(pid, 0);
        return true;
    } catch (err) {
        return err.code === "EPERM";
    }
}

/** Take the build lock of `root` (a directory holding the owner's pid); waits for a live owner. */
async function lock(root, progress) {
    const dir = path.join(root, ".lock");
    let told = false;
    for (;;) {
        try {
            fs.mkdirSync(dir);
            fs.writeFileSync(path.join(dir, "pid"), String(process.pid));
            return () => fs.rmSync(dir, { recursive: true, force: true });
        } catch (err) {
            if (err.code !== "EEXIST") {
                throw err;
            }
        }
        let pid = NaN;
        try {
            pid = Number(fs.readFileSync(path.join(dir, "pid"), "utf8"));
        } catch (ignored) {
            // the owner is between mkdir and writing its pid
        }
        if (Number.isInteger(pid) && pid > 0 && !alive(pid)) {
            log.warn(t("kernelexec.setup.log.staleLock", { dir, pid }));
            fs.rmSync(dir, { recursive: true, force: true });
            continue;
        }
        if (!told) {
            told = true;
            progress(t("kernelexec.setup.status.waiting"));
        }
        await new Promise((resolve) => setTimeout(resolve, LOCK_POLL_MS));
    }
}

/** Under the lock: temporary directories of builds that died (a crash, a kill) go. */
function sweepLeftovers() {
    for (const name of fs.readdirSync(envRoot())) {
        if (name.startsWith(".build-") || name.startsWith(".discard-")) {
            log.info(t("kernelexec.setup.log.leftover", { dir: path.join(envRoot(), name) }));
            fs.rmSync(path.join(envRoot(), name), { recursive: true, force: true });
        }
    }
}

/**
 * Build the managed environment unless it is there (`force`: build a new one anyway, swapped in
 * when it works); resolves its python.
 */
async function ensureManaged(progress, force) {
    const target = envDir();
    if (!force && isReady(target)) {
        return envPython(target);
    }
    if (!builds.has(target)) {
        const started = Date.now();
        states.set(target, { state: "building", reason: null, python: null });
        const promise = (async () => {
            fs.mkdirSync(envRoot(), { recursive: true });
            const unlock = await lock(envRoot(), progress);
            try {
                sweepLeftovers();
                if (!force && isReady(target)) {
                    return envPython(target);   // another process built it meanwhile
                }
                const tmp = fs.mkdtempSync(path.join(envRoot(), `.build-${VERSION}-`));
                try {
                    await build(tmp, progress);
                    discard(target);   // a half-built or stale one from before
                    fs.renameSync(tmp, target);
                } catch (err) {
                    fs.rmSync(tmp, { recursive: true, force: true });
                    throw err;
                }
                log.info(t("kernelexec.setup.log.built", { dir: target, seconds: ((Date.now() - started) / 1000).toFixed(1) }));
                return envPython(target);
            } finally {
                unlock();
            }
        })();
        builds.set(target, promise);
        promise.then((python) => {
            states.set(target, { state: "ready", reason: null, python });
        }, (err) => {
            states.set(target, { state: "failed", reason: err.message, python: null });
            log.error(err.message);
        }).finally(() => builds.delete(target));
    }
    return builds.get(target);
}

/**
 * The Python for a bridge with no configured interpreter. `progress(text)` is told what
 * happens while an environment is being built.
 */
async function resolve(progress) {
    const say = progress || (() => {});
    if (await kernelexecVersion("python3") === VERSION) {
        return "python3";
    }
    return ensureManaged(say);
}

/** The managed environment answered with another version: remove it, the next resolve rebuilds. */
function invalidate(python) {
    const target = envDir();
    if (python === envPython(target) && !builds.has(target)) {
        discard(target);
        states.delete(target);
        return true;
    }
    return false;
}

/** Whether `python` is the managed environment's interpreter. */
function isManaged(python) {
    return python === envPython(envDir());
}

/** State of the managed environment (for the editor): {state, reason, python, dir}. */
function state() {
    const target = envDir();
    const known = states.get(target);
    if (known) {
        return Object.assign({ dir: target }, known);
    }
    return { state: isReady(target) ? "ready" : "absent", reason: null, python: isReady(target) ? envPython(target) : null, dir: target };
}

/**
 * Rebuild the managed environment now (editor's rebuild button): the new one replaces the old
 * one only when it works; bridges already running keep theirs until the next deploy.
 */
async function rebuild(progress) {
    const target = envDir();
    if (builds.has(target)) {
        return builds.get(target);
    }
    return ensureManaged(progress || (() => {}), true);
}

module.exports = {
    VERSION, configure, resolve, packageHint, invalidate, isManaged, state, rebuild, kernelexecVersion,
    findPython, envDir, envPython, run,
};

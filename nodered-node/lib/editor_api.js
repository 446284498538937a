// Admin HTTP endpoints of the editor (RED.httpAdmin; RED.auth.needsPermission on each):
//
//   POST /kernelexec/run                 kernelexec.write  run the dialog's setup + code on a sample
//                                                          message in a throwaway pool; no deploy
//   POST /kernelexec/complete            kernelexec.write  completion (op complete) or hover help
//                                                          (op inspect) from a kernel that ran the setup
//   GET  /kernelexec/envs/:id            kernelexec.read   state of an environment node's Python
//   GET  /kernelexec/envs/:id/packages   kernelexec.read   its installed packages, with versions
//   POST /kernelexec/envs/:id/rebuild    kernelexec.write  rebuild the node's own Python environment
//
// Completion runs the setup code, so it needs write like Run. Run has a time limit
// (RUN_LIMIT_S per message, RUN_DEADLINE_MS in all) and always closes its pool: no kernel
// outlives the request. Completion pools stay up while the dialog is used (IDLE_MS), one per
// node and setup, at most MAX_HELPERS.
"use strict";
const crypto = require("crypto");
const bridges = require("./bridge");
const codec = require("./codec");
const pythonSetup = require("./python_setup");
const { Scratch } = require("./scratch");
const { t } = require("./i18n");

const RUN_LIMIT_S = 30;
const RUN_DEADLINE_MS = 90000;
const MAX_RUNS = 2;
const IDLE_MS = 120000;
const MAX_HELPERS = 4;
const PACKAGES_CODE = "import importlib.metadata as _m\n" +
    "return {'payload': sorted(({'name': d.metadata['Name'], 'version': d.version} for d in _m.distributions() if d.metadata['Name']), key=lambda p: p['name'].lower())}";
const RUNTIME_NAMES = ["msg", "node", "context", "flow", "global_", "env"];

/** What a run/complete request needs to build its pool: bridge options and config. */
function poolFor(RED, body, code, limit) {
    const envNode = body.env ? RED.nodes.getNode(String(body.env)) : null;
    let bridge = envNode ? envNode.bridgeOptions() : {};
    if (!bridge.url && !bridge.python) {
        bridge = { python: RED.settings.kernelexecPython || undefined };
    }
    const outputs = Number.isInteger(Number(body.outputs)) ? Math.max(0, Math.min(32, Number(body.outputs))) : 1;
    const config = {
        name: "editor",
        code: typeof code === "string" ? code : "return msg",
        setup: typeof body.setup === "string" ? body.setup : "",
        stop: "",
        outputs,
        mode: "hot",
        workers: 1,
        timeout: limit,
        queue_limit: 1,
        keep_order: false,
        env: envNode ? envNode.envConfig() : {},
        notebook: "",
    };
    return { bridge, config };
}

/** A message that JSON can carry (Buffers decoded by the codec show as {type, data}): the
 * outputs of a result or send `frame`, blob markers read from the frame's own table (files of
 * this user or of `kernelUid`, the scratch pool's kernel user). */
async function decoded(frame, blobDir, kernelUid) {
    if (!Array.isArray(frame.outputs)) {
        codec.discardBlobs(frame, blobDir);
        return [];
    }
    return codec.decodeValue(frame.outputs, { blobDir, blobs: codec.tableOf(frame), reqId: frame.req_id, kernelUid });
}

function errorInfo(err, where) {
    const detail = err && err.detail ? err.detail : {};
    return {
        where,
        type: detail.type || (err && err.name) || "Error",
        code: detail.code || (err && err.code) || null,
        message: detail.message || (err && err.message) || String(err),
        line: detail.line || null,
        traceback: detail.traceback || null,
    };
}

function deadline(ms, what) {
    let timer;
    const promise = new Promise((resolve, reject) => {
        timer = setTimeout(() => reject(Object.assign(new Error(t("kernelexec.editor.error.deadline", { what, seconds: ms / 1000 })), { code: "TIMEOUT" })), ms);
    });
    promise.catch(() => {});
    return { promise, clear: () => clearTimeout(timer) };
}

/** Run setup + code on one sample message; the answer the dialog shows. */
async function run(RED, body) {
    const limit = Number(body.timeout) > 0 ? Math.min(Number(body.timeout), RUN_LIMIT_S) : RUN_LIMIT_S;
    const { bridge, config } = poolFor(RED, body, body.func, limit);
    const msg = body.msg && typeof body.msg === "object" && !Array.isArray(body.msg) ? body.msg : { payload: body.msg };
    if (msg._msgid === undefined) {
        msg._msgid = crypto.randomBytes(8).toString("hex");
    }
    const scratch = new Scratch(bridge, config);
    const started = Date.now();
    const stop = deadline(RUN_DEADLINE_MS, "Run");
    const answer = { outputs: [], sent: [], status: [], logs: [], stdout: "", error: null, ms: 0 };
    try {
        try {
            await Promise.race([scratch.start(), stop.promise]);
        } catch (err) {
            answer.error = errorInfo(err, err.code === "TIMEOUT" ? "run" : "setup");
            return answer;
        }
        const result = await Promise.race([scratch.execute(msg), stop.promise]);
        const blobDir = scratch.bridge && scratch.bridge.blobDir;
        for (const event of result.events) {
            if (event.type === "send") {
                answer.sent.push(await decoded(event, blobDir, scratch.kernelUid));
            } else if (event.type === "status") {
                answer.status.push(event.status);
            } else if (event.type === "log") {
                answer.logs.push({ level: event.level, text: event.text });
            }
        }
        answer.outputs = result.error ? [] : await decoded(result, blobDir, scratch.kernelUid);
        answer.status.push(...(result.status || []));
        answer.logs.push(...(result.logs || []));
        answer.stdout = result.stdout || "";
        answer.error = result.error ? errorInfo({ detail: result.error }, "message") : null;
        return answer;
    } catch (err) {
        answer.error = errorInfo(err, "run");
        return answer;
    } finally {
        stop.clear();
        answer.ms = Date.now() - started;
        await scratch.close();
    }
}

// ---- completion / hover: one pool per node and setup, kept while the dialog is used -------

const helpers = new Map();   // key -> {scratch, ready, timer, nodeId, setup, used}

function dropHelper(key) {
    const helper = helpers.get(key);
    if (helper) {
        helpers.delete(key);
        clearTimeout(helper.timer);
        helper.scratch.close();
    }
}

function helperFor(RED, body) {
    const nodeId = String(body.node || "");
    const setup = typeof body.setup === "string" ? body.setup : "";
    const key = crypto.createHash("sha256").update(JSON.stringify([nodeId, body.env || "", setup])).digest("hex");
    let helper = helpers.get(key);
    if (!helper) {
        // the same node's editor with another setup: that pool goes (the Setup editor's own
        // pool, without setup, stays beside the On Message editor's)
        for (const [other, h] of helpers) {
            if (h.nodeId === nodeId && Boolean(h.setup) === Boolean(setup)) {
                dropHelper(other);
            }
        }
        while (helpers.size >= MAX_HELPERS) {
            dropHelper(Array.from(helpers.entries()).sort((a, b) => a[1].used - b[1].used)[0][0]);
        }
        const { bridge, config } = poolFor(RED, body, "return msg", 0);
        const scratch = new Scratch(bridge, config);
        helper = { scratch, ready: scratch.start(), timer: null, nodeId, setup, used: 0 };
        // a setup that fails (half typed) fails every request until it changes: no new kernel
        // per keystroke
        helper.ready.catch(() => scratch.close());
        helpers.set(key, helper);
    }
    helper.used = Date.now();
    clearTimeout(helper.timer);
    helper.timer = setTimeout(() => dropHelper(key), IDLE_MS);
    helper.timer.unref();
    return helper;
}

/** The names of the runtime (msg is an argument, not a global: the kernel does not know it). */
function runtimeMatches(code, cursor, reply) {
    const before = code.slice(0, cursor);
    const m = /(^|[^\w.])([A-Za-z_]\w*)$/.exec(before);
    if (!m) {
        return reply;
    }
    const prefix = m[2];
    const extra = RUNTIME_NAMES.filter((n) => n.startsWith(prefix) && !reply.matches.includes(n));
    if (extra.length === 0) {
        return reply;
    }
    const start = cursor - prefix.length;
    if (reply.matches.length > 0 && reply.cursor_start !== start) {
        return reply;
    }
    return Object.assign({}, reply, { matches: extra.concat(reply.matches), cursor_start: start, cursor_end: cursor });
}

async function complete(RED, body) {
    const op = body.op === "inspect" ? "inspect" : "complete";
    const code = typeof body.code === "string" ? body.code : "";
    const cursor = Math.max(0, Math.min(code.length, Number(body.cursor) || 0));
    const helper = helperFor(RED, body);
    const stop = deadline(RUN_DEADLINE_MS, op);
    try {
        await Promise.race([helper.ready, stop.promise]);
        // code points for Python: the cursor counts UTF-16 units here
        const pos = Array.from(code.slice(0, cursor)).length;
        const answer = await Promise.race([helper.scratch.inspect(op, code, pos), stop.promise]);
        if (answer.error) {
            return { error: errorInfo({ detail: answer.error }, op) };
        }
        const reply = answer.reply || {};
        if (op === "complete") {
            const toUnits = (p) => Array.from(code).slice(0, p).join("").length;
            const fixed = Object.assign({}, reply, {
                cursor_start: toUnits(reply.cursor_start), cursor_end: toUnits(reply.cursor_end),
            });
            return { reply: runtimeMatches(code, cursor, fixed) };
        }
        return { reply };
    } catch (err) {
        return { error: errorInfo(err, err.code === "TIMEOUT" ? op : "setup") };
    } finally {
        stop.clear();
    }
}

// ---- environment view --------------------------------------------------------------

/** State of an environment node's Python: {kind, state, reason, python, bridge}. */
async function envState(RED, id) {
    const envNode = RED.nodes.getNode(id);
    if (!envNode) {
        return null;
    }
    const options = envNode.bridgeOptions();
    const key = bridges.bridgeOptions(options).key;
    const bridge = bridges.active().find((b) => b.key === key);
    const live = bridge ? {
        state: bridge.state,
        error: bridge.lastError ? bridge.lastError.message : null,
        server: bridge.welcome ? bridge.welcome.server : null,
    } : null;
    if (options.url) {
        return { kind: "remote", state: live && live.state === bridges.BridgeState.READY ? "ready" : live && live.error ? "failed" : "unknown", reason: live && live.error, python: null, bridge: live };
    }
    const python = options.python || process.env.KERNELEXEC_PYTHON;
    if (!python) {
        const managed = pythonSetup.state();
        if (bridge && bridge.ready && !pythonSetup.isManaged(bridge.python)) {   // python3 had kernelexec
            return { kind: "path", state: "ready", reason: null, python: bridge.python, bridge: live };
        }
        return { kind: "managed", state: managed.state, reason: managed.reason, python: managed.python, dir: managed.dir, bridge: live };
    }
    const version = await pythonSetup.kernelexecVersion(python);
    const ok = version === pythonSetup.VERSION;
    const reason = ok ? null : version ? t("kernelexec.setup.error.versionMismatch", { python, theirs: version, ours: pythonSetup.VERSION })
        : t("kernelexec.editor.error.noKernelexec", { python });
    return { kind: "configured", state: ok ? "ready" : "failed", reason, python, bridge: live };
}

/** The packages the kernels of an environment node see (a throwaway pool lists them). */
async function envPackages(RED, id) {
    if (!RED.nodes.getNode(id)) {
        return null;
    }
    const answer = await run(RED, { env: id, func: PACKAGES_CODE, setup: "", outputs: 1, msg: {} });
    if (answer.error) {
        return { error: answer.error, packages: [] };
    }
    const first = answer.outputs[0] && answer.outputs[0][0];
    return { error: null, packages: first ? first.payload : [] };
}

function register(RED) {
    const admin = RED.httpAdmin;
    const read = RED.auth.needsPermission("kernelexec.read");
    const write = RED.auth.needsPermission("kernelexec.write");
    const fail = (res, err) => res.status(500).json({ error: errorInfo(err, "server") });
    let running = 0;

    admin.post("/kernelexec/run", write, (req, res) => {
        if (running >= MAX_RUNS) {
            res.status(429).json({ error: { where: "run", message: t("kernelexec.editor.error.busy", { count: MAX_RUNS }) } });
            return;
        }
        running += 1;
        run(RED, req.body || {}).then((answer) => res.json(answer), (err) => fail(res, err)).finally(() => {
            running -= 1;
        });
    });
    admin.post("/kernelexec/complete", write, (req, res) => {
        complete(RED, req.body || {}).then((answer) => res.json(answer), (err) => fail(res, err));
    });
    admin.get("/kernelexec/envs/:id", read, (req, res) => {
        envState(RED, req.params.id).then((state) => (state ? res.json(state) : res.status(404).json({ error: { message: t("kernelexec.editor.error.notDeployed") } })),
            (err) => fail(res, err));
    });
    admin.get("/kernelexec/envs/:id/packages", read, (req, res) => {
        envPackages(RED, req.params.id).then((list) => (list ? res.json(list) : res.status(404).json({ error: { message: t("kernelexec.editor.error.notDeployed") } })),
            (err) => fail(res, err));
    });
    admin.post("/kernelexec/envs/:id/rebuild", write, (req, res) => {
        const envNode = RED.nodes.getNode(req.params.id);
        if (!envNode) {
            res.status(404).json({ error: { message: t("kernelexec.editor.error.notDeployed") } });
            return;
        }
        const options = envNode.bridgeOptions();
        if (options.url || options.python || process.env.KERNELEXEC_PYTHON) {
            res.status(409).json({ error: { message: t("kernelexec.editor.error.notManaged") } });
            return;
        }
        pythonSetup.rebuild().catch(() => {});   // its state shows the outcome
        res.status(202).json(pythonSetup.state());
    });
}

/** Close the completion pools (the runtime stops). */
function closeAll() {
    for (const key of Array.from(helpers.keys())) {
        dropHelper(key);
    }
}

module.exports = { register, closeAll, run, complete, runtimeMatches };

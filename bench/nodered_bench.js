#!/usr/bin/env node
// The Node-RED benchmark (issue 6): a real Node-RED runtime, embedded here, runs one small flow
// per subject:  bench-source -> SUBJECT -> bench-sink, plus a catch node (scope: the subject)
// wired to the same sink. Every message carries a sequence id (msg._seq); the source side
// stamps process.hrtime.bigint() when it is sent, the sink when it arrives, and every message
// ends up counted as ok, error (it reached the catch node) or lost (never came back).
//
// Subjects: core `function` node (`return msg;`, the ceiling), the floor (bench-floor: one plain
// Python process over a pipe, the least a JS-to-Python round trip can cost), kernelexec hot with
// 1 and 4 workers, kernelexec cold. Workloads run in round-robin rounds so that noise spreads
// evenly over the subjects. Output: JSON (bench/results/latest.json by default).
//
//   node bench/nodered_bench.js [--smoke] [--out FILE] [--subjects function,floor,hot1,hot4,cold]
//        [--workloads latency,burst,blobs,cold,startup,idle,memory]
"use strict";
const crypto = require("crypto");
const fs = require("fs");
const http = require("http");
const os = require("os");
const path = require("path");
const { execFileSync } = require("child_process");
const zlib = require("zlib");

const ROOT = path.resolve(__dirname, "..");
const PKG = path.join(ROOT, "nodered-node");
const RED = require(path.join(PKG, "node_modules", "node-red"));
const PYTHON = process.env.KERNELEXEC_PYTHON || path.join(ROOT, ".venv", "bin", "python");
process.env.KERNELEXEC_PYTHON = PYTHON;

const MIB = 1 << 20;
const FULL = {
    warmup: 200,
    latency: 2000, latencyRounds: 4, coldLatency: 100,
    burst: 5000, burstRounds: 3, coldBurst: 500,
    blobSizes: [1, 16, 64], blobReps: { 1: 10, 16: 5, 64: 3 },
    perSecond: 10,
    startupReps: 3, firstDeployReps: 3,
    memory: 100000, memoryWarmup: 2000, memoryWindow: 500,
};
const SMOKE = {
    warmup: 20,
    latency: 200, latencyRounds: 2, coldLatency: 3,
    burst: 500, burstRounds: 1, coldBurst: 20,
    blobSizes: [1], blobReps: { 1: 2 },
    perSecond: 3,
    startupReps: 1, firstDeployReps: 1,
    memory: 2000, memoryWarmup: 200, memoryWindow: 200,
};
const LOST_AFTER_MS = 60000;
const KX_DEFAULTS = { func: "return msg", initialize: "", finalize: "", outputs: 1, timeout: 0, queueLimit: 20000, keepOrder: false };
const SUBJECTS = {
    function: { label: "function node (JS, in process)", node: { type: "function", func: "return msg;", outputs: 1, noerr: 0, initialize: "", finalize: "", libs: [] } },
    floor: { label: "floor (plain Python process over a pipe)", node: { type: "bench-floor", python: PYTHON } },
    hot1: { label: "kernelexec hot, 1 worker", kx: true, node: Object.assign({ type: "kernelexec", mode: "hot", workers: 1 }, KX_DEFAULTS) },
    hot1j: { label: "kernelexec hot, 1 worker, Jupyter path", kx: true, node: Object.assign({ type: "kernelexec", mode: "hot", workers: 1 }, KX_DEFAULTS, { messagePath: "jupyter" }) },
    hot4: { label: "kernelexec hot, 4 workers", kx: true, node: Object.assign({ type: "kernelexec", mode: "hot", workers: 4 }, KX_DEFAULTS) },
    cold: { label: "kernelexec cold, 1 worker", kx: true, cold: true, node: Object.assign({ type: "kernelexec", mode: "cold", workers: 1 }, KX_DEFAULTS) },
};
const TAB = "bench-tab";
// "idle": latency of isolated messages after an idle gap of 0 ms .. 1 s (floor, hot1, cold).
const WORKLOADS = ["latency", "burst", "blobs", "cold", "startup", "idle", "memory"];
const EXTRA_WORKLOADS = [];
const IDLE_GAPS_MS = [0, 10, 100, 300, 1000];

function log(text) {
    process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${text}\n`);
}

function parseArgs(argv) {
    const args = {
        smoke: false, out: path.join(__dirname, "results", "latest.json"), subjects: Object.keys(SUBJECTS),
        workloads: new Set(WORKLOADS),
        known: new Set(WORKLOADS.concat(EXTRA_WORKLOADS)),
    };
    for (let i = 0; i < argv.length; i++) {
        if (argv[i] === "--smoke") {
            args.smoke = true;
        } else if (argv[i] === "--out") {
            args.out = path.resolve(argv[++i]);
        } else if (argv[i] === "--workloads") {
            args.workloads = new Set(argv[++i].split(",").filter(Boolean));
        } else if (argv[i] === "--subjects") {
            args.subjects = argv[++i].split(",").filter(Boolean);
        } else {
            throw new Error(`unknown argument ${argv[i]}`);
        }
    }
    for (const name of args.workloads) {
        if (!args.known.has(name)) {
            throw new Error(`unknown workload ${name}; known: ${[...args.known].join(",")}`);
        }
    }
    for (const name of args.subjects) {
        if (!SUBJECTS[name]) {
            throw new Error(`unknown subject ${name}; known: ${Object.keys(SUBJECTS).join(",")}`);
        }
    }
    return args;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const now = () => process.hrtime.bigint();
const ms = (ns) => Number(ns) / 1e6;

function quantile(sorted, q) {
    if (!sorted.length) {
        return null;
    }
    const pos = (sorted.length - 1) * q;
    const lo = Math.floor(pos);
    const hi = Math.ceil(pos);
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

function summary(values) {
    const sorted = values.slice().sort((a, b) => a - b);
    const mean = sorted.reduce((a, b) => a + b, 0) / (sorted.length || 1);
    return {
        n: sorted.length,
        p50: quantile(sorted, 0.5), p90: quantile(sorted, 0.9), p99: quantile(sorted, 0.99),
        min: sorted[0] ?? null, max: sorted[sorted.length - 1] ?? null, mean,
    };
}

const median = (values) => quantile(values.slice().sort((a, b) => a - b), 0.5);

// -- processes (/proc) -------------------------------------------------------------------------

function procTable() {
    const table = [];
    for (const entry of fs.readdirSync("/proc")) {
        if (!/^\d+$/.test(entry)) {
            continue;
        }
        try {
            const stat = fs.readFileSync(`/proc/${entry}/stat`, "utf8");
            const tail = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
            const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
            const cmd = fs.readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0").join(" ").trim();
            const cpu = Number(tail[11]) + Number(tail[12]);
            const reaped = Number(tail[13]) + Number(tail[14]);
            table.push({ pid: Number(entry), ppid: Number(tail[1]), cpu, reaped, cmd, comm });
        } catch (err) {
            // the process ended while we looked
        }
    }
    return table;
}

function descendants(pid, table = procTable()) {
    const out = [];
    const queue = [pid];
    while (queue.length) {
        const parent = queue.shift();
        for (const p of table) {
            if (p.ppid === parent) {
                out.push(p);
                queue.push(p.pid);
            }
        }
    }
    return out;
}

function rssMiB(pid) {
    try {
        const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
        const match = /VmRSS:\s+(\d+) kB/.exec(status);
        return match ? Number(match[1]) / 1024 : null;
    } catch (err) {
        return null;
    }
}

/** Every pid seen as a descendant of this process (to tell our /dev/shm files from others'). */
const seenPids = new Set([process.pid]);

/** A kernel: launched (python -m kernelexec.kernel) or forked from the kernel template, which
 * shares its command line but not its process name (kernelexec/handles/template.py). */
function isKernel(p) {
    return p.cmd.includes("kernelexec.kernel") && p.comm !== "kx-template";
}

function kernelexecProcesses() {
    const table = procTable();
    const mine = descendants(process.pid, table);
    mine.forEach((p) => seenPids.add(p.pid));
    const bridge = mine.find((p) => p.cmd.includes("kernelexec serve"));
    const kernels = bridge ? descendants(bridge.pid, table).filter(isKernel) : [];
    return { bridge, kernels, all: mine };
}

const TICK_MS = 10; // ms per clock tick (CLK_TCK 100 on Linux)

/** CPU time (ms) a process has used: its threads' run time in ns (/proc/PID/task/TID/schedstat)
 * where the kernel keeps it, else utime + stime in clock ticks (too coarse for one round of
 * small messages). */
function ownCpuMs(p) {
    try {
        let ns = 0;
        for (const tid of fs.readdirSync(`/proc/${p.pid}/task`)) {
            ns += Number(fs.readFileSync(`/proc/${p.pid}/task/${tid}/schedstat`, "utf8").split(" ")[0]);
        }
        return ns / 1e6;
    } catch (err) {
        return p.cpu * TICK_MS; // no schedstat, or the process ended meanwhile
    }
}

/** CPU time (ms) used so far by this process, the bridge, the kernels and the floor process.
 * The kernels' figure includes the template, and a cold kernel's per-message processes: alive
 * ones by their own time, ended ones by their kernel's reaped time (cutime + cstime), which a
 * process enters only as it leaves /proc, so none is counted twice. */
function cpuSnapshot() {
    const table = procTable();
    const mine = descendants(process.pid, table);
    mine.forEach((p) => seenPids.add(p.pid));
    const sum = (list, reaped = false) => list.reduce((a, p) => a + ownCpuMs(p) + (reaped ? p.reaped * TICK_MS : 0), 0);
    const usage = process.cpuUsage();
    return {
        node_red: (usage.user + usage.system) / 1000,
        bridge: sum(mine.filter((p) => p.cmd.includes("kernelexec serve"))),
        kernels: sum(mine.filter((p) => /kernelexec\.(kernel|handles\.template)\b/.test(p.cmd)), true),
        floor: sum(mine.filter((p) => p.cmd.includes("floor_worker.py"))),
    };
}

/** The median of each key over a list of objects of numbers (rounds of cpuPerMessage). */
function medianEach(list) {
    return Object.fromEntries(Object.keys(list[0] || {}).map((key) => [key, median(list.map((x) => x[key]))]));
}

function cpuPerMessage(before, after, count) {
    const out = {};
    for (const key of Object.keys(after)) {
        out[key] = Math.round(((after[key] - before[key]) / count) * 1000); // microseconds
    }
    return out;
}

function shmFiles() {
    try {
        return fs.readdirSync("/dev/shm").filter((name) => name.startsWith("kernelexec"));
    } catch (err) {
        return [];
    }
}

function pidAlive(pid) {
    try {
        process.kill(pid, 0);
        return true;
    } catch (err) {
        return err.code === "EPERM";
    }
}

/** Blob files left by this run: new since the start, written by one of our processes or by a
 * process that is gone (a cold-mode child); other programs' live files are not ours. */
function shmLeftovers(before) {
    return shmFiles().filter((name) => {
        if (before.has(name)) {
            return false;
        }
        const match = /^kernelexec-(\d+)-/.exec(name);
        const pid = match ? Number(match[1]) : null;
        return pid === null || seenPids.has(pid) || !pidAlive(pid);
    });
}

// -- machine and versions ------------------------------------------------------------------------

function machine() {
    const cpuinfo = fs.readFileSync("/proc/cpuinfo", "utf8");
    const model = /model name\s*:\s*(.*)/.exec(cpuinfo);
    return {
        cpu: model ? model[1].trim() : os.cpus()[0].model,
        cores: os.cpus().length,
        memory_gib: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
        os: `${os.type()} ${os.release()}`,
        loadavg_at_start: os.loadavg().map((x) => Math.round(x * 100) / 100),
    };
}

function versions() {
    const script = "import json, platform, ipykernel, jupyter_client, zmq, tornado\n" +
        "print(json.dumps({'python': platform.python_version(), 'ipykernel': ipykernel.__version__, " +
        "'jupyter_client': jupyter_client.__version__, 'pyzmq': zmq.__version__, 'tornado': tornado.version}))";
    let py = {};
    try {
        py = JSON.parse(execFileSync(PYTHON, ["-c", script], { encoding: "utf8" }));
    } catch (err) {
        py = { error: String(err.message || err) };
    }
    let commit = null;
    try {
        commit = execFileSync("git", ["-C", ROOT, "rev-parse", "--short=12", "HEAD"], { encoding: "utf8" }).trim();
        const dirty = execFileSync("git", ["-C", ROOT, "status", "--porcelain", "--", "kernelexec", "nodered-node/lib", "nodered-node/nodes"], { encoding: "utf8" }).trim();
        if (dirty) {
            commit += "+dirty";
        }
    } catch (err) {
        // not a git checkout
    }
    return Object.assign({ node: process.version, node_red: RED.version(), kernelexec_commit: commit }, py);
}

// -- channels: send a message into a subject's flow, get it back with its timestamps -----------

class Channel {
    constructor(name) {
        this.name = name;
        this.pending = new Map();
        this.nextSeq = 1;
        this.counts = { sent: 0, ok: 0, error: 0, lost: 0, unexpected: 0 };
        this.errors = [];
        this.source = null;
    }

    attach() {
        this.source = RED.nodes.getNode(`src-${this.name}`);
        const sink = RED.nodes.getNode(`sink-${this.name}`);
        if (!this.source || !sink) {
            throw new Error(`flow of ${this.name} is not running`);
        }
        sink.handler = (msg, t1) => this.arrive(msg, t1);
    }

    send(msg) {
        const seq = this.nextSeq++;
        msg._seq = seq;
        return new Promise((resolve) => {
            this.counts.sent += 1;
            this.pending.set(seq, { resolve, t0: now() });
            this.source.push(msg);
        });
    }

    arrive(msg, t1) {
        const entry = this.pending.get(msg._seq);
        if (!entry) {
            this.counts.unexpected += 1;
            return;
        }
        this.pending.delete(msg._seq);
        if (msg.error) {
            this.counts.error += 1;
            if (this.errors.length < 5) {
                this.errors.push(String(msg.error.message || JSON.stringify(msg.error)).slice(0, 500));
            }
        } else {
            this.counts.ok += 1;
        }
        entry.resolve({ t0: entry.t0, t1, ms: ms(t1 - entry.t0), msg, error: msg.error || null });
    }

    /** Declare messages waiting longer than LOST_AFTER_MS lost (checked once a second). */
    sweep() {
        const limit = now() - BigInt(LOST_AFTER_MS) * 1000000n;
        for (const [seq, entry] of this.pending) {
            if (entry.t0 < limit) {
                this.pending.delete(seq);
                this.counts.lost += 1;
                entry.resolve({ t0: entry.t0, t1: null, ms: null, msg: null, error: "lost", lost: true });
            }
        }
    }
}

// -- flows ---------------------------------------------------------------------------------------

function subjectFlow(name, nodeDef, y) {
    const sub = Object.assign({ id: `sub-${name}`, z: TAB, name, x: 300, y, wires: [[`sink-${name}`]] }, nodeDef);
    return [
        { id: `src-${name}`, type: "bench-source", z: TAB, name: `source ${name}`, x: 100, y, wires: [[sub.id]] },
        sub,
        { id: `sink-${name}`, type: "bench-sink", z: TAB, name: `sink ${name}`, x: 500, y, wires: [] },
        { id: `catch-${name}`, type: "catch", z: TAB, name: `catch ${name}`, scope: [sub.id], uncaught: false, x: 300, y: y + 40, wires: [[`sink-${name}`]] },
    ];
}

function buildFlows(names, extra = {}) {
    const flows = [{ id: TAB, type: "tab", label: "bench" }];
    const order = Object.keys(SUBJECTS);
    for (const name of names) {
        flows.push(...subjectFlow(name, SUBJECTS[name].node, 40 + 100 * order.indexOf(name)));
    }
    for (const [name, nodeDef] of Object.entries(extra)) {
        flows.push(...subjectFlow(name, nodeDef, 1000));
    }
    return flows;
}

/** Deploy (changed nodes only) and wait until every node of the new flows runs. */
/** Deploy (changed nodes only) and wait until Node-RED has started the new flows: a node kept
 * by id may still be the old instance when setFlows resolves, and a RED.stop() racing the
 * pending start would leave the new instance running. */
async function deploy(flows) {
    const wanted = flows.filter((n) => n.type !== "tab").map((n) => n.id);
    let timer = null;
    let onStarted = null;
    const started = new Promise((resolve, reject) => {
        onStarted = () => wanted.every((id) => RED.nodes.getNode(id)) && resolve();
        RED.events.on("flows:started", onStarted);
        timer = setTimeout(() => reject(new Error("deploy did not start the flows within 20 s")), 20000);
    });
    try {
        await RED.nodes.setFlows(flows, "nodes");
        await started;
    } finally {
        clearTimeout(timer);
        RED.events.removeListener("flows:started", onStarted);
    }
}

// -- workloads -------------------------------------------------------------------------------------

function smallMsg(i) {
    return { payload: { n: i, text: "hello", values: [1, 2, 3] }, topic: "bench" };
}

async function latencyRun(channel, count) {
    const samples = [];
    for (let i = 0; i < count; i++) {
        const r = await channel.send(smallMsg(i));
        if (!r.error) {
            samples.push(r.ms);
        }
    }
    return samples;
}

async function burstRun(channel, count) {
    const started = now();
    const promises = [];
    for (let i = 0; i < count; i++) {
        promises.push(channel.send(smallMsg(i)));
    }
    const results = await Promise.all(promises);
    const arrived = results.filter((r) => r.t1 !== null);
    const last = arrived.reduce((a, r) => (r.t1 > a ? r.t1 : a), started);
    const seconds = Number(last - started) / 1e9;
    const ok = results.filter((r) => !r.error).length;
    const latencies = results.filter((r) => !r.error).map((r) => r.ms);
    return { n: count, ok, seconds, msgs_per_s: ok / seconds, latency_ms: summary(latencies) };
}

/** Keep `window` messages in flight until `total` came back. */
function pump(channel, total, window) {
    return new Promise((resolve) => {
        let sent = 0;
        let back = 0;
        let failed = 0;
        const next = () => {
            if (sent >= total) {
                return;
            }
            sent += 1;
            channel.send(smallMsg(sent)).then((r) => {
                back += 1;
                failed += r.error ? 1 : 0;
                if (back === total) {
                    resolve({ total, failed });
                } else {
                    next();
                }
            });
        };
        for (let i = 0; i < Math.min(window, total); i++) {
            next();
        }
    });
}

const blobCache = new Map();
function blobOf(mib) {
    if (!blobCache.has(mib)) {
        const data = crypto.randomBytes(mib * MIB);
        blobCache.set(mib, { data, crc: zlib.crc32(data) });
    }
    return blobCache.get(mib);
}

async function blobRun(channel, mib) {
    const blob = blobOf(mib);
    const r = await channel.send({ payload: blob.data, topic: "blob" });
    if (r.error) {
        return { ok: false, error: String(r.error.message || r.error) };
    }
    const out = r.msg.payload;
    const intact = Buffer.isBuffer(out) && out.length === blob.data.length && zlib.crc32(out) === blob.crc;
    if (!intact) {
        channel.counts.ok -= 1;
        channel.counts.error += 1;
        channel.errors.push(`blob ${mib} MiB came back altered (${Buffer.isBuffer(out) ? out.length + " bytes" : typeof out})`);
    }
    return { ok: intact, ms: r.ms, mib_per_s: intact ? (2 * mib) / (r.ms / 1000) : null };
}

function rotate(list, by) {
    const k = by % list.length;
    return list.slice(k).concat(list.slice(0, k));
}

// -- the benchmark ---------------------------------------------------------------------------------

class Bench {
    constructor(args) {
        this.args = args;
        this.cfg = args.smoke ? SMOKE : FULL;
        this.names = args.subjects;
        this.kxNames = this.names.filter((n) => SUBJECTS[n].kx);
        this.channels = {};
        this.result = {
            meta: {
                started: new Date().toISOString(), smoke: args.smoke,
                machine: machine(), versions: versions(), config: this.cfg,
            },
            subjects: Object.fromEntries(this.names.map((n) => [n, SUBJECTS[n].label])),
            latency: {}, burst: {}, blobs: {}, cold: {}, startup: {}, memory: {},
            accounting: {}, errors: {}, checks: {},
        };
        this.userDir = fs.mkdtempSync(path.join(os.tmpdir(), "kernelexec-bench-"));
        this.server = null;
        this.sweeper = null;
        this.startupSerial = 0;
        this.shmBefore = new Set(shmFiles());
    }

    channel(name) {
        if (!this.channels[name]) {
            this.channels[name] = new Channel(name);
        }
        return this.channels[name];
    }

    async startRed() {
        fs.writeFileSync(path.join(this.userDir, "flows.json"), "[]");
        this.server = http.createServer();
        RED.init(this.server, {
            userDir: this.userDir,
            flowFile: "flows.json",
            credentialSecret: "kernelexec-bench",
            httpAdminRoot: false,
            httpNodeRoot: false,
            nodesDir: [path.join(__dirname, "nodes"), PKG],
            logging: { console: { level: process.env.BENCH_LOG_LEVEL || "warn", metrics: false, audit: false } },
            editorTheme: { tours: false },
            externalModules: { autoInstall: false, palette: { allowInstall: false } },
        });
        await RED.start();
        if (this.kxNames.length && !RED.nodes.getType("kernelexec")) {
            throw new Error(`the kernelexec node did not load from ${PKG}`);
        }
    }

    currentNames() {
        return Object.keys(this.channels);
    }

    async deployNames(names, extra = {}) {
        await deploy(buildFlows(names, extra));
        for (const name of names.concat(Object.keys(extra))) {
            this.channel(name).attach();
        }
    }

    async warmup(names) {
        for (const name of names) {
            const count = SUBJECTS[name] && SUBJECTS[name].cold ? Math.max(3, this.cfg.warmup / 20) : this.cfg.warmup;
            const first = await this.channel(name).send(smallMsg(0));
            if (first.error) {
                throw new Error(`${name}: first message failed: ${first.error.message || first.error}`);
            }
            await latencyRun(this.channel(name), count);
            await blobRun(this.channel(name), 1);
        }
    }

    /** Deploy to first answer: a kernelexec node with 4 workers and setup `import json`
     * (or, with `floor`, a new floor node: one plain Python process over a pipe). */
    async startupOnce(base, floor = false) {
        this.startupSerial += 1;
        const name = `startup${this.startupSerial}`;
        const node = floor
            ? Object.assign({}, SUBJECTS.floor.node, { name })
            : Object.assign({}, SUBJECTS.hot4.node, { initialize: `import json  # ${name}` });
        const t0 = now();
        await deploy(buildFlows(base, { [name]: node }));
        const channel = this.channel(name);
        channel.attach();
        const r = await channel.send(smallMsg(0));
        const seconds = Number(now() - t0) / 1e9;
        return { name, seconds, error: r.error ? String(r.error.message || r.error) : null };
    }

    /** Deploy to first answer with the bridge's start included: the first in this Node-RED,
     * then (full runs) again after the last kernelexec node was removed and its bridge has
     * exited. One sample per full run swung by ±0.05 s; the median of these is the figure.
     * The floor's startup is measured beside each, in the same state of Node-RED: a floor node
     * spawned from the small Node-RED of the run's start took 25-35 ms, from the one of the
     * run's end (after the other workloads) 45-55 ms. */
    async firstDeploys(base) {
        const runs = [];
        const floors = [];
        for (let r = 0; r < this.cfg.firstDeployReps; r++) {
            log(`startup: first deploy ${r + 1}/${this.cfg.firstDeployReps} (bridge start included)`);
            runs.push(await this.startupOnce(base));
            await deploy(buildFlows(base));   // the kernelexec node goes, then its bridge
            await this.bridgeGone();
            floors.push(await this.startupOnce(base, true));   // goes with the next deploy
        }
        const ok = runs.filter((x) => !x.error);
        this.result.startup.first_deploy_runs_s = runs.map((x) => x.seconds);
        this.result.startup.first_deploy_s = ok.length ? median(ok.map((x) => x.seconds)) : null;
        this.result.startup.first_error = runs.map((x) => x.error).find(Boolean) || null;
        this.result.startup.first_floor_s = floors.map((x) => x.seconds);
        this.result.startup.first_floor_p50_s = median(floors.filter((x) => !x.error).map((x) => x.seconds));
        return runs[runs.length - 1];
    }

    /** Wait until this runtime's bridge (and so its template and kernels) has exited. */
    async bridgeGone() {
        for (let i = 0; i < 400 && kernelexecProcesses().bridge; i++) {
            await sleep(25);
        }
        if (kernelexecProcesses().bridge) {
            throw new Error("the bridge did not exit after its last node was removed");
        }
    }

    /** Remove a startup node and wait until its kernels are gone (`baseline`: the number of
     * kernels before it was deployed; some of its kernels may still be starting when its first
     * answer came, so counting them now would not do). */
    async removeStartup(base, name, baseline) {
        await deploy(buildFlows(base));
        delete this.channels[name];
        for (let i = 0; i < 200; i++) {
            if (kernelexecProcesses().kernels.length <= baseline) {
                return;
            }
            await sleep(50);
        }
    }

    async run() {
        const base = this.names.filter((n) => !SUBJECTS[n].kx);
        log(`Node-RED ${RED.version()}, subjects: ${this.names.join(", ")}${this.args.smoke ? " (smoke)" : ""}`);
        await this.startRed();
        this.sweeper = setInterval(() => Object.values(this.channels).forEach((c) => c.sweep()), 1000);
        await this.deployNames(base);
        if (this.kxNames.length) {
            const first = await this.firstDeploys(base);
            await this.deployNames(this.names, { [first.name]: Object.assign({}, SUBJECTS.hot4.node, { initialize: `import json  # ${first.name}` }) });
            await this.warmup(this.kxNames);
            await this.deployNames(this.names);
            delete this.channels[first.name];
        }
        await this.warmup(base);
        const want = this.args.workloads;
        if (want.has("latency")) {
            await this.latency();
        }
        if (want.has("burst")) {
            await this.burst();
        }
        if (want.has("blobs")) {
            await this.blobs();
        }
        if (want.has("cold") && this.names.includes("cold")) {
            await this.coldPerSecond();
        }
        if (want.has("startup") && this.kxNames.length) {
            await this.startup();
        }
        if (want.has("idle")) {
            await this.idleGaps();
        }
        if (want.has("memory") && this.names.includes("hot1")) {
            await this.memory();
        }
        this.account();
    }

    async latency() {
        const cfg = this.cfg;
        const samples = Object.fromEntries(this.names.map((n) => [n, []]));
        const rounds = Object.fromEntries(this.names.map((n) => [n, []]));
        const cpu = Object.fromEntries(this.names.map((n) => [n, []]));
        for (let r = 0; r < cfg.latencyRounds; r++) {
            for (const name of rotate(this.names, r)) {
                const count = Math.ceil((SUBJECTS[name].cold ? cfg.coldLatency : cfg.latency) / cfg.latencyRounds);
                const before = cpuSnapshot();
                const got = await latencyRun(this.channel(name), count);
                cpu[name].push(cpuPerMessage(before, cpuSnapshot(), count));
                samples[name].push(...got);
                rounds[name].push(median(got));
            }
            log(`latency round ${r + 1}/${cfg.latencyRounds}: ` + this.names.map((n) => `${n} ${rounds[n][r]?.toFixed(3)} ms`).join(", "));
        }
        for (const name of this.names) {
            const perRound = { round_p50: rounds[name], cpu_us_per_msg: medianEach(cpu[name]), cpu_rounds: cpu[name] };
            this.result.latency[name] = Object.assign(summary(samples[name]), perRound);
        }
        if (this.names.includes("cold")) {
            this.result.cold.back_to_back = this.result.latency.cold;
        }
    }

    async burst() {
        const cfg = this.cfg;
        const runs = Object.fromEntries(this.names.map((n) => [n, []]));
        for (let r = 0; r < cfg.burstRounds; r++) {
            for (const name of rotate(this.names, r)) {
                const count = SUBJECTS[name].cold ? cfg.coldBurst : cfg.burst;
                const before = cpuSnapshot();
                const run = await burstRun(this.channel(name), count);
                run.cpu_us_per_msg = cpuPerMessage(before, cpuSnapshot(), count);
                runs[name].push(run);
                await sleep(200);
            }
            log(`burst round ${r + 1}/${cfg.burstRounds}: ` + this.names.map((n) => `${n} ${Math.round(runs[n][r].msgs_per_s)}/s`).join(", "));
        }
        for (const name of this.names) {
            const rates = runs[name].map((x) => x.msgs_per_s);
            this.result.burst[name] = { n: runs[name][0].n, msgs_per_s: median(rates), rounds: runs[name] };
        }
    }

    async blobs() {
        const cfg = this.cfg;
        for (const mib of cfg.blobSizes) {
            const runs = Object.fromEntries(this.names.map((n) => [n, []]));
            for (let r = 0; r < cfg.blobReps[mib]; r++) {
                for (const name of rotate(this.names, r)) {
                    runs[name].push(await blobRun(this.channel(name), mib));
                }
            }
            for (const name of this.names) {
                const good = runs[name].filter((x) => x.ok);
                this.result.blobs[name] = this.result.blobs[name] || {};
                this.result.blobs[name][mib] = {
                    reps: runs[name].length, intact: good.length,
                    mib_per_s: good.length ? median(good.map((x) => x.mib_per_s)) : null,
                    ms: good.length ? median(good.map((x) => x.ms)) : null,
                    errors: runs[name].filter((x) => !x.ok).map((x) => x.error || "altered"),
                };
            }
            log(`blobs ${mib} MiB: ` + this.names.map((n) => `${n} ${Math.round(this.result.blobs[n][mib].mib_per_s || 0)} MiB/s`).join(", "));
        }
    }

    /** Cold at 1 message per second; a hot1 message half a second later for comparison. */
    async coldPerSecond() {
        const cold = [];
        const hot = [];
        const hasHot = this.names.includes("hot1");
        for (let i = 0; i < this.cfg.perSecond; i++) {
            const t = Date.now();
            const r = await this.channel("cold").send(smallMsg(i));
            if (!r.error) {
                cold.push(r.ms);
            }
            await sleep(Math.max(0, 500 - (Date.now() - t)));
            if (hasHot) {
                const h = await this.channel("hot1").send(smallMsg(i));
                if (!h.error) {
                    hot.push(h.ms);
                }
            }
            await sleep(Math.max(0, 1000 - (Date.now() - t)));
        }
        this.result.cold.per_second = summary(cold);
        this.result.cold.hot_per_second = summary(hot);
        log(`cold at 1/s: p50 ${this.result.cold.per_second.p50?.toFixed(2)} ms (hot1 at 1/s: ${this.result.cold.hot_per_second.p50?.toFixed(2)} ms)`);
    }

    async startup() {
        const runs = [];
        const baseline = kernelexecProcesses().kernels.length;
        for (let r = 0; r < this.cfg.startupReps; r++) {
            const one = await this.startupOnce(this.names);
            runs.push(one);
            await this.removeStartup(this.names, one.name, baseline);
        }
        this.result.startup.redeploy_s = runs.map((x) => x.seconds);
        this.result.startup.redeploy_errors = runs.map((x) => x.error).filter(Boolean);
        this.result.startup.p50_s = median(runs.filter((x) => !x.error).map((x) => x.seconds));
        log(`startup: first deploy ${this.result.startup.first_deploy_s?.toFixed(2)} s, redeploy ${runs.map((x) => x.seconds.toFixed(2)).join(", ")} s`);
        if (this.names.includes("floor")) {
            await this.floorStartup();
        }
    }

    /** The floor's startup, measured the same way (deploy of a new node to its first answer):
     * the unit of the startup targets. */
    async floorStartup() {
        const runs = [];
        for (let r = 0; r < Math.max(3, this.cfg.startupReps); r++) {
            const one = await this.startupOnce(this.names, true);
            runs.push(one);
            await deploy(buildFlows(this.names));
            delete this.channels[one.name];
        }
        this.result.startup.floor_s = runs.map((x) => x.seconds);
        this.result.startup.floor_p50_s = median(runs.filter((x) => !x.error).map((x) => x.seconds));
        log(`startup: floor (new node to first answer) ${runs.map((x) => x.seconds.toFixed(3)).join(", ")} s`);
    }

    /** Latency of a message sent after the subject sat idle for a while (gaps interleaved). */
    async idleGaps() {
        const out = {};
        const reps = this.args.smoke ? 2 : 8;
        const names = this.names.filter((n) => ["floor", "hot1", "cold"].includes(n));
        for (const name of names) {
            out[name] = Object.fromEntries(IDLE_GAPS_MS.map((g) => [g, []]));
        }
        for (let r = 0; r < reps; r++) {
            for (const gap of rotate(IDLE_GAPS_MS, r)) {
                for (const name of rotate(names, r)) {
                    await sleep(gap);
                    const res = await this.channel(name).send(smallMsg(r));
                    if (!res.error) {
                        out[name][gap].push(res.ms);
                    }
                }
            }
        }
        this.result.idle = {};
        for (const name of names) {
            this.result.idle[name] = Object.fromEntries(IDLE_GAPS_MS.map((g) => [g, summary(out[name][g])]));
            log(`idle ${name}: ` + IDLE_GAPS_MS.map((g) => `${g} ms -> p50 ${this.result.idle[name][g].p50?.toFixed(2)}`).join(", "));
        }
    }

    /** RSS of the bridge and of hot1's kernel before/after many messages through hot1. */
    async memory() {
        const channel = this.channel("hot1");
        const cfg = this.cfg;
        const cpuBefore = new Map(kernelexecProcesses().kernels.map((k) => [k.pid, k.cpu]));
        await pump(channel, cfg.memoryWarmup, cfg.memoryWindow);
        const procs = kernelexecProcesses();
        const busiest = procs.kernels.map((k) => ({ pid: k.pid, used: k.cpu - (cpuBefore.get(k.pid) ?? k.cpu) }))
            .sort((a, b) => b.used - a.used)[0];
        if (!procs.bridge || !busiest) {
            this.result.memory = { error: "bridge or kernel process not found" };
            return;
        }
        const heap = () => {
            if (typeof global.gc !== "function") {
                return null; // run node with --expose-gc (bench/run.sh does) for this figure
            }
            global.gc();
            return process.memoryUsage().heapUsed / MIB;
        };
        const rss = () => ({
            node_heap_mib: heap(),
            bridge_mib: rssMiB(procs.bridge.pid),
            kernel_mib: rssMiB(busiest.pid),
            all_kernels_mib: procs.kernels.map((k) => rssMiB(k.pid)),
            node_red_mib: process.memoryUsage().rss / MIB,
        });
        const before = rss();
        const t0 = now();
        const done = await pump(channel, cfg.memory, cfg.memoryWindow);
        const seconds = Number(now() - t0) / 1e9;
        await sleep(500);
        const after = rss();
        this.result.memory = {
            messages: cfg.memory, failed: done.failed, seconds, msgs_per_s: cfg.memory / seconds,
            bridge_pid: procs.bridge.pid, kernel_pid: busiest.pid, before, after,
            kernel_growth_mib: after.kernel_mib - before.kernel_mib,
            bridge_growth_mib: after.bridge_mib - before.bridge_mib,
        };
        log(`memory: ${cfg.memory} msgs in ${seconds.toFixed(1)} s; kernel ${before.kernel_mib.toFixed(1)} -> ${after.kernel_mib.toFixed(1)} MiB, bridge ${before.bridge_mib.toFixed(1)} -> ${after.bridge_mib.toFixed(1)} MiB`);
    }

    account() {
        for (const [name, channel] of Object.entries(this.channels)) {
            channel.sweep();
            this.result.accounting[name] = Object.assign({ pending: channel.pending.size }, channel.counts);
            if (channel.errors.length) {
                this.result.errors[name] = channel.errors;
            }
        }
    }

    async stop() {
        clearInterval(this.sweeper);
        const procs = kernelexecProcesses().all.map((p) => p.pid);
        try {
            let timer = null;
            const limit = new Promise((resolve, reject) => {
                timer = setTimeout(() => reject(new Error("RED.stop() did not finish within 30 s")), 30000);
            });
            await Promise.race([RED.stop(), limit]).finally(() => clearTimeout(timer));
        } catch (err) {
            log(`RED.stop failed: ${err.message}`);
        }
        let left = [];
        const deadline = Date.now() + 30000; // a loaded machine: the bridge stops its pools first
        while (Date.now() < deadline) {
            left = kernelexecProcesses().all.filter((p) => procs.includes(p.pid));
            if (!left.length) {
                break;
            }
            await sleep(50);
        }
        this.result.checks.processes_left_after_stop = left.map((p) => `${p.pid} ${p.cmd.slice(0, 120)}`);
        for (const p of left) {
            try {
                process.kill(p.pid, "SIGKILL");
            } catch (err) {
                // already gone
            }
        }
        this.result.checks.shm_files_left = shmLeftovers(this.shmBefore);
        fs.rmSync(this.userDir, { recursive: true, force: true });
        if (this.server) {
            this.server.close();
        }
    }

    verdict() {
        const problems = [];
        for (const [name, c] of Object.entries(this.result.accounting)) {
            if (c.sent !== c.ok + c.error + c.lost + c.pending) {
                problems.push(`${name}: ${c.sent} sent but ${c.ok + c.error + c.lost} accounted for`);
            }
            if (c.lost || c.pending) {
                problems.push(`${name}: ${c.lost} lost, ${c.pending} pending`);
            }
            if (c.error) {
                problems.push(`${name}: ${c.error} errors (${(this.result.errors[name] || []).join(" | ")})`);
            }
            if (c.unexpected) {
                problems.push(`${name}: ${c.unexpected} unexpected (duplicate) messages`);
            }
        }
        if (this.result.checks.processes_left_after_stop.length) {
            problems.push(`processes left after RED.stop(): ${this.result.checks.processes_left_after_stop.join("; ")}`);
        }
        if (this.result.checks.shm_files_left.length) {
            problems.push(`/dev/shm files left: ${this.result.checks.shm_files_left.join(", ")}`);
        }
        this.result.checks.problems = problems;
        return problems;
    }
}

async function main() {
    const args = parseArgs(process.argv.slice(2));
    const bench = new Bench(args);
    let failure = null;
    const onSignal = () => {
        log("interrupted: stopping Node-RED");
        bench.stop().finally(() => process.exit(130));
    };
    process.once("SIGINT", onSignal);
    process.once("SIGTERM", onSignal);
    try {
        await bench.run();
    } catch (err) {
        failure = err;
        log(`FAILED: ${err.stack || err}`);
        bench.account();
        bench.result.failure = String(err.stack || err);
    }
    await bench.stop();
    bench.result.meta.finished = new Date().toISOString();
    bench.result.meta.machine.loadavg_at_end = os.loadavg().map((x) => Math.round(x * 100) / 100);
    const problems = bench.verdict();
    fs.mkdirSync(path.dirname(args.out), { recursive: true });
    fs.writeFileSync(args.out, JSON.stringify(bench.result, null, 2) + "\n");
    log(`wrote ${path.relative(process.cwd(), args.out)}`);
    for (const [name, c] of Object.entries(bench.result.accounting)) {
        log(`  ${name}: sent ${c.sent}, ok ${c.ok}, error ${c.error}, lost ${c.lost}`);
    }
    problems.forEach((p) => log(`PROBLEM: ${p}`));
    process.exit(failure || problems.length ? 1 : 0);
}

main();

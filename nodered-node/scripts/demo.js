#!/usr/bin/env node
// Start a real Node-RED on http://127.0.0.1:1880 with this package installed and every example
// flow loaded, one tab each. Used by the repository's scripts/demo and by test/editor_spec.js.
//
//   node scripts/demo.js [--port 1880] [--user-dir DIR] [--reset] [--empty]
//
// The user directory (default: <repo>/.node-red-demo) gets node_modules/@kernelexec/
// node-red-kernelexec -> this package (a symlink) and, when it has none yet (or with --reset),
// a flows.json made from examples/*.json (--empty: no flows). The Python comes from KERNELEXEC_PYTHON (else python3).
"use strict";
const fs = require("fs");
const http = require("http");
const path = require("path");

const PACKAGE_DIR = path.join(__dirname, "..");
const PACKAGE_NAME = require("../package.json").name;
const EXAMPLES_DIR = path.join(PACKAGE_DIR, "examples");

/** Every example as one tab: [{id, type: "tab", label}, ...nodes with z]. */
function exampleFlows() {
    const flows = [];
    const files = fs.readdirSync(EXAMPLES_DIR).filter((f) => f.endsWith(".json")).sort();
    files.forEach((file, index) => {
        const tabId = "kxdemo-tab-" + String(index + 1).padStart(2, "0");
        flows.push({ id: tabId, type: "tab", label: file.replace(/\.json$/, ""), disabled: false, info: "" });
        for (const node of JSON.parse(fs.readFileSync(path.join(EXAMPLES_DIR, file), "utf8"))) {
            flows.push(node.type === "kernelexec-env" ? node : Object.assign({}, node, { z: tabId }));
        }
    });
    return flows;
}

/** Make `userDir` a Node-RED user directory with this package installed (symlink). */
function prepareUserDir(userDir, options) {
    const link = path.join(userDir, "node_modules", ...PACKAGE_NAME.split("/"));
    fs.mkdirSync(path.dirname(link), { recursive: true });
    let current = null;
    try {
        current = fs.readlinkSync(link);
    } catch (ignored) {
        // no link yet
    }
    if (current !== PACKAGE_DIR) {
        fs.rmSync(link, { recursive: true, force: true });
        fs.symlinkSync(PACKAGE_DIR, link, "dir");
    }
    const pkg = path.join(userDir, "package.json");
    if (!fs.existsSync(pkg)) {
        fs.writeFileSync(pkg, JSON.stringify({ name: "node-red-project", private: true, dependencies: { [PACKAGE_NAME]: "file:" + PACKAGE_DIR } }, null, 2));
    }
    const flowFile = path.join(userDir, "flows.json");
    if (options.flows) {
        fs.writeFileSync(flowFile, JSON.stringify(options.flows, null, 2));
    } else if (options.reset || !fs.existsSync(flowFile)) {
        fs.writeFileSync(flowFile, JSON.stringify(exampleFlows(), null, 2));
    }
}

/**
 * Start Node-RED in this process. Resolves with {url, stop()}.
 * options: {userDir, port (0 = any), flows (replace flows.json), reset, logLevel}
 */
async function startNodeRed(options) {
    // express is Node-RED's own dependency: resolve it from there, not as one of ours.
    // KERNELEXEC_NODE_RED=5: the node-red-5 devDependency (Node-RED 5.0.x), as the tests use it
    const runtime = process.env.KERNELEXEC_NODE_RED === "5" ? "node-red-5" : "node-red";
    const express = require(require.resolve("express", { paths: [path.dirname(require.resolve(runtime))] }));
    const RED = require(runtime);
    prepareUserDir(options.userDir, options);
    const app = express();
    const server = http.createServer(app);
    const settings = {
        userDir: options.userDir,
        flowFile: "flows.json",
        credentialSecret: "kernelexec-demo",
        httpAdminRoot: "/",
        httpNodeRoot: "/",
        uiHost: "127.0.0.1",
        functionGlobalContext: {},
        logging: { console: { level: options.logLevel || "info", metrics: false, audit: false } },
        editorTheme: { tours: false, projects: { enabled: false }, codeEditor: { lib: "monaco" } },
        telemetry: { enabled: false },
        diagnostics: { enabled: false },
        externalModules: { palette: { allowInstall: false } },
    };
    RED.init(server, settings);
    app.use(settings.httpAdminRoot, RED.httpAdmin);
    app.use(settings.httpNodeRoot, RED.httpNode);
    await new Promise((resolve, reject) => {
        server.once("error", reject);
        server.listen(options.port === undefined ? 1880 : options.port, "127.0.0.1", resolve);
    });
    await RED.start();
    const url = `http://127.0.0.1:${server.address().port}/`;
    let stopping = null;
    const stop = () => {
        stopping = stopping || RED.stop().then(() => new Promise((resolve) => {
            server.closeAllConnections();
            server.close(() => resolve());
        }));
        return stopping;
    };
    return { url, RED, server, stop };
}

function parseArgs(argv) {
    const args = { port: 1880, userDir: path.join(PACKAGE_DIR, "..", ".node-red-demo"), reset: false };
    for (let i = 0; i < argv.length; i++) {
        if (argv[i] === "--port") {
            args.port = Number(argv[++i]);
        } else if (argv[i] === "--user-dir") {
            args.userDir = path.resolve(argv[++i]);
        } else if (argv[i] === "--reset") {
            args.reset = true;
        } else if (argv[i] === "--empty") {
            args.flows = [];
        } else {
            throw new Error(`unknown argument ${argv[i]} (known: --port N, --user-dir DIR, --reset, --empty)`);
        }
    }
    return args;
}

async function main() {
    const args = parseArgs(process.argv.slice(2));
    const nodeRed = await startNodeRed(args);
    nodeRed.RED.log.info(`kernelexec demo: open ${nodeRed.url} (user dir ${args.userDir}); Ctrl-C stops`);
    const shutdown = () => {
        nodeRed.stop().then(() => process.exit(0), () => process.exit(1));
    };
    process.once("SIGINT", shutdown);
    process.once("SIGTERM", shutdown);
}

if (require.main === module) {
    main().catch((err) => {
        process.stderr.write(`kernelexec demo: ${err.stack || err}\n`);
        process.exit(1);
    });
}

module.exports = { startNodeRed, exampleFlows, prepareUserDir };

// Node-RED entry point: registers the `kernelexec` node (python in the function category) and
// its `kernelexec-env` config node (which Python, managed environment, existing bridge, gateway).
"use strict";
const bridges = require("../lib/bridge");
const i18n = require("../lib/i18n");
const nodeops = require("../lib/nodeops");
const protocol = require("../lib/protocol");
const pythonSetup = require("../lib/python_setup");
const editorApi = require("../lib/editor_api");
const { Runner } = require("../lib/runner");

const FIELDS = protocol.CONFIG_FIELDS;

function integer(value, name) {
    const field = FIELDS[name];
    const n = parseInt(value, 10);
    return Number.isFinite(n) ? n : field.default;
}

function seconds(value) {
    const n = Number(value);
    return Number.isFinite(n) && n > 0 ? n : 0;
}

/**
 * The node's properties (named like the function node's) as a protocol pool configuration.
 * A node without a timeout property gets settings.js functionTimeout (seconds), as a new
 * function node does; a timeout of 0 stays "no limit".
 */
function poolConfig(n, envNode, settings) {
    const timeout = n.timeout === undefined || n.timeout === "" ? settings && settings.functionTimeout : n.timeout;
    return {
        name: n.name || "",
        code: typeof n.func === "string" ? n.func : FIELDS.code.default,
        setup: n.initialize || "",
        stop: n.finalize || "",
        outputs: integer(n.outputs, "outputs"),
        mode: n.mode === "cold" ? "cold" : "hot",
        workers: integer(n.workers, "workers"),
        timeout: seconds(timeout),
        queue_limit: integer(n.queueLimit, "queue_limit"),
        keep_order: n.keepOrder === true || n.keepOrder === "true",
        message_path: n.messagePath === "jupyter" ? "jupyter" : "lane",
        env: envNode ? envNode.envConfig() : {},
        notebook: typeof n.notebook === "string" ? n.notebook.trim() : "",
    };
}

module.exports = function (RED) {
    i18n.init(RED);
    nodeops.init(RED);
    bridges.setLogger(RED.log);
    pythonSetup.configure({ userDir: RED.settings.userDir, log: RED.log });
    editorApi.register(RED);

    function KernelexecEnvNode(n) {
        RED.nodes.createNode(this, n);
        const creds = this.credentials || {};
        this.name = n.name;
        this.python = (n.python || "").trim();
        this.url = (n.url || "").trim();

        /** Which bridge serves the nodes using this environment. */
        this.bridgeOptions = () => (this.url ? { url: this.url, token: creds.token || "" } : { python: this.python });

        /**
         * config.env of the configure frame (EnvConfig in kernelexec/config.py). `python` is not
         * in it: that interpreter runs this environment's bridge, and a bridge's kernels use its
         * own interpreter (or a managed environment built from `requirements`).
         */
        this.envConfig = () => {
            const env = {};
            const put = (key, value) => {
                if (value !== undefined && value !== null && value !== "") {
                    env[key] = value;
                }
            };
            put("requirements", (n.requirements || "").trim());
            put("memory_limit", (n.memoryLimit || "").trim());
            const cpu = Number(n.cpuLimit);
            put("cpu_limit", n.cpuLimit !== "" && Number.isFinite(cpu) && cpu > 0 ? cpu : null);
            if (n.network === false || n.network === "false") {
                env.network = false;
            }
            put("user", (n.user || "").trim());
            put("gateway_url", (n.gatewayUrl || "").trim());
            put("gateway_token", creds.gatewayToken || "");
            return env;
        };
    }
    RED.nodes.registerType("kernelexec-env", KernelexecEnvNode, {
        credentials: {
            token: { type: "password" },
            gatewayToken: { type: "password" },
        },
    });

    function KernelexecNode(n) {
        RED.nodes.createNode(this, n);
        const node = this;
        const envNode = n.env ? RED.nodes.getNode(n.env) : null;
        if (n.env && !envNode) {
            node.warn(i18n.t("kernelexec.warn.missingEnv", { id: n.env }));
        }
        const bridge = envNode ? envNode.bridgeOptions() : {};
        if (!bridge.url && !bridge.python) {
            bridge.python = RED.settings.kernelexecPython;   // settings.js; else KERNELEXEC_PYTHON, else python3
        }
        const runner = new Runner(node, poolConfig(n, envNode, RED.settings), {
            bridge,
            stdoutToMsg: n.stdoutToMsg === true || n.stdoutToMsg === "true",
            cloneMessage: RED.util.cloneMessage,   // what a Catch node will do to a failed message
        });
        node.on("input", (msg, send, done) => runner.input(msg, send, done));
        node.on("close", (removed, done) => {
            runner.close(removed).then(() => done(), (err) => {
                node.error(err);
                done();
            });
        });
        runner.start();
    }
    RED.nodes.registerType("kernelexec", KernelexecNode, {
        settings: {
            kernelexecPython: { value: "", exportable: false },
        },
    });
};

module.exports.poolConfig = poolConfig;

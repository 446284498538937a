// What the Python code asks of its Node-RED node besides context (context_request frames with
// op "env" or "linkcall"): env.get read live, as the function node's env.get reads it, and
// node.linkcall, as Node-RED 5's function node does it (a `link in` ... `link out` in return
// mode, awaited). Needs the RED object: init(RED) from nodes/kernelexec.js.
"use strict";
const crypto = require("crypto");
const codec = require("./codec");
const { t } = require("./i18n");

const LINKCALL_TIMEOUT_MS = 5000;   // the function node's default
let RED = null;

function init(red) {
    RED = red;
}

// kernelexec's own secrets are never answered, whatever Node-RED's environment holds
const HIDDEN = /^KERNELEXEC_(GATEWAY_)?TOKEN$/;

/**
 * env.get(name): the node's group, flow, global and process environment, NR_* built-ins.
 *
 * A node whose environment runs its code as another user (`user`) runs code that is not
 * trusted with the host: it gets what the flow editor set (group, flow and global env, the
 * NR_* built-ins), never a variable of Node-RED's own process (NODE_RED_CREDENTIAL_SECRET and
 * the like). A flow variable that shadows a process variable with the very same value is
 * then not answered either (docs/security.md).
 */
function envGet(node, name, { sandboxed = false } = {}) {
    if (typeof name !== "string" || HIDDEN.test(name)) {
        return null;
    }
    const value = RED && RED.util && RED.util.getSetting ? RED.util.getSetting(node, name) : process.env[name];
    if (sandboxed && fromProcess(name, value)) {
        return null;
    }
    return codec.encodeInline(value, "env." + name);
}

function fromProcess(name, value) {
    return !name.startsWith("NR_") && Object.prototype.hasOwnProperty.call(process.env, name) && value === process.env[name];
}

/** The `link in` node a link call goes to, by id or by name; Node-RED's errors otherwise. */
function linkTarget(node, target) {
    const nodes = RED.nodes;
    if (nodes.linkcallTargets) {   // Node-RED 5: the registry the function node uses
        return nodes.linkcallTargets.getTargetNode(node, target, !nodes.getNode(target));
    }
    const byId = nodes.getNode(target);
    if (byId && byId.type === "link in") {
        return byId;
    }
    // Node-RED 4.1 keeps its link registry private: the same search over the deployed nodes
    // (this flow first, then every flow; link in nodes inside subflows are not targets)
    const named = [];
    nodes.eachNode((n) => {
        if (n.type === "link in" && (n.name || n.id) === target && nodes.getNode(n.id)) {
            named.push(n);
        }
    });
    const here = named.filter((n) => n.z === node.z);
    const found = here.length === 1 ? here : named;
    if (found.length > 1) {
        throw new Error(`Multiple link-in nodes named '${target}' found`);
    }
    if (found.length === 1) {
        return nodes.getNode(found[0].id);
    }
    throw new Error(`target link-in node '${target || ""}' not found`);
}

/** The link calls of one node in flight: node.returnLinkMessage answers them. */
class LinkCalls {
    constructor(node) {
        this.node = node;
        this.pending = new Map();
        node.returnLinkMessage = (eventId, msg) => this.returned(eventId, msg);
    }

    /** A context_request with op linkcall: resolves with the answer, encoded for Python. */
    async call(frame) {
        const target = frame.key;
        if (typeof target !== "string" || target.trim() === "") {
            throw new Error(t("kernelexec.error.linkcallTarget"));
        }
        const msg = await codec.decodeValue(frame.value, { unlink: false });
        if (typeof msg !== "object" || msg === null || Array.isArray(msg)) {
            throw new Error(t("kernelexec.error.linkcallMsg"));
        }
        const targetNode = linkTarget(this.node, target);
        const timeout = Number(frame.timeout) > 0 ? Number(frame.timeout) * 1000 : LINKCALL_TIMEOUT_MS;
        const id = crypto.randomBytes(14).toString("hex");
        msg._linkSource = Array.isArray(msg._linkSource) ? msg._linkSource : [];
        msg._linkSource.push({ id, node: this.node.id });
        const answer = new Promise((resolve, reject) => {
            const timer = setTimeout(() => this.settle(id, new Error("timeout")), timeout);
            this.pending.set(id, { resolve, reject, timer });
        });
        targetNode.receive(msg);
        return codec.encodeInline(await answer, "the answer of link " + target);
    }

    returned(eventId, msg) {
        if (Array.isArray(msg._linkSource) && msg._linkSource.length === 0) {
            delete msg._linkSource;
        }
        this.settle(eventId, null, msg);
    }

    settle(id, err, msg) {
        const call = this.pending.get(id);
        if (call) {
            this.pending.delete(id);
            clearTimeout(call.timer);
            if (err) {
                call.reject(err);
            } else {
                call.resolve(msg);
            }
        }
    }

    /** The node closes: calls still waiting fail with `err`. */
    close(err) {
        for (const id of Array.from(this.pending.keys())) {
            this.settle(id, err);
        }
    }
}

module.exports = { init, envGet, LinkCalls };

// The editor's admin endpoints are guarded by RED.auth.needsPermission: on a Node-RED with
// adminAuth (red.js in its own process, or embedded where red.js refuses the Node.js), nobody
// without a token reaches them, a user with "read" sees environments but can neither Run nor
// complete (both run code) nor rebuild, and an admin runs code.
"use strict";
const assert = require("assert");
const fs = require("fs");
const os = require("os");
const path = require("path");
const bcrypt = require("bcryptjs");
const { request, startNodeRed, NODE_RED_VERSION } = require("./red_process");

const PACKAGE_DIR = path.join(__dirname, "..");
const PACKAGE_NAME = require("../package.json").name;

function settings() {
    const hash = bcrypt.hashSync("secret-pw", 8);
    return `module.exports = {
    uiHost: "127.0.0.1", flowFile: "flows.json", credentialSecret: false,
    adminAuth: { type: "credentials", users: [
        { username: "admin", password: ${JSON.stringify(hash)}, permissions: "*" },
        { username: "viewer", password: ${JSON.stringify(hash)}, permissions: "read" },
    ] },
};
`;
}

async function token(port, username, scope) {
    const body = { client_id: "node-red-admin", grant_type: "password", scope, username, password: "secret-pw" };
    return "Bearer " + JSON.parse(await request(port, "POST", "/auth/token", body)).access_token;
}

async function status(port, method, urlPath, body, auth) {
    try {
        await request(port, method, urlPath, body, auth ? { Authorization: auth } : {});
        return 200;
    } catch (err) {
        if (!err.status) {
            throw err;
        }
        return err.status;
    }
}

describe("editor endpoints need the kernelexec.read / kernelexec.write permissions", function () {
    this.timeout(120000);
    let tmp = null;
    let red = null;

    before(async function () {
        tmp = fs.mkdtempSync(path.join(os.tmpdir(), "kx-auth-"));
        const link = path.join(tmp, "node_modules", ...PACKAGE_NAME.split("/"));
        fs.mkdirSync(path.dirname(link), { recursive: true });
        fs.symlinkSync(PACKAGE_DIR, link, "dir");
        fs.writeFileSync(path.join(tmp, "settings.js"), settings());
        fs.writeFileSync(path.join(tmp, "flows.json"), JSON.stringify([{ id: "authenv00000001", type: "kernelexec-env", python: process.env.KERNELEXEC_PYTHON || "" }]));
        // embedded where Node-RED 5.0's red.js refuses this Node.js: the permissions are the runtime's, not red.js's
        red = startNodeRed(tmp, process.env, { embedded: true });
        await red.wait(/Started flows/, 60000);
        await red.wait(/now running at http:\/\/127\.0\.0\.1:\d+/, 60000);   // printed after, or before, "Started flows"
    });

    after(async function () {
        if (red) {
            await red.stop();
        }
        if (tmp) {
            fs.rmSync(tmp, { recursive: true, force: true });
        }
    });

    it("refuses everyone without the permission, lets read view and write run", async function () {
        const port = Number(/now running at http:\/\/127\.0\.0\.1:(\d+)/.exec(red.output)[1]);
        assert.ok(red.output.includes(`Node-RED version: v${NODE_RED_VERSION}`), "the chosen Node-RED runs: " + NODE_RED_VERSION);
        const run = { func: "return {'payload': msg['payload'] + 1}", msg: { payload: 41 } };
        const complete = { op: "complete", code: "pri", cursor: 3 };
        for (const [method, url, body] of [["POST", "/kernelexec/run", run], ["POST", "/kernelexec/complete", complete],
            ["GET", "/kernelexec/envs/authenv00000001"], ["POST", "/kernelexec/envs/authenv00000001/rebuild", {}]]) {
            assert.strictEqual(await status(port, method, url, body, null), 401, `${method} ${url} without a token`);
        }
        const viewer = await token(port, "viewer", "read");
        assert.strictEqual(await status(port, "GET", "/kernelexec/envs/authenv00000001", undefined, viewer), 200);
        for (const [url, body] of [["/kernelexec/run", run], ["/kernelexec/complete", complete], ["/kernelexec/envs/authenv00000001/rebuild", {}]]) {
            assert.strictEqual(await status(port, "POST", url, body, viewer), 401, `POST ${url} as a read-only user`);
        }
        const admin = await token(port, "admin", "*");
        const answer = JSON.parse(await request(port, "POST", "/kernelexec/run", run, { Authorization: admin }));
        assert.strictEqual(answer.error, null, JSON.stringify(answer.error));
        assert.strictEqual(answer.outputs[0][0].payload, 42);
    });
});

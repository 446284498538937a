// Security claims of docs/security.md on the Node-RED side: credentials of kernelexec-env never
// appear in flow exports, the admin API, logs, error messages or msg; the bridge token the
// node generates is not on the bridge's command line nor in any log or status.
"use strict";
const assert = require("assert");
const fs = require("fs");
const bridges = require("../lib/bridge");
const S = require("./support");

const { helper } = S;
const N = S.nodes;
const GATEWAY_SECRET = "gw-secret-9f8e7d";
const BRIDGE_SECRET = "bridge-secret-1a2b3c";

function everythingLogged() {
    const calls = helper.log().args.map((a) => JSON.stringify(a));
    return calls.join("\n");
}

describe("stress: secrets", function () {
    this.timeout(60000);

    afterEach(async function () {
        await S.unload();
    });

    it("keeps kernelexec-env credentials out of exports, the admin API, logs, errors and msg", async function () {
        const code = "import os\nmsg['payload'] = {'env': dict(os.environ)}\nreturn msg";
        await S.load([N.kernelexecNode, N.catchNode], [
            { id: "tab1", type: "tab" },
            { id: "envLocal", type: "kernelexec-env", name: "local" },
            { id: "envGw", type: "kernelexec-env", name: "gateway", gatewayUrl: "http://127.0.0.1:9" },
            { id: "n1", type: "kernelexec", z: "tab1", env: "envLocal", func: code, outputs: 1, wires: [["out"]] },
            { id: "n2", type: "kernelexec", z: "tab1", env: "envGw", func: "return msg", outputs: 1, wires: [["out"]] },
            { id: "c1", type: "catch", z: "tab1", scope: null, uncaught: false, wires: [["caught"]] },
            { id: "out", type: "helper", z: "tab1" },
            { id: "caught", type: "helper", z: "tab1" },
        ], {
            envLocal: { token: BRIDGE_SECRET, gatewayToken: GATEWAY_SECRET },
            envGw: { gatewayToken: GATEWAY_SECRET },
        });

        // flow export and the editor's view of the credentials
        const exported = JSON.stringify(helper._redNodes.getFlows().flows);
        assert.ok(exported.includes("kernelexec-env") && exported.includes("127.0.0.1:9"));
        assert.ok(!exported.includes(GATEWAY_SECRET), "flow export holds no gateway token");
        assert.ok(!exported.includes(BRIDGE_SECRET), "flow export holds no bridge token");
        // what the editor gets for a password credential: only whether it is set
        const creds = await helper.request().get("/credentials/kernelexec-env/envGw");
        if (creds.status === 200) {
            assert.deepStrictEqual(creds.body, { has_token: false, has_gatewayToken: true });
        }

        // the kernel's environment and the messages
        const got = S.messages(helper.getNode("out"), 1, 30000);
        helper.getNode("n1").receive({ payload: 1 });
        const [msg] = await got;
        const env = msg.payload.env;
        assert.ok(Object.keys(env).length > 3, "the code did see an environment");
        const text = JSON.stringify(msg);
        assert.ok(!text.includes(GATEWAY_SECRET) && !text.includes(BRIDGE_SECRET), "no credential in msg");
        const [bridge] = bridges.active().filter((b) => b.child);
        assert.ok(!text.includes(bridge.token), "the generated bridge token is not in the kernel's environment");
        assert.ok(!("KERNELEXEC_TOKEN" in env));

        // a gateway that cannot be reached: a clear error, without the token
        const caught = S.messages(helper.getNode("caught"), 1, 40000);
        helper.getNode("n2").receive({ payload: 2 });
        const [err] = await caught;
        assert.ok(!JSON.stringify(err.error).includes(GATEWAY_SECRET), "the error does not show the gateway token");

        // the generated bridge token is on no command line, in no log, in no status
        const cmdline = fs.readFileSync(`/proc/${bridge.child.pid}/cmdline`, "utf8");
        assert.ok(!cmdline.includes(bridge.token), "the token is not visible in ps");
        const logged = everythingLogged();
        for (const secret of [bridge.token, GATEWAY_SECRET, BRIDGE_SECRET]) {
            assert.ok(!logged.includes(secret), "a secret reached the Node-RED log");
        }
        const statuses = [];
        for (const id of ["n1", "n2"]) {
            helper.getNode(id).status.args.forEach((a) => statuses.push(JSON.stringify(a)));
        }
        assert.ok(!statuses.join().includes(bridge.token) && !statuses.join().includes(GATEWAY_SECRET));
    });

    it("writes input blob files readable by the owner only, even under umask 000", async function () {
        const codec = require("../lib/codec");
        const os = require("os");
        const path = require("path");
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kx-umask-"));
        const old = process.umask(0);
        try {
            const { files } = await codec.encodeMessage({ payload: Buffer.alloc(1 << 20) }, { blobDir: dir, reqId: "umask" });
            assert.strictEqual(files.length, 1);
            assert.strictEqual(fs.statSync(files[0]).mode & 0o777, 0o600);
            await codec.removeFiles(files);
            // O_EXCL: a symlink planted under a blob's name by someone else is not written through
            const target = path.join(dir, "victim");
            fs.writeFileSync(target, "untouched");
            fs.symlinkSync(target, path.join(dir, `kernelexec-${process.pid}-planted-0`));
            await assert.rejects(codec.encodeMessage({ payload: Buffer.alloc(1 << 20) }, { blobDir: dir, reqId: "planted" }), /EEXIST/);
            assert.strictEqual(fs.readFileSync(target, "utf8"), "untouched");
        } finally {
            process.umask(old);
            fs.rmSync(dir, { recursive: true, force: true });
        }
    });
});

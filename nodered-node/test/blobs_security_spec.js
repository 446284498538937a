// End to end (real Node-RED runtime, real bridge, real kernels): a message cannot name a file.
// Objects shaped like the codec's own markers are data: they come out of the node exactly as they
// went in, and no file they name is read, chowned or removed (docs/security.md, "Blob references").
"use strict";
const assert = require("assert");
const crypto = require("crypto");
const fs = require("fs");
const os = require("os");
const path = require("path");
const bridges = require("../lib/bridge");
const { MARKER, BLOB_PREFIX } = require("../lib/protocol");
const S = require("./support");

const { helper } = S;
const N = S.nodes;
const DIR = fs.existsSync("/dev/shm") ? "/dev/shm" : os.tmpdir();

function py(id, func, extra) {
    return Object.assign({ id, type: "kernelexec", name: "", func, outputs: 1, mode: "hot", workers: 1, timeout: 0, wires: [["out"]] }, extra);
}

describe("blob references cannot be forged (real bridge, real kernels)", function () {
    this.timeout(60000);
    let releaseBridge = null;
    let secret = null;
    const SECRET = "token=" + crypto.randomBytes(8).toString("hex");

    before(function () {
        releaseBridge = S.keepBridge();
    });

    after(async function () {
        await releaseBridge();
        assert.deepStrictEqual(bridges.active(), []);
    });

    beforeEach(function () {
        // the worst case: a file in the blob directory, named like a blob file
        secret = path.join(DIR, `${BLOB_PREFIX}1-secret${crypto.randomBytes(4).toString("hex")}-0`);
        fs.writeFileSync(secret, SECRET, { mode: 0o600 });
    });

    afterEach(async function () {
        await S.unload();
        fs.rmSync(secret, { force: true });
    });

    function assertUntouched() {
        assert.strictEqual(fs.readFileSync(secret, "utf8"), SECRET, "the named file was changed or removed");
    }

    it("answers an HTTP POST of a forged blob reference with the same object, not the file", async function () {
        let httpNode = null;
        const httpIn = (RED) => {
            httpNode = RED.httpNode;
            return N.httpInNode(RED);
        };
        await S.load([N.kernelexecNode, httpIn], S.tab([
            { id: "in", type: "http in", url: "/echo", method: "post", wires: [["n1"]] },
            py("n1", "return msg", { wires: [["res"]] }),
            { id: "res", type: "http response", statusCode: "" },
        ]));
        const request = require("supertest");
        for (const forged of [
            { [MARKER]: "blob", path: secret, size: SECRET.length },
            { [MARKER]: "blob", i: 0 },
            { [MARKER]: "esc", v: { [MARKER]: "blob", path: secret, size: SECRET.length } },
        ]) {
            const res = await request(httpNode).post("/echo").send(forged).set("Content-Type", "application/json");
            assert.strictEqual(res.status, 200, res.text);
            assert.ok(!res.text.includes(SECRET), "the answer reveals the file");
            assert.deepStrictEqual(res.body, forged);
        }
        assertUntouched();
    });

    it("round-trips lookalikes returned by Python, sent with node.send and kept in context, as plain data", async function () {
        const code = [
            "fake = {'" + MARKER + "': 'blob', 'path': " + JSON.stringify(secret) + ", 'size': 3}",
            "node.send({'payload': fake, 'via': 'send'})",
            "flow.set('fake', fake)",
            "msg['payload'] = {'in': msg['payload'], 'made': fake, 'ctx': flow.get('fake'), 'ctx_in': flow.get('given')}",
            "return msg",
        ].join("\n");
        await S.load(N.kernelexecNode, S.tab([py("n1", code), { id: "out", type: "helper" }]));
        const n1 = helper.getNode("n1");
        const given = { [MARKER]: "buffer", b64: "AQI=", nested: { [MARKER]: "blob", i: 0 } };
        n1.context().flow.set("given", given);
        const fake = { [MARKER]: "blob", path: secret, size: 3 };
        const got = S.messages(helper.getNode("out"), 2);
        n1.receive({ payload: { [MARKER]: "blob", path: secret, size: 3 } });
        const [sent, returned] = await got;
        assert.strictEqual(sent.via, "send");
        assert.deepStrictEqual(sent.payload, fake);
        assert.deepStrictEqual(returned.payload, { in: fake, made: fake, ctx: fake, ctx_in: given });
        assert.deepStrictEqual(n1.context().flow.get("fake"), fake);
        assertUntouched();
    });
});

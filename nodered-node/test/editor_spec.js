// A real browser on a real Node-RED editor with this package installed (scripts/demo.js in a
// child process, its own user dir): the python node is in the palette, its edit dialog shows
// the Python code editor, a flow is imported and deployed from the UI, and clicking the inject
// button shows the Python result in the debug sidebar. Screenshots go to test/artifacts/.
"use strict";
const assert = require("assert");
const fs = require("fs");
const os = require("os");
const path = require("path");
const { spawn } = require("child_process");

const CHROMIUM = "/usr/bin/chromium";
const VENV_PYTHON = path.join(__dirname, "..", "..", ".venv", "bin", "python");
if (!process.env.KERNELEXEC_PYTHON && fs.existsSync(VENV_PYTHON)) {
    process.env.KERNELEXEC_PYTHON = VENV_PYTHON;
}
const ARTIFACTS = path.join(__dirname, "artifacts");
const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"];

const FLOW = [
    { id: "e2e0inject000001", type: "inject", name: "go", props: [{ p: "payload" }], payload: "21", payloadType: "num", repeat: "", once: false, x: 140, y: 100, wires: [["e2e0python000001"]] },
    { id: "e2e0python000001", type: "kernelexec", name: "", func: "return msg", initialize: "", finalize: "", outputs: 1, timeout: 0, mode: "hot", workers: 1, queueLimit: 1000, keepOrder: false, stdoutToMsg: false, env: "", x: 320, y: 100, wires: [["e2e0debug0000001"]] },
    { id: "e2e0debug0000001", type: "debug", name: "", active: true, tosidebar: true, console: false, complete: "payload", targetType: "msg", x: 500, y: 100, wires: [] },
    { id: "e2e0env000000001", type: "kernelexec-env", name: "test venv", python: process.env.KERNELEXEC_PYTHON || "" },
];
// scripts/demo.js starts the same runtime: KERNELEXEC_NODE_RED=5 is Node-RED 5.0.x.
const RUNTIME_DIR = path.dirname(require.resolve((process.env.KERNELEXEC_NODE_RED === "5" ? "node-red-5" : "node-red") + "/package.json"));
const CODE = "import sys\nmsg['payload'] = f\"python {sys.version_info[0]} says {msg['payload'] * 2}\"\nreturn msg";

/** Start scripts/demo.js on a free port with an empty flow; resolves {url, child}. */
function startEditor(userDir) {
    return new Promise((resolve, reject) => {
        const child = spawn(process.execPath, [path.join(__dirname, "..", "scripts", "demo.js"), "--port", "0", "--user-dir", userDir, "--empty"], {
            env: process.env, stdio: ["ignore", "pipe", "pipe"],
        });
        let output = "";
        const timer = setTimeout(() => reject(new Error("Node-RED did not start:\n" + output)), 30000);
        const onData = (chunk) => {
            output += chunk;
            const m = /open (http:\/\/127\.0\.0\.1:\d+\/)/.exec(output);
            if (m) {
                clearTimeout(timer);
                resolve({ url: m[1], child, output: () => output });
            }
        };
        child.stdout.on("data", onData);
        child.stderr.on("data", onData);
        child.on("exit", (code) => reject(new Error(`Node-RED exited (${code}):\n${output}`)));
    });
}

/**
 * Whether the runtime supports this Node.js (its package's engines range, the one it checks at
 * start). Node-RED 5.0 wants Node.js >= 22.9; on an older one it runs but the editor shows a fixed
 * error notification "Using an unsupported version of Node.js" over the top of the workspace.
 */
function nodeSupported() {
    const semver = require(require.resolve("semver", { paths: [RUNTIME_DIR] }));
    return semver.satisfies(process.version, require(path.join(RUNTIME_DIR, "package.json")).engines.node);
}

function stopEditor(child) {
    return new Promise((resolve) => {
        if (child.exitCode !== null) {
            resolve();
            return;
        }
        child.once("exit", resolve);
        child.kill("SIGTERM");
        setTimeout(() => child.kill("SIGKILL"), 20000).unref();
    });
}

describe("editor in a real browser", function () {
    this.timeout(120000);
    let editor = null;
    let browser = null;
    let page = null;
    let userDir = null;
    const dialogErrors = [];   // what the editor caught from our nodes' edit callbacks

    before(async function () {
        if (!fs.existsSync(CHROMIUM)) {
            this.skip();   // the real-browser test needs Debian's chromium at /usr/bin/chromium
        }
        fs.mkdirSync(ARTIFACTS, { recursive: true });
        userDir = fs.mkdtempSync(path.join(os.tmpdir(), "kx-editor-"));
        editor = await startEditor(userDir);
        const { chromium } = require("playwright-core");
        browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS });
        page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
        page.on("dialog", (d) => d.dismiss());
        page.on("console", (m) => {
            // the editor catches an exception of a node's edit callback and logs "oneditsave <id> <type> <error>"
            if (/^onedit[a-z]+ \S+ kernelexec(-env)? /.test(m.text())) {
                dialogErrors.push(m.text());
            }
        });
        await page.goto(editor.url);
        await page.waitForSelector("#red-ui-palette .red-ui-palette-node", { timeout: 30000 });
        if (!nodeSupported()) {
            // The runtime's own (retained) warning, not ours: check it says what we expect, then
            // hide it as its persistent notifications are hidden, or it covers the trays' buttons.
            const warning = page.locator(".red-ui-notification-error", { hasText: "unsupported version of Node.js" });
            await warning.waitFor({ timeout: 30000 });
            await warning.evaluate((n) => n.hideNotification());
            await warning.waitFor({ state: "hidden", timeout: 10000 });
        }
    });

    afterEach(async function () {
        if (this.currentTest.state === "failed" && page) {
            await page.screenshot({ path: path.join(ARTIFACTS, "failure.png") });
            fs.writeFileSync(path.join(ARTIFACTS, "node-red.log"), editor.output());
        }
    });

    after(async function () {
        if (browser) {
            await browser.close();
        }
        if (editor) {
            await stopEditor(editor.child);
        }
        if (userDir) {
            fs.rmSync(userDir, { recursive: true, force: true });
        }
    });

    it("lists the python node in the function category of the palette", async function () {
        const item = page.locator('#red-ui-palette-function .red-ui-palette-node[data-palette-type="kernelexec"]');
        await item.waitFor({ timeout: 30000 });
        assert.strictEqual((await item.locator(".red-ui-palette-label").innerText()).trim(), "python");
    });

    it("imports and deploys a flow, edits the code in the Python editor, shows the result in the debug sidebar", async function () {
        // import from the UI (menu > Import, paste, Import), then drop the nodes on the canvas
        await page.click("#red-ui-header-button-sidemenu");
        await page.click("#menu-item-import");
        await page.waitForSelector("#red-ui-clipboard-dialog-import-text");
        await page.fill("#red-ui-clipboard-dialog-import-text", JSON.stringify(FLOW));
        await page.press("#red-ui-clipboard-dialog-import-text", "End");   // the dialog validates on keyup
        await page.click("#red-ui-clipboard-dialog-ok");
        await page.mouse.move(300, 250);
        await page.mouse.click(300, 250);
        const pythonNode = page.locator("#e2e0python000001");
        await pythonNode.waitFor({ timeout: 30000 });

        // the edit dialog: tabs like the function node, and a Monaco editor in Python mode
        await pythonNode.locator(".red-ui-flow-node").dblclick();
        await page.waitForSelector("#node-input-func-editor .monaco-editor", { timeout: 15000 });
        const tabs = await page.locator("#kernelexec-tabs li").allInnerTexts();
        assert.deepStrictEqual(tabs.map((s) => s.trim()), ["Settings", "Setup", "On Message", "On Stop", "Try it"]);
        const language = await page.evaluate(() => {
            const model = monaco.editor.getModels().find((m) => m.getValue() === "return msg");
            return model && model.getLanguageId();
        });
        assert.strictEqual(language, "python");
        await page.evaluate((code) => {
            monaco.editor.getModels().find((m) => m.getValue() === "return msg").setValue(code);
        }, CODE);
        await page.screenshot({ path: path.join(ARTIFACTS, "edit-dialog.png") });
        // the Settings tab holds the function-node-like options with first-time defaults
        await page.click("#red-ui-tab-kernelexec-tab-settings a");
        assert.strictEqual(await page.inputValue("#node-input-outputs"), "1");
        assert.strictEqual(await page.inputValue("#node-input-timeout"), "0");
        assert.strictEqual(await page.inputValue("#node-input-mode"), "hot");
        assert.strictEqual(await page.inputValue("#node-input-workers"), "1");
        await page.screenshot({ path: path.join(ARTIFACTS, "settings-tab.png") });
        // the environment config node's dialog opens (and is cancelled: this flow uses the default)
        await page.click("#node-input-btn-env-add");
        await page.waitForSelector("#node-config-input-python", { state: "visible", timeout: 10000 });
        assert.ok(await page.isVisible("#node-config-input-requirements"));
        assert.strictEqual(await page.getAttribute("#node-config-input-token", "type"), "password");
        await page.waitForTimeout(600);   // let the tray finish sliding in
        await page.screenshot({ path: path.join(ARTIFACTS, "env-dialog.png") });
        await page.click("#node-config-dialog-cancel");
        await page.waitForSelector("#node-config-input-python", { state: "detached", timeout: 10000 });
        await page.click("#node-dialog-ok");
        // saving closed the code editors and forgot their models, as cancelling does
        const noModels = () => Object.keys(window.__kernelexecHelp.models).length === 0;
        await page.waitForFunction(noModels, null, { timeout: 10000 });
        assert.deepStrictEqual(dialogErrors, []);

        // deploy from the header button
        await page.click("#red-ui-header-button-deploy");
        await page.waitForSelector(".red-ui-notification-success", { timeout: 15000 });   // "Successfully deployed"
        // wait until the node's pool is up (its status turns green), then press the inject button
        await page.waitForFunction(() => {
            const status = document.querySelector("#e2e0python000001 .red-ui-flow-node-status-label");
            return status && /busy/.test(status.textContent);
        }, null, { timeout: 60000 });
        // the action, not the sidebar's tab button: Node-RED 5 redesigned the sidebar
        await page.evaluate(() => RED.actions.invoke("core:show-debug-tab"));
        await page.locator("#e2e0inject000001 .red-ui-flow-node-button-button").click();
        const message = page.locator(".red-ui-debug-msg-payload", { hasText: "says 42" });
        await message.first().waitFor({ timeout: 30000 });
        assert.match(await message.first().innerText(), /python 3 says 42/);
        await page.screenshot({ path: path.join(ARTIFACTS, "editor.png") });
    });

    it("shows the node's help (options and Python API) in the help sidebar", async function () {
        await page.locator("#e2e0python000001 .red-ui-flow-node").click();
        await page.evaluate(() => RED.actions.invoke("core:show-help-tab"));
        const help = page.locator(".red-ui-help", { hasText: "Runs Python code on each message" });
        await help.first().waitFor({ timeout: 30000 });
        const text = await help.first().innerText();
        for (const part of ["node.send(msg)", "global_", "Script style", "cold"]) {
            assert.ok(text.includes(part), `help mentions ${part}`);
        }
        await page.screenshot({ path: path.join(ARTIFACTS, "help.png") });
    });

    // ---- the dialog runs the code, completes names, shows environments -----------------------

    /** Open the python node's dialog; `models` finds its Monaco models by editor id. */
    async function openPythonDialog() {
        await page.locator("#e2e0python000001 .red-ui-flow-node").dblclick();
        await page.waitForSelector("#node-input-func-editor .monaco-editor", { timeout: 15000 });
    }

    function setModel(editorId, value) {
        return page.evaluate(([id, text]) => {
            const element = document.querySelector("#" + id + " .monaco-editor");
            const editor = monaco.editor.getEditors()
                .find((e) => e.getContainerDomNode().contains(element) || e.getDomNode() === element);
            editor.getModel().setValue(text);
        }, [editorId, value]);
    }

    async function closeDialog() {
        await page.click("#node-dialog-cancel");
        await page.waitForSelector("#node-input-func-editor", { state: "detached", timeout: 10000 });
    }

    /** Click a tab of the dialog until its content shows (a click during the tray's layout can be lost). */
    async function showTab(name) {
        for (let attempt = 0; ; attempt++) {
            await page.click(`#red-ui-tab-kernelexec-tab-${name} a`);
            try {
                await page.waitForSelector(`#kernelexec-tab-${name}`, { state: "visible", timeout: 2000 });
                return;
            } catch (err) {
                if (attempt === 4) {
                    throw err;
                }
            }
        }
    }

    async function run() {
        await showTab("try");
        await page.click("#kernelexec-run");
        await page.waitForFunction(() => !document.querySelector("#kernelexec-run").disabled && document.querySelector("#kernelexec-run-result").children.length > 0, null, { timeout: 90000 });
    }

    it("runs the dialog's code on the sample message with the Run button, without deploying", async function () {
        await openPythonDialog();
        await setModel("node-input-setup-editor", "factor = 3");
        await setModel("node-input-func-editor", "print('got', msg['payload'])\nnode.warn('careful')\nreturn {'payload': msg['payload'] * factor}");
        await showTab("try");
        await page.waitForSelector("#node-input-sample-editor .monaco-editor", { timeout: 10000 });
        await setModel("node-input-sample-editor", '{"payload": 14}');
        await run();
        const port = await page.locator(".kernelexec-run-port[data-port='1'] pre").innerText();
        assert.deepStrictEqual(JSON.parse(port).payload, 42);
        assert.match(await page.locator(".kernelexec-run-log").innerText(), /careful/);
        assert.match(await page.locator(".kernelexec-run-stdout").innerText(), /got 14/);
        await page.screenshot({ path: path.join(ARTIFACTS, "run.png") });

        // break the code: the error names the user's line
        await showTab("body");
        await setModel("node-input-func-editor", "x = 1\ny = x / 0\nreturn msg");
        await run();
        const error = page.locator(".kernelexec-run-error");
        assert.match(await error.innerText(), /ZeroDivisionError: division by zero \(line 2\)/);
        assert.strictEqual(await error.getAttribute("data-line"), "2");
        await page.screenshot({ path: path.join(ARTIFACTS, "run-error.png") });
        await closeDialog();
    });

    it("completes np. with numpy's names when the setup imports numpy, and the pick lands in the code", async function () {
        await openPythonDialog();
        await setModel("node-input-setup-editor", "import numpy as np");
        await showTab("body");
        await setModel("node-input-func-editor", "");
        await page.click("#node-input-func-editor .monaco-editor .view-lines");
        await page.keyboard.type("x = np.arang");
        const row = page.locator(".suggest-widget .monaco-list-row", { hasText: "arange" });
        await row.first().waitFor({ timeout: 90000 });
        await page.screenshot({ path: path.join(ARTIFACTS, "completion.png") });
        await page.keyboard.press("Enter");
        const value = await page.evaluate(() => {
            const element = document.querySelector("#node-input-func-editor .monaco-editor");
            return monaco.editor.getEditors()
                .find((e) => e.getContainerDomNode().contains(element) || e.getDomNode() === element)
                .getModel().getValue();
        });
        assert.strictEqual(value, "x = np.arange");
        await closeDialog();
    });

    it("shows an environment's state and installed packages in its dialog", async function () {
        await page.evaluate(() => RED.editor.editConfig("", "kernelexec-env", "e2e0env000000001"));
        await page.waitForSelector("#kernelexec-env-state[data-state='ready']", { timeout: 30000 });
        const row = page.locator("#kernelexec-env-packages tr", { hasText: "ipykernel" });
        await row.first().waitFor({ timeout: 90000 });
        assert.match(await row.first().innerText(), /ipykernel\s+\d+\.\d+/);
        const kernelexec = await page.locator("#kernelexec-env-packages tr", { hasText: /^kernelexec/ }).first().innerText();
        assert.match(kernelexec, new RegExp(require("../package.json").version.replace(/\./g, "\\.")));
        await page.screenshot({ path: path.join(ARTIFACTS, "env-packages.png") });
        assert.deepStrictEqual(await page.locator(".red-ui-notification-error:visible").allInnerTexts(), []);
        await page.click("#node-config-dialog-cancel");
        await page.waitForSelector("#node-config-input-python", { state: "detached", timeout: 10000 });
        assert.deepStrictEqual(dialogErrors, []);
    });
});

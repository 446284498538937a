#!/usr/bin/env node
// Builds the kernelexec wheel into python/ (run by `prepack`): the npm package carries its
// Python half, which lib/python_setup.js installs into the environment it builds. Both halves
// have one version: pyproject.toml's, which package.json must repeat (this script refuses
// otherwise; test/palette_spec.js checks it too). Outside the repository it does nothing.
"use strict";
const fs = require("fs");
const path = require("path");
const { spawnSync } = require("child_process");

const REPO = path.join(__dirname, "..", "..");
const OUT = path.join(__dirname, "..", "python");
const VERSION = require("../package.json").version;

/** The [project] version of pyproject.toml. */
function pyprojectVersion(text) {
    const project = /^\[project\]\s*$([\s\S]*?)(?=^\[|(?![\s\S]))/m.exec(text);
    const m = project && /^version\s*=\s*"([^"]+)"/m.exec(project[1]);
    return m ? m[1] : null;
}

/** The commands that can build a wheel here, best first. */
function builders() {
    const python = process.env.KERNELEXEC_PYTHON || "python3";
    return [
        ["uv", ["build", "--wheel", "--out-dir", OUT, REPO]],
        [python, ["-m", "uv", "build", "--wheel", "--out-dir", OUT, REPO]],
        [python, ["-m", "pip", "wheel", "--no-deps", "--wheel-dir", OUT, REPO]],
    ];
}

function main() {
    const pyproject = path.join(REPO, "pyproject.toml");
    if (!fs.existsSync(pyproject)) {
        return 0;
    }
    const version = pyprojectVersion(fs.readFileSync(pyproject, "utf8"));
    if (version !== VERSION) {
        process.stderr.write(`build-wheel: pyproject.toml says version ${version}, package.json ${VERSION}: make them equal (pyproject.toml is the source)\n`);
        return 1;
    }
    // npm lists the files to pack before prepack runs: python/ stays, only its wheels change
    fs.mkdirSync(OUT, { recursive: true });
    for (const old of fs.readdirSync(OUT).filter((f) => f.endsWith(".whl"))) {
        fs.rmSync(path.join(OUT, old));
    }
    for (const [cmd, args] of builders()) {
        const res = spawnSync(cmd, args, { cwd: REPO, stdio: ["ignore", "pipe", "pipe"], encoding: "utf8" });
        const wheel = fs.readdirSync(OUT).find((f) => f.startsWith(`kernelexec-${VERSION}-`) && f.endsWith(".whl"));
        if (res.status === 0 && wheel) {
            fs.rmSync(path.join(OUT, ".gitignore"), { force: true });   // uv writes one ("*"): npm would skip the wheel
            process.stdout.write(`build-wheel: ${path.join(OUT, wheel)}\n`);
            return 0;
        }
    }
    process.stderr.write("build-wheel: no wheel built: install uv or pip for KERNELEXEC_PYTHON / python3\n");
    return 1;
}

if (require.main === module) {
    process.exitCode = main();
}
module.exports = { pyprojectVersion };

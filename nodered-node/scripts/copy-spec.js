#!/usr/bin/env node
// Copies the protocol spec from the Python package (the single source) into this package.
// Run by `prepack` and `pretest`. Outside the repository (no ../kernelexec) it does nothing.
"use strict";
const fs = require("fs");
const path = require("path");

const source = path.join(__dirname, "..", "..", "kernelexec", "protocol", "spec.json");
const target = path.join(__dirname, "..", "spec.json");

if (!fs.existsSync(source)) {
    process.exit(0);
}
const text = fs.readFileSync(source);
if (!fs.existsSync(target) || !fs.readFileSync(target).equals(text)) {
    fs.writeFileSync(target, text);
    process.stdout.write("copied " + source + " -> " + target + "\n");
}

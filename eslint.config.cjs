// ESLint (flat config) for every JavaScript file of the repository: the Node-RED package
// (nodered-node/) and the benchmark (bench/). Run: `npm run lint` in nodered-node/ (or
// nodered-node/node_modules/.bin/eslint from here); ./scripts/test runs it.
// eslint:recommended plus the rules the code already follows.
"use strict";
const path = require("path");
const { createRequire } = require("module");

const fromPackage = createRequire(path.join(__dirname, "nodered-node", "package.json"));
const js = fromPackage("@eslint/js");
const globals = fromPackage("globals");

const style = {
    "no-var": "error",
    "prefer-const": "error",
    eqeqeq: ["error", "always", { null: "ignore" }],
    strict: ["error", "global"],
    curly: ["error", "all"],
    "no-unused-vars": ["error", { args: "none", caughtErrors: "none" }],
    "max-len": ["error", { code: 120, ignoreUrls: true, ignoreStrings: true, ignoreTemplateLiterals: true, ignoreRegExpLiterals: true }],
};

module.exports = [
    { ignores: ["**/node_modules/**", "nodered-node/python/**", "build/**", ".venv/**", "bench/results/**"] },
    js.configs.recommended,
    {
        files: ["**/*.js", "**/*.cjs"],
        languageOptions: { ecmaVersion: 2022, sourceType: "commonjs", globals: { ...globals.node } },
        rules: style,
    },
    {
        files: ["nodered-node/test/**/*.js"],
        languageOptions: { globals: { ...globals.node, ...globals.mocha } },
    },
    {
        // functions that playwright runs in the editor's page
        files: ["nodered-node/test/editor_spec.js"],
        languageOptions: { globals: { ...globals.node, ...globals.mocha, ...globals.browser, RED: "readonly", monaco: "readonly" } },
    },
];

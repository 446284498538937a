// Node-RED embedded in its own process (the way scripts/demo.js runs it): for a spec that needs
// Node-RED as a separate server where red.js itself will not run (Node-RED 5.0's red.js exits on
// a Node.js below 22.9; embedded it only warns). Usage: node embedded_red.js <runtime> <userDir>
// (runtime: the package, node-red or node-red-5; settings from <userDir>/settings.js).
// Prints red.js's "now running at http://127.0.0.1:<port>/" line; stops on SIGINT/SIGTERM.
"use strict";
const http = require("http");
const path = require("path");

async function main(runtime, userDir) {
    const RED = require(runtime);
    const express = require(require.resolve("express", { paths: [path.dirname(require.resolve(runtime))] }));
    const settings = Object.assign({ httpAdminRoot: "/", httpNodeRoot: "/" }, require(path.join(userDir, "settings.js")), { userDir });
    const app = express();
    const server = http.createServer(app);
    RED.init(server, settings);
    app.use(settings.httpAdminRoot, RED.httpAdmin);
    app.use(settings.httpNodeRoot, RED.httpNode);
    await new Promise((resolve, reject) => {
        server.once("error", reject);
        server.listen(0, settings.uiHost || "127.0.0.1", resolve);
    });
    await RED.start();
    process.stdout.write(`Server now running at http://127.0.0.1:${server.address().port}/\n`);
    const stop = () => RED.stop().then(() => {
        server.closeAllConnections();
        server.close(() => process.exit(0));
    });
    process.once("SIGINT", stop);
    process.once("SIGTERM", stop);
}

main(process.argv[2], process.argv[3]).catch((err) => {
    process.stderr.write(`embedded Node-RED failed: ${err.stack || err}\n`);
    process.exit(1);
});

// Benchmark source: the harness calls node.push(msg) to inject a message into the flow.
"use strict";
module.exports = function (RED) {
    function BenchSource(config) {
        RED.nodes.createNode(this, config);
        this.push = (msg) => this.send(msg);
    }
    RED.nodes.registerType("bench-source", BenchSource);
};

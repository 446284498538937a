// Benchmark sink: timestamps each arriving message and hands it to the harness (node.handler).
"use strict";
module.exports = function (RED) {
    function BenchSink(config) {
        RED.nodes.createNode(this, config);
        this.handler = null;
        this.on("input", (msg, send, done) => {
            const t1 = process.hrtime.bigint();
            if (this.handler) {
                this.handler(msg, t1);
            }
            done();
        });
    }
    RED.nodes.registerType("bench-sink", BenchSink);
};

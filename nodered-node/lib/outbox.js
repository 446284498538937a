// The frames a Bridge sends, batched per event-loop turn (protocol 1.1): once the welcome says
// the bridge reads arrays, the frames queued in one tick leave as one message, a JSON array
// (flushed by setImmediate, or at once when BATCH_FRAMES are queued; a lone frame stays an
// object, a big one goes alone): one write per tick instead of one per frame. The Python side
// of the same idea is kernelexec/server/outbox.py.
"use strict";

// Queued frames that make the bridge write at once (the bridge starts on them while the rest of
// a burst is encoded), and the size (JSON characters) of an array or of a frame that goes alone.
// A character is at most 3 UTF-8 bytes: arrays stay far below the protocol's max_frame_bytes.
const BATCH_FRAMES = 256;
const BATCH_CHARS = 1 << 20;

class Outbox {
    /** `write(text)`: send one message on the connection, if it is still open. */
    constructor(write) {
        this.write = write;
        this.batching = false;   // the bridge reads arrays of frames (welcome >= 1.1)
        this.texts = [];         // JSON texts waiting for the end of the tick
        this.chars = 0;
        this.timer = null;
    }

    /** Queue one frame's JSON text (or write it at once when not batching). */
    queue(text) {
        if (!this.batching) {
            this.write(text);
            return;
        }
        if (text.length > BATCH_CHARS) {   // alone, after what was queued before it
            this.flush();
            this.write(text);
            return;
        }
        if (this.chars + text.length + 1 > BATCH_CHARS) {
            this.flush();
        }
        this.texts.push(text);
        this.chars += text.length + 1;
        if (this.texts.length >= BATCH_FRAMES) {
            this.flush();
        } else if (!this.timer) {
            this.timer = setImmediate(() => this.flush());
        }
    }

    /** Write the frames queued in this tick: one message (an array; a lone frame as itself). */
    flush() {
        this.cancelTimer();
        const texts = this.texts;
        if (texts.length === 0) {
            return;
        }
        this.texts = [];
        this.chars = 0;
        this.write(texts.length === 1 ? texts[0] : "[" + texts.join(",") + "]");
    }

    /** Forget what is queued, and write single frames until a welcome says otherwise. */
    drop() {
        this.cancelTimer();
        this.texts = [];
        this.chars = 0;
        this.batching = false;
    }

    cancelTimer() {
        if (this.timer) {
            clearImmediate(this.timer);
            this.timer = null;
        }
    }
}

module.exports = { Outbox, BATCH_FRAMES, BATCH_CHARS };

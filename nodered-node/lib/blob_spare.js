// One blob file a hot pool's runner keeps for its next large Buffer, instead of removing it.
//
// Writing a Buffer into a new file costs the allocation of fresh pages, about four times the
// copy itself on this kind of machine; pages that were just used are warm (docs/performance.md,
// "Blob files"). So when a message's request ends, its runner keeps one of the files it wrote
// for that request (still under the input's name, or under an output name when the kernel
// handed the very bytes back), renamed to a name of its own, and writes the next Buffer into
// it, linked under the new request's blob name.
//
// What is kept: only a file this runner created for the request (its inode is one the runner
// wrote, `inodeOf`), still this user's, mode 0600, one link, at most `maxSize` bytes. Only a
// hot pool's runner keeps one (its kernels run the same node code, and hot mode shares state
// between messages by design); cold mode never does, so a message never lands in a file
// another message's process has had open. Each step by path is checked against the inode it
// was meant for, so a swapped name is never written to or sent. The names it acts on by path
// are names this runner made itself in the blob directory (a rename, or a link that fails
// when the name exists), which is sticky by default (/dev/shm, the temp directory): another
// user cannot swap them, and code of this same user that does only loses its own file.
"use strict";
const fs = require("fs");
const path = require("path");
const { BLOB_PREFIX } = require("./protocol");

const { O_RDWR, O_NOFOLLOW } = fs.constants;
let spareCounter = 0;

/** The identity of a file's inode, as `mine` sets hold it. */
function inodeOf(info) {
    return `${info.dev}:${info.ino}`;
}

/** Whether `file` (not followed) is the inode `id` (inodeOf). */
function names(file, id) {
    try {
        return inodeOf(fs.lstatSync(file)) === id;
    } catch {
        return false;
    }
}

function closeQuietly(fd) {
    try {
        fs.closeSync(fd);
    } catch {
        // already closed
    }
}

class BlobSpare {
    /** `maxSize`: the largest file kept (a bigger one is removed as before). */
    constructor(maxSize) {
        this.maxSize = maxSize;
        this.spare = null;   // {fd, file, id}
        this.closed = false;
    }

    /**
     * Keep `file` (read, or no longer needed) as the spare when its inode is one of `mine` (the
     * files the runner wrote for the request); false: the caller removes it.
     */
    keep(file, mine) {
        if (this.closed || this.spare || !mine || mine.size === 0) {
            return false;
        }
        let fd;
        try {
            fd = fs.openSync(file, O_RDWR | O_NOFOLLOW);
        } catch {
            return false;
        }
        const info = fs.fstatSync(fd);
        const id = inodeOf(info);
        const fits = mine.has(id) && info.isFile() && info.nlink === 1
            && info.uid === process.geteuid() && (info.mode & 0o777) === 0o600 && info.size <= this.maxSize;
        const name = path.join(path.dirname(file), `${BLOB_PREFIX}${process.pid}-spare-${++spareCounter}`);
        try {
            if (!fits) {
                throw new Error("not kept");
            }
            fs.renameSync(file, name);
            if (!names(name, id)) {
                throw new Error("swapped");
            }
        } catch {
            closeQuietly(fd);
            return false;
        }
        this.spare = { fd, file: name, id };
        return true;
    }

    /**
     * Write `buf` into the spare and link it as `file` (link never replaces a file). False when
     * there is no spare in that directory or a step failed: the caller writes the file itself.
     */
    take(file, buf, mine) {
        const spare = this.spare;
        if (!spare || buf.length > this.maxSize || path.dirname(file) !== path.dirname(spare.file)) {
            return false;   // a larger Buffer is written off the event loop, as before
        }
        this.spare = null;
        let sent = false;
        try {
            for (let at = 0; at < buf.length;) {
                at += fs.writeSync(spare.fd, buf, at, buf.length - at, at);
            }
            fs.ftruncateSync(spare.fd, buf.length);
            fs.linkSync(spare.file, file);
            fs.unlinkSync(spare.file);   // before any kernel looks: a blob file has one link
            sent = names(file, spare.id);
            if (!sent) {
                fs.unlinkSync(file);   // our link, to a file planted under the spare's name
            } else if (mine) {
                mine.add(spare.id);
            }
        } catch {
            sent = false;
        }
        if (!sent) {
            fs.unlink(spare.file, () => {});
        }
        closeQuietly(spare.fd);
        return sent;
    }

    /** Remove the spare (the runner is closing). */
    close() {
        this.closed = true;
        const spare = this.spare;
        this.spare = null;
        if (spare) {
            closeQuietly(spare.fd);
            try {
                fs.unlinkSync(spare.file);
            } catch {
                // gone already
            }
        }
    }
}

module.exports = { BlobSpare, inodeOf };

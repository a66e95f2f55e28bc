"""One-line messages for operating-system errors (disk full, read-only, not a folder, …)."""

from __future__ import annotations

import errno

_ADVICE = {
    errno.ENOSPC: "the disk is full; free space (or choose another --out) and rerun the same "
                  "command: training resumes from its last checkpoint, caching from its last "
                  "commit",
    errno.EDQUOT: "the disk quota is exhausted; free space and rerun the same command to resume",
    errno.EROFS: "the file system is read-only; choose a writable output folder (--out)",
    errno.EACCES: "permission denied; choose a folder you can write to (--out) or fix its "
                  "permissions",
    errno.EPERM: "operation not permitted; choose a folder you can write to (--out)",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "the path is a folder where a file was expected; give a file path",
    errno.EEXIST: "the path already exists; choose another",
}


def os_error_message(err: OSError) -> str:
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
    what = err.strerror or str(err)
    advice = _ADVICE.get(err.errno or -1, "check the path and rerun")
    return f"{what}{f' ({where})' if where else ''}: {advice}"

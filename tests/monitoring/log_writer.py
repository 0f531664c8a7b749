"""A child process for the log tests: ``python -m tests.monitoring.log_writer ROOT TAG THREADS ROWS [MODE]``.

MODE ``normal``: THREADS threads each log ROWS predictions (request ids ``TAG-thread-i``), then close.
MODE ``hang``: one thread logs in batches of 50 and flushes each batch, printing ``committed N``; the third
part file's fsync prints ``writing`` and hangs (the temp file is written, not yet renamed) — to be SIGKILLed.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import time

from cryptopredict.monitoring.log import LogStore, PredictionLogger
from tests.monitoring.support import make_prediction


def main() -> None:
    root, tag, threads, rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    mode = sys.argv[5] if len(sys.argv) > 5 else "normal"
    pred = make_prediction()
    if mode == "hang":
        real_fsync = os.fsync
        files = {"n": 0}

        def fsync(fd: int) -> None:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                files["n"] += 1
                if files["n"] == 3:
                    print("writing", flush=True)
                    time.sleep(600)
            real_fsync(fd)

        os.fsync = fsync  # type: ignore[assignment]
        logger = PredictionLogger(LogStore(root), flush_rows=10_000, flush_seconds=600, max_buffer_rows=10_000)
        done = 0
        while True:
            for i in range(50):
                logger.log(pred, 1.0, request_id=f"{tag}-0-{done + i}")
            logger.flush()
            done += 50
            print(f"committed {done}", flush=True)
    logger = PredictionLogger(LogStore(root), flush_rows=37, flush_seconds=0.05)

    def work(t: int) -> None:
        for i in range(rows):
            logger.log(pred, 1.0, request_id=f"{tag}-{t}-{i}")

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    logger.close()
    print("done", flush=True)


if __name__ == "__main__":
    main()

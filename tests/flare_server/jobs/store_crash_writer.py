"""Child process for the crash tests: writes to a job store until it is killed.

Usage: python store_crash_writer.py ROOT ZIP SEED
Prints one line per acknowledged operation, flushed before the next one starts:
``READY``, ``C <job_id> SUBMITTED`` (created), ``S <job_id> <status>`` (status set),
``d <job_id>`` (about to delete), ``D <job_id>`` (deleted).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from flare_server.jobs import TRANSITIONS, JobStore, Submitter, is_finished


def main() -> None:
    root, archive, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    data = archive.read_bytes()
    submitter = Submitter("lead@org_a.com", "org_a", "lead")
    store = JobStore.open(root)
    print("READY", flush=True)
    live = [j.job_id for j in store.list() if not is_finished(j.status)]
    finished = [j.job_id for j in store.list() if is_finished(j.status)]
    while True:
        roll = rng.random()
        if roll < 0.35 or not (live or finished):
            upload = store.begin_upload()
            for i in range(0, len(data), 64 * 1024):
                upload.write(data[i : i + 64 * 1024])
            meta = upload.commit(submitter)
            live.append(meta.job_id)
            print(f"C {meta.job_id} SUBMITTED", flush=True)
        elif roll < 0.9 and live:
            job_id = rng.choice(live)
            current = store.get(job_id).status
            new = rng.choice(sorted(TRANSITIONS[current]))
            store.set_status(job_id, new)
            print(f"S {job_id} {new.value}", flush=True)
            if is_finished(new):
                live.remove(job_id)
                finished.append(job_id)
        elif finished:
            job_id = finished.pop(rng.randrange(len(finished)))
            print(f"d {job_id}", flush=True)  # intent: gone or still there if killed now
            store.delete(job_id)
            print(f"D {job_id}", flush=True)
        else:
            store.update(rng.choice(live), schedule_reason=str(rng.random()))


if __name__ == "__main__":
    main()

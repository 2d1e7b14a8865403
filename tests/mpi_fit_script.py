"""Run under mpiexec by tests/test_distributed.py: train a preset data-parallel and save
rank 0's parameters and logged losses.

argv: out.npy dtype batch_size steps preset seed [bucket_bytes], where seed "rank" gives
each rank its own seed (a job started wrongly: every rank must report the mismatch and
exit 3), and bucket_bytes (default "none": one allreduce) is the Communicator's.
"""

import sys

import numpy as np

from nanoae import presets
from nanoae.distributed import Communicator, RankMismatchError


def main() -> None:
    out, dtype, batch_size, steps, preset, seed = sys.argv[1:7]
    buckets = sys.argv[7] if len(sys.argv) > 7 else "none"
    comm = Communicator(bucket_bytes=None if buckets == "none" else int(buckets))
    x = np.random.default_rng(7).random((300, 784)).astype(dtype)
    model = getattr(presets, preset)(seed=comm.rank if seed == "rank" else int(seed), dtype=dtype)
    try:
        history = model.fit(x, steps=int(steps), batch_size=int(batch_size), log_every=5, comm=comm)
    except RankMismatchError as exc:
        # Into a file, not only stdout: mpiexec ends the job at the first rank's exit and may
        # drop output it has not forwarded yet; the Barrier lets every rank write first.
        with open(out.replace(".npy", f"-rank{comm.rank}.txt"), "w") as report:
            report.write(f"rank {comm.rank}: {exc}\n")
        print(f"rank {comm.rank}: {exc}", flush=True)
        comm.comm.Barrier()
        sys.exit(3)
    if comm.rank == 0:
        np.save(out, model.arena.values)
        np.save(out.replace(".npy", "-loss.npy"), np.asarray(history, dtype=np.float64))


if __name__ == "__main__":
    main()

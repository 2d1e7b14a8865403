"""Run under mpiexec by tests/test_distributed*.py: train a preset data-parallel and save
every rank's parameters (out-rank<r>.npy; rank 0's also as out) and rank 0's logged losses.

argv: out.npy dtype batch_size steps preset seed [bucket_bytes] [start], where seed "rank"
gives each rank its own seed (a job started wrongly: every rank must report the mismatch
and exit 3), bucket_bytes (default "none": one allreduce) is the Communicator's, and start
"restored-apart" first trains each rank alone for PRE_STEPS steps on its own data, with
ranks >= 1 also counting 5 * rank more optimizer updates (Adam's bias correction reads
the count): ranks restored from different parameters and optimizer states at one step.
Preset "adam" is a 784-64-16 autoencoder with Adam (the presets use RMSProp).
"""

import sys

import numpy as np

from nanoae import presets
from nanoae.distributed import Communicator, RankMismatchError

PRE_STEPS = 3


def build(preset: str, seed: int, dtype: str):
    if preset == "adam":
        return presets.autoencoder_from_widths(784, [64, 16], seed=seed, dtype=dtype)
    return getattr(presets, preset)(seed=seed, dtype=dtype)


def restore_apart(model, rank: int, dtype: str) -> None:
    """PRE_STEPS steps alone on this rank's own rows, and 5 * rank more counted updates."""
    own = np.random.default_rng(100 + rank).random((300, 784)).astype(dtype)
    model.fit(own, steps=PRE_STEPS, batch_size=32, log_every=PRE_STEPS)
    model.optimizer.update_count += 5 * rank


def main() -> None:
    out, dtype, batch_size, steps, preset, seed = sys.argv[1:7]
    buckets = sys.argv[7] if len(sys.argv) > 7 else "none"
    start = sys.argv[8] if len(sys.argv) > 8 else "same"
    comm = Communicator(bucket_bytes=None if buckets == "none" else int(buckets))
    x = np.random.default_rng(7).random((300, 784)).astype(dtype)
    model = build(preset, comm.rank if seed == "rank" else int(seed), dtype)
    if start == "restored-apart":
        restore_apart(model, comm.rank, dtype)
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
    # Every rank's: the ranks must end bit-for-bit equal, since parameters are sent only once.
    np.save(out.replace(".npy", f"-rank{comm.rank}.npy"), model.arena.values)
    if comm.rank == 0:
        np.save(out, model.arena.values)
        np.save(out.replace(".npy", "-loss.npy"), np.asarray(history, dtype=np.float64))


if __name__ == "__main__":
    main()

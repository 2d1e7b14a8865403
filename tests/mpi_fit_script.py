"""Run under mpiexec by tests/test_distributed.py: train the tutorial model data-parallel
and save rank 0's parameters. argv: out.npy dtype batch_size steps [seed]."""

import sys

import numpy as np

from nanoae.distributed import Communicator
from nanoae.presets import tutorial


def main() -> None:
    out, dtype, batch_size, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    seed = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    comm = Communicator()
    x = np.random.default_rng(7).random((300, 784)).astype(dtype)
    model = tutorial(seed=seed, dtype=dtype)
    history = model.fit(x, steps=steps, batch_size=batch_size, log_every=5, comm=comm)
    if comm.rank == 0:
        np.save(out, model.arena.values)
        np.save(out.replace(".npy", "-loss.npy"), np.asarray(history, dtype=np.float64))


if __name__ == "__main__":
    main()

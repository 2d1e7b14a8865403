"""Run the throughput benchmark (the same as ``nanoae bench``).

    python benchmarks/run.py --json benchmarks/results/cpu.json --chart benchmarks/results/cpu.png
    python benchmarks/run.py --quick --batch-size 256 --json out.json
"""

import sys

from nanoae.benchmark.runner import main

if __name__ == "__main__":
    sys.exit(main())

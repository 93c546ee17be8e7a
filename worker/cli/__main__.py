"""``python -m worker.cli``: the ``molecule-connect`` command line (the benchmarks start worker processes so)."""

from worker.cli import main

main()

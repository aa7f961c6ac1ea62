"""``python -m benchmarks.fanout``: the benchmark described in :mod:`benchmarks.fanout`."""

from benchmarks.fanout.cli import main

if __name__ == "__main__":
    main()

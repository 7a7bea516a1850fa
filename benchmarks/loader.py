"""Loader benchmark as a script: ``mpirun -n N python benchmarks/loader.py DIR [options]``.

The same as ``twinhpc bench loader`` (options: ``--help``).
"""

import sys

from twinhpc.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", "loader", *sys.argv[1:]]))

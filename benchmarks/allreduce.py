"""All-reduce benchmark as a script: ``mpirun -n N python benchmarks/allreduce.py [options]``.

The same as ``twinhpc bench allreduce`` (options: ``--help``; e.g. ``--max-bytes 256MiB``,
``--json``, ``--results FOLDER``).
"""

import sys

from twinhpc.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", "allreduce", *sys.argv[1:]]))

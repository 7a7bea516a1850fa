"""The quality gates, run by scripts/test.sh before the tests (and by pre-commit, one by one).

Usage: ``python scripts/gates.py [RESULTS.xml]``. Runs each gate from the repository root with
the tools of the running interpreter's environment, prints what a failing gate printed, and
writes one JUnit test case per gate to RESULTS.xml (tests/summary.py adds them to the total).
Exit status 1 when any gate failed.

Gates: ruff's lint and format check (settings in pyproject.toml), mypy --strict on the layers
that hold the formats, the configuration and the MPI front end (twinhpc/comm, twinhpc/config,
twinhpc/io), and import-linter's layering contracts (.importlinter).
"""

from __future__ import annotations

import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: strict typing is enforced on these packages; the rest of twinhpc is checked by the same run
#: only where they import it (follow-imports=silent keeps its messages out)
STRICT = ["twinhpc/comm", "twinhpc/config", "twinhpc/io"]

GATES: dict[str, list[str]] = {
    "ruff check": [str(BIN / "ruff"), "check", "."],
    "ruff format --check": [str(BIN / "ruff"), "format", "--check", "."],
    "mypy --strict (comm, config, io)": [str(BIN / "mypy"), "--strict", "--follow-imports=silent", *STRICT],
    "lint-imports (layers)": [str(BIN / "lint-imports")],
}


def main(argv: list[str]) -> int:
    suite = ET.Element("testsuite", name="gates")
    failed = 0
    for name, cmd in GATES.items():
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        case = ET.SubElement(suite, "testcase", classname="gates", name=name, time=f"{seconds:.2f}")
        ok = proc.returncode == 0
        print(f"  {'ok  ' if ok else 'FAIL'} {name} ({seconds:.1f} s)")
        if not ok:
            failed += 1
            output = (proc.stdout + proc.stderr).strip()
            print("\n".join("       " + line for line in output.splitlines()[-60:]))
            ET.SubElement(case, "failure", message=f"exit status {proc.returncode}").text = output
    suite.set("tests", str(len(GATES)))
    suite.set("failures", str(failed))
    if argv:
        Path(argv[0]).parent.mkdir(parents=True, exist_ok=True)
        ET.ElementTree(suite).write(argv[0], encoding="utf-8", xml_declaration=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Add up the JUnit XML files of one test run and print the closing ``N passed, M failed`` line.

Usage: ``python tests/summary.py RESULTS_DIR LABEL=FILE.xml ...``. A run whose XML file is
missing (the job was killed, e.g. by a timeout) counts as one failure. Exit status 1 if anything
failed, else 0.
"""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def count(path: Path) -> tuple[int, int, int]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    tests = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    return tests - failed - skipped, failed, skipped


def main(argv: list[str]) -> int:
    results = Path(argv[0])
    total = [0, 0, 0]
    print("\n==== twinhpc test summary ====")
    for item in argv[1:]:
        label, _, name = item.partition("=")
        path = results / name
        if path.exists():
            p, f, s = count(path)
            note = ""
        else:
            p, f, s = 0, 1, 0
            note = "  (no results: it failed, was killed or crashed; see its output above)"
        total = [total[0] + p, total[1] + f, total[2] + s]
        print(f"  {label:<28} {p} passed, {f} failed, {s} skipped{note}")
    print(f"TOTAL: {total[0]} passed, {total[1]} failed, {total[2]} skipped")
    return 1 if total[1] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

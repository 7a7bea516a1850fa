"""``twinhpc bench``: placeholder while being written (this session)."""


def add_parser(sub):
    return sub.add_parser("bench", help="(being written)")


def run(args) -> int:
    raise SystemExit("twinhpc bench: not written yet")

"""``twinhpc info``: placeholder while being written (this session)."""


def add_parser(sub):
    return sub.add_parser("info", help="(being written)")


def run(args) -> int:
    raise SystemExit("twinhpc info: not written yet")

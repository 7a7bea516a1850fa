"""``twinhpc inspect``: placeholder while being written (this session)."""


def add_parser(sub):
    return sub.add_parser("inspect", help="(being written)")


def run(args) -> int:
    raise SystemExit("twinhpc inspect: not written yet")

"""``twinhpc verify``: placeholder while being written (this session)."""


def add_parser(sub):
    return sub.add_parser("verify", help="(being written)")


def run(args) -> int:
    raise SystemExit("twinhpc verify: not written yet")

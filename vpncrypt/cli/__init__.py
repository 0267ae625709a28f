"""Command-line entry points: `vpncryptd` (the daemon) and `vpncrypt` (the operator tool)."""

import re
import sys


def fail(prog: str, message: str, status: int = 2):
    """Print one line naming the program and exit non-zero: never a traceback."""
    print(f"{prog}: {message}", file=sys.stderr)
    raise SystemExit(status)


def parse_args(doc: str, argv, version: str, prog: str):
    """docopt with our exit conventions: a usage error is one line + usage and status 2."""
    from docopt import DocoptExit, docopt

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return docopt(doc, argv=argv, version=version)
    except DocoptExit as e:
        text = str(e)
        usage = text[text.find("Usage:"):].strip() if "Usage:" in text else ""
        known = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", doc))
        unknown = [a for a in argv if a.startswith("-") and a.split("=")[0] not in known]
        what = (f"unknown option '{unknown[0]}'" if unknown
                else "invalid arguments: '%s'" % " ".join(argv))
        print(f"{prog}: {what}\n{usage}", file=sys.stderr)
        raise SystemExit(2) from None

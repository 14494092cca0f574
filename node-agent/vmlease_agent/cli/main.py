"""``vmlease``: the command line, mirroring sanlock's (``direct ...``, ``client ...``).

Exit status: 0 on success. On failure one line on stderr names the lease, where it lives, the
cause and the fix, followed by sanlock's error code in brackets; the exit status is that code's
absolute value (243 for IDLIVE -243), capped at 255, or 1 for errors without a sanlock code.
"""

from __future__ import annotations

import argparse
import sys

from vmlease_agent import __version__
from vmlease_agent.cli import client as client_cli
from vmlease_agent.cli import direct
from vmlease_agent.cli import libvirt as libvirt_cli
from vmlease_agent.engine import errors


def exit_status(code: int) -> int:
    return min(abs(code), 255) or 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmlease", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"vmlease {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    direct.add_parser(sub)
    client_cli.add_parser(sub)
    libvirt_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except errors.LeaseError as e:
        print(f"vmlease: {e} [error {e.code}]", file=sys.stderr)
        return exit_status(e.code)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``python -m sma.circuits analyze ...``: the same command as ``sma analyze``."""

from __future__ import annotations

import argparse
import logging
import sys

from sma.circuits.cli import add_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sma.circuits")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

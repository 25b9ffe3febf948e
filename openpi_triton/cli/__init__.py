"""`openpi-triton`: serve, export, check, client, bench.

Every flag of `serve` also reads an environment variable, OPENPI_TRITON_<FLAG> (for example
OPENPI_TRITON_PORT); a flag on the command line wins over the variable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from openpi_triton.cli import bench, lerobot, serve, tools
from openpi_triton.cli.options import CliError

COMMANDS = (serve.register, tools.register_export, tools.register_check, tools.register_client, bench.register,
            lerobot.register_repository_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openpi-triton", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    try:
        args = build_parser().parse_args(argv)
        args.run(args)
    except CliError as error:
        print(f"openpi-triton: error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:  # ports and files
        print(f"openpi-triton: error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)

"""What every command shares: the one-line user error, and flags backed by OPENPI_TRITON_* variables."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

from openpi_triton.config import env_var


class CliError(Exception):
    """A user mistake: printed as one line, exit status 2."""


def add_env_flag(parser: argparse.ArgumentParser, flag: str, kind: Callable[[str], Any], default: Any, help: str,
                 choices: Sequence[str] | None = None) -> None:
    """A flag whose default comes from OPENPI_TRITON_<FLAG> when set, else `default`."""
    env = env_var(flag)
    raw = os.environ.get(env)
    if raw is not None:
        try:
            default = kind(raw)
        except ValueError:
            raise CliError(f"environment variable {env}={raw!r} is not a valid {kind.__name__}") from None
        if choices is not None and default not in choices:
            raise CliError(f"environment variable {env}={raw!r} must be one of {', '.join(choices)}")
    parser.add_argument(f"--{flag}", type=kind, default=default, choices=choices,
                        help=f"{help} [env {env}; default: %(default)s]")


_SWITCH = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def switch(text: str) -> bool:
    """A yes/no value: 1/0, true/false, yes/no, on/off."""
    try:
        return _SWITCH[text.strip().lower()]
    except KeyError:
        raise ValueError(f"expected one of {', '.join(_SWITCH)}, got {text!r}") from None


def add_env_switch(parser: argparse.ArgumentParser, flag: str, help: str) -> None:
    """An off-by-default flag: `--flag` (or `--flag no`), or OPENPI_TRITON_<FLAG>=1."""
    env = env_var(flag)
    raw = os.environ.get(env)
    try:
        default = False if raw is None else switch(raw)
    except ValueError:
        raise CliError(f"environment variable {env}={raw!r} is not a yes/no value (1/0, true/false, yes/no, on/off)")\
            from None
    parser.add_argument(f"--{flag}", type=switch, nargs="?", const=True, default=default, metavar="yes|no",
                        help=f"{help} [env {env}=1; default: %(default)s]")

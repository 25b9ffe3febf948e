"""LeRobot checkpoints on the command line: `serve --lerobot-policy NAME=PATH` (with its --lerobot-* options)
and `openpi-triton lerobot-repository`, which writes the same model repository for a Triton you run yourself.

    openpi-triton serve --lerobot-policy smolvla=./outputs/train/my_smolvla/checkpoints/last/pretrained_model
    openpi-triton serve --lerobot-policy arm=lerobot/smolvla_base --lerobot-keys arm=droid

The per-policy options take NAME=VALUE and may be repeated; OPENPI_TRITON_LEROBOT_POLICY (and the others)
hold several entries separated by commas.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from openpi_triton.cli.options import CliError
from openpi_triton.config import env_var
from openpi_triton.triton.lerobot_keys import PRESETS

PER_POLICY = ("lerobot-keys", "lerobot-tokenizer", "lerobot-device")


def _env_list(flag: str) -> list[str]:
    return [item.strip() for item in os.environ.get(env_var(flag), "").split(",") if item.strip()]


def add_lerobot_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lerobot-policy", action="append", default=_env_list("lerobot-policy"), metavar="NAME=PATH",
                        help="serve a LeRobot checkpoint (smolvla, pi0, pi05) as policy NAME: a policy directory "
                        "(config.json, model.safetensors, policy_pre/postprocessor) or a Hub id; repeatable "
                        f"[env {env_var('lerobot-policy')}, comma-separated]")
    parser.add_argument("--lerobot-keys", action="append", default=_env_list("lerobot-keys"), metavar="NAME=MAP",
                        help=f"the robot keys policy NAME takes: a preset ({', '.join(PRESETS)}) or a JSON key map "
                        "file; default: the checkpoint's feature names")
    parser.add_argument("--lerobot-tokenizer", action="append", default=_env_list("lerobot-tokenizer"),
                        metavar="NAME=DIR", help="tokenizer directory (or Hub id) for policy NAME instead of the one "
                        "its preprocessor names, e.g. a local copy of the gated google/paligemma-3b-pt-224")
    parser.add_argument("--lerobot-device", action="append", default=_env_list("lerobot-device"), metavar="NAME=DEV",
                        help="torch device of policy NAME (cpu, cuda); default: CUDA on a GPU instance, else CPU")
    parser.add_argument("--lerobot-plugin", action="append", default=_env_list("lerobot-plugin"), metavar="MODULE",
                        help="a module or .py file imported before checkpoints are read (a LeRobot plugin that "
                        "registers a policy type)")


def lerobot_policies(args: argparse.Namespace) -> list:
    """The `LeRobotPolicy` of each --lerobot-policy, with its options; CliError for a malformed flag."""
    from openpi_triton.triton.lerobot_repository import LeRobotPolicy, LeRobotPolicyError, parse_policy_flag

    try:
        sources = dict(parse_policy_flag(value) for value in args.lerobot_policy)
        options = {flag: dict(parse_policy_flag(v) for v in getattr(args, flag.replace("-", "_")))
                   for flag in PER_POLICY}
    except LeRobotPolicyError as error:
        raise CliError(str(error)) from None
    if len(sources) != len(args.lerobot_policy):
        raise CliError("--lerobot-policy: each NAME may be given once")
    for flag, values in options.items():
        unknown = set(values) - set(sources)
        if unknown:
            raise CliError(f"--{flag} names {sorted(unknown)}, which no --lerobot-policy serves")
    return [LeRobotPolicy(name=name, source=source, keys=options["lerobot-keys"].get(name),
                          tokenizer=options["lerobot-tokenizer"].get(name),
                          device=options["lerobot-device"].get(name), plugins=tuple(args.lerobot_plugin))
            for name, source in sources.items()]


def write_lerobot_repository(args: argparse.Namespace, directory: Path | None = None) -> Path | None:
    """Check every --lerobot-policy and write their repository (in a new temporary directory unless given);
    None when there are none. CliError names the policy and what is wrong with its checkpoint."""
    from openpi_triton.triton.lerobot_repository import LeRobotPolicyError, prepare, write_repository

    policies = lerobot_policies(args)
    if not policies:
        return None
    try:
        prepared = []
        for policy in policies:
            print(f"checking LeRobot checkpoint {policy.source} (policy {policy.name!r}) ...", flush=True)
            prepared.append(prepare(policy))
    except LeRobotPolicyError as error:
        raise CliError(str(error)) from None
    target = directory or Path(tempfile.mkdtemp(prefix="openpi-triton-lerobot-"))
    return write_repository(target, prepared)


def remove_repository(directory: Path | None) -> None:
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


def register_repository_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lerobot-repository", help="write the model repository of LeRobot checkpoints for your Triton",
                       description="Check LeRobot checkpoints and write the model repository that serves them "
                       "(an ensemble and a python model per policy) for a Triton you run yourself: mount it as a "
                       "second --model-repository, then `openpi-triton serve --triton-url ...`. The Triton must "
                       "run a Python with openpi-triton[lerobot] installed, and see the checkpoint paths.")
    p.add_argument("--output", type=Path, required=True, help="directory to write (models in it are replaced)")
    add_lerobot_flags(p)

    def run(args: argparse.Namespace) -> None:
        if not args.lerobot_policy:
            raise CliError("give at least one --lerobot-policy NAME=PATH")
        print(f"wrote {write_lerobot_repository(args, args.output)}")

    p.set_defaults(run=run)

"""A LeRobot policy checkpoint, found, checked and loaded with LeRobot's own API.

Two stages, both refusing a bad checkpoint with a `CheckpointError` that says what is wrong and where:
- `inspect_checkpoint`: cheap (no weights loaded): the files are there, config.json parses, the policy type
  is one we serve, its runtime is installed. The serving process runs it before tritonserver starts.
- `load_checkpoint`: the policy (`PreTrainedPolicy.from_pretrained` of the class for config.type), its
  pre/post-processors with the saved normalisation stats (`make_pre_post_processors(config,
  pretrained_path=...)`), and a check that every weight of the policy is the checkpoint's: LeRobot 0.4's
  `from_pretrained` of pi0/pi0.5 catches load errors and returns random weights with only a print, and the
  generic one loads with strict=False, so a checkpoint that does not fit would otherwise be served as noise.

A path that is not a local directory is a Hub id: `huggingface_hub.snapshot_download` fetches it into the
Hub cache (HF_TOKEN for private repositories; HF_HUB_OFFLINE=1 uses the cache only).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_TYPES = ("smolvla", "pi0", "pi05")
REQUIRED_FILES = ("config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
# pi0 and pi0.5 in LeRobot 0.4 run on LeRobot's fork of transformers (adaRMS Gemma, a patched SigLIP); the
# fork marks itself with this module.
PI_TRANSFORMERS_MARK = "transformers.models.siglip.check"
PI_TRANSFORMERS_HINT = ('pip install "transformers @ git+https://github.com/huggingface/transformers.git'
                        '@fix/lerobot_openpi" (what `pip install "lerobot[pi]"` installs from LeRobot\'s source)')
GATED_TOKENIZER_HINT = ("PaliGemma's tokenizer (google/paligemma-3b-pt-224) is gated on the Hub: accept its "
                        "licence there and set HF_TOKEN, or give a local copy with --lerobot-tokenizer NAME=DIR")


class CheckpointError(ValueError):
    """A checkpoint that cannot be served; the message names the checkpoint and what is wrong."""


@dataclass(frozen=True)
class CheckpointInfo:
    source: str        # the PATH or Hub id as given
    directory: Path    # where its files are
    config: Any        # lerobot PreTrainedConfig
    tokenizer: str | None  # the tokenizer to load instead of the one the saved preprocessor names

    @property
    def policy_type(self) -> str:
        return self.config.type

    def metadata(self) -> dict[str, Any]:
        """The `lerobot` entry of the policy's metadata (the LeRobot contract)."""
        def features(table: dict[str, Any]) -> dict[str, Any]:
            return {name: {"type": feature.type.value, "shape": list(feature.shape)} for name, feature in table.items()}

        return {
            "policy_type": self.policy_type, "pretrained_name_or_path": self.source,
            "input_features": features(self.config.input_features),
            "output_features": features(self.config.output_features),
            "chunk_size": int(self.config.chunk_size), "n_action_steps": int(self.config.n_action_steps),
            "action_names": None,
        }


def import_plugins(plugins: list[str] | tuple[str, ...]) -> None:
    """Import modules before any checkpoint is read, as LeRobot's `--policy.discover_packages_path` does: a
    module name, or the path of a .py file (for example one that registers a policy type)."""
    for plugin in plugins:
        if plugin.endswith(".py"):
            name = "lerobot_plugin_" + Path(plugin).stem
            if name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(name, plugin)
            if spec is None or spec.loader is None or not Path(plugin).is_file():
                raise CheckpointError(f"plugin {plugin}: no such Python file")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            importlib.import_module(plugin)


def checkpoint_directory(source: str) -> Path:
    """The local directory of a checkpoint: `source` itself, or the Hub snapshot of a repository id."""
    local = Path(source).expanduser()
    if local.is_dir():
        return local
    if local.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise CheckpointError(f"checkpoint {source}: no such directory (and not a Hub id such as lerobot/smolvla_base)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(source, token=os.environ.get("HF_TOKEN")))
    except LocalEntryNotFoundError:
        raise CheckpointError(f"checkpoint {source}: not a local directory, and the Hub is unreachable or "
                              "HF_HUB_OFFLINE=1 with no copy in the Hub cache") from None
    except HfHubHTTPError as error:
        raise CheckpointError(f"checkpoint {source}: the Hub refused it ({error}); for a private or gated "
                              "repository set HF_TOKEN") from None


def _tokenizer_override(directory: Path, override: str | None) -> str | None:
    if override:
        return override
    if any((directory / name).is_file() for name in TOKENIZER_FILES):
        return str(directory)  # a checkpoint that carries its tokenizer is served with it
    return None


def _check_runtime(source: str, policy_type: str) -> None:
    if policy_type in ("pi0", "pi05") and importlib.util.find_spec(PI_TRANSFORMERS_MARK.rsplit(".", 1)[0]) and \
            importlib.util.find_spec(PI_TRANSFORMERS_MARK) is None:
        raise CheckpointError(f"checkpoint {source}: {policy_type} in LeRobot 0.4 needs LeRobot's fork of "
                              f"transformers, and the installed one is the stock release; {PI_TRANSFORMERS_HINT}")


def inspect_checkpoint(source: str, tokenizer: str | None = None, plugins: tuple[str, ...] = ()) -> CheckpointInfo:
    """Files, config and policy type of a checkpoint, without loading its weights."""
    import_plugins(plugins)
    directory = checkpoint_directory(source)
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {source}: missing {', '.join(missing)} in {directory} (a LeRobot policy "
                              "directory as `save_pretrained` of the policy and of both processors writes it)")
    import lerobot.policies  # noqa: F401  (registers the policy config classes by type)
    from draccus.utils import DecodingError, ParsingError
    from lerobot.configs.policies import PreTrainedConfig

    try:
        config = PreTrainedConfig.from_pretrained(directory)
    except (DecodingError, ParsingError, ValueError, TypeError, KeyError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"checkpoint {source}: config.json does not describe a LeRobot policy we serve "
                              f"({message}); served types: {', '.join(SUPPORTED_TYPES)}") from None
    if config.type not in SUPPORTED_TYPES:
        raise CheckpointError(f"checkpoint {source}: policy type {config.type!r} is not served; served types: "
                              f"{', '.join(SUPPORTED_TYPES)}")
    if "action" not in config.output_features:
        raise CheckpointError(f"checkpoint {source}: config.json declares no 'action' output feature")
    _check_runtime(source, config.type)
    info = CheckpointInfo(source, directory, config, _tokenizer_override(directory, tokenizer))
    _check_hub_parts(info)
    return info


def saved_tokenizer(directory: Path) -> str | None:
    """The tokenizer the saved preprocessor names (its tokenizer step's `tokenizer_name`)."""
    steps = json.loads((directory / "policy_preprocessor.json").read_text()).get("steps", [])
    for step in steps:
        if step.get("registry_name") == "tokenizer_processor":
            return step.get("config", {}).get("tokenizer_name")
    return None


def _check_hub_parts(info: CheckpointInfo) -> None:
    """What the checkpoint loads besides its own files is reachable: the tokenizer (PaliGemma's is gated) and
    SmolVLA's VLM config and processor (`vlm_model_name`). Checked here, before any server starts."""
    from transformers import AutoConfig, AutoTokenizer

    name = info.tokenizer or saved_tokenizer(info.directory)
    if name:
        try:
            AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as error:
            hint = GATED_TOKENIZER_HINT if "paligemma" in name.lower() else \
                "give a local copy with --lerobot-tokenizer NAME=DIR"
            raise CheckpointError(f"checkpoint {info.source}: its tokenizer {name} does not load "
                                  f"({str(error).splitlines()[0]}); {hint}") from None
    vlm = getattr(info.config, "vlm_model_name", None)
    if info.policy_type == "smolvla" and vlm:
        try:
            AutoConfig.from_pretrained(vlm)
        except (OSError, ValueError) as error:
            raise CheckpointError(f"checkpoint {info.source}: SmolVLA builds its VLM from vlm_model_name {vlm}, "
                                  f"whose config does not load ({str(error).splitlines()[0]}); with "
                                  "HF_HUB_OFFLINE=1 it must be in the Hub cache or a local directory") from None


def rtc_settings(config: Any) -> dict[str, Any]:
    """What the handshake says about RTC: the checkpoint's `rtc_config` when it has one, else LeRobot's
    `RTCConfig` defaults."""
    from lerobot.policies.rtc.configuration_rtc import RTCConfig

    rtc = getattr(config, "rtc_config", None) or RTCConfig()
    schedule = rtc.prefix_attention_schedule
    return {"execution_horizon": int(rtc.execution_horizon),
            "prefix_attention_schedule": getattr(schedule, "value", str(schedule)),
            "max_guidance_weight": float(rtc.max_guidance_weight)}

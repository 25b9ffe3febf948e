"""Load a checked checkpoint (`checkpoint.inspect_checkpoint`) with LeRobot's API, on a device, and refuse
one whose weights did not all load (see `verify_weights`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from openpi_policy.lerobot.checkpoint import GATED_TOKENIZER_HINT, CheckpointError, CheckpointInfo


@dataclass
class LoadedPolicy:
    info: CheckpointInfo
    policy: Any          # lerobot PreTrainedPolicy, in eval mode on `device`
    preprocessor: Any    # PolicyProcessorPipeline: robot batch -> model batch (normalised, tokenised, on device)
    postprocessor: Any   # PolicyProcessorPipeline: model actions -> actions in the dataset's units, on the CPU
    device: str


def pick_device(requested: str | None, config: Any) -> str:
    """`requested`, else the checkpoint's own device when it is available here, else CUDA when present, else
    the CPU."""
    import torch

    wanted = requested or getattr(config, "device", None) or "cpu"
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        if requested:
            raise CheckpointError(f"device {requested!r} asked for, but this host has no CUDA device")
        wanted = "cpu"
    if wanted == "mps" and not torch.backends.mps.is_available():
        wanted = "cpu"
    return wanted


def load_checkpoint(info: CheckpointInfo, device: str | None = None) -> LoadedPolicy:
    """The policy and both processors of `info` on `device` (see `pick_device`); the checkpoint's dtype is
    its config's (pi0/pi0.5 `dtype`, float32 otherwise)."""
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    device = pick_device(device, info.config)
    info.config.device = device
    policy_class = get_policy_class(info.policy_type)
    policy = policy_class.from_pretrained(str(info.directory), config=info.config, local_files_only=True)
    policy.to(device)
    policy.eval()
    verify_weights(info, policy)
    pre_overrides: dict[str, Any] = {"device_processor": {"device": device}}
    if info.tokenizer is not None:
        pre_overrides["tokenizer_processor"] = {"tokenizer_name": info.tokenizer}
    try:
        preprocessor, postprocessor = make_pre_post_processors(
            info.config, pretrained_path=str(info.directory), preprocessor_overrides=pre_overrides,
            postprocessor_overrides={"device_processor": {"device": "cpu"}})
    except OSError as error:  # the tokenizer: gated, or not in the Hub cache while offline
        hint = GATED_TOKENIZER_HINT if "paligemma" in str(error).lower() else "give it with --lerobot-tokenizer"
        raise CheckpointError(f"checkpoint {info.source}: its preprocessor's tokenizer does not load "
                              f"({str(error).splitlines()[0]}); {hint}") from None
    return LoadedPolicy(info, policy, preprocessor, postprocessor, device)


def _file_tensors(info: CheckpointInfo, policy: Any) -> dict[str, Any]:
    """model.safetensors under the names the policy's parameters have: pi0/pi0.5's `from_pretrained` renames
    the keys (`_fix_pytorch_state_dict_keys`, then a `model.` prefix); we apply the same renaming."""
    from safetensors.torch import load_file

    tensors = load_file(str(info.directory / "model.safetensors"))
    if hasattr(policy, "_fix_pytorch_state_dict_keys"):
        tensors = policy._fix_pytorch_state_dict_keys(tensors, policy.config)
        tensors = {key if key.startswith("model.") else f"model.{key}": value for key, value in tensors.items()}
    return tensors


def verify_weights(info: CheckpointInfo, policy: Any) -> None:
    """Every weight of the loaded policy equals the checkpoint's (tensors that share storage count once, as
    safetensors saves them once). Raises CheckpointError naming what did not load."""
    import torch

    saved = _file_tensors(info, policy)
    groups: dict[tuple[Any, ...], list[tuple[str, Any]]] = {}
    for name, tensor in policy.state_dict().items():
        if tensor.numel():
            groups.setdefault((tensor.device, tensor.data_ptr()), []).append((name, tensor))
    missing, differ = [], []
    for members in groups.values():
        present = [(name, tensor) for name, tensor in members if name in saved]
        if not present:
            missing.append(members[0][0])
            continue
        name, tensor = present[0]
        expected = saved[name].to(device=tensor.device, dtype=tensor.dtype)
        if expected.shape != tensor.shape or not torch.equal(expected, tensor):
            differ.append(name)
    if missing or differ:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors of the policy are not in model.safetensors (e.g. {missing[:3]})")
        if differ:
            parts.append(f"{len(differ)} differ from the file after loading (e.g. {differ[:3]})")
        raise CheckpointError(
            f"checkpoint {info.source}: its weights do not fit a {info.policy_type} policy of this config: "
            f"{'; '.join(parts)}. LeRobot's from_pretrained would serve random weights for them; refusing")

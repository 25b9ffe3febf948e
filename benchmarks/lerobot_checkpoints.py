"""LeRobot checkpoints built offline with LeRobot's own classes and `save_pretrained`: weights, config and the
pre/post-processor pipelines with their normalisation stats, exactly the directory a LeRobot training run
writes. Used by the tests (tiny sizes, built once per session), the gRPC endpoint's tests and the benchmark
(SmolVLA at its public size, random weights).

Nothing downloads: SmolVLA's VLM backbone (`vlm_model_name`) is a local directory holding a `SmolVLMConfig`,
a tokenizer built with the `tokenizers` package and a `SmolVLMProcessor`; pi0/pi0.5's PaliGemma tokenizer is
built locally the same way (the real one is gated on the Hub). Weights are random, seeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# SmolVLM2-500M-Video-Instruct, the backbone of lerobot/smolvla_base, at its public sizes (its config.json).
FULL_SMOLVLM = {
    "text": {"hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32, "num_attention_heads": 15,
             "num_key_value_heads": 5, "head_dim": 64, "vocab_size": 49280, "max_position_embeddings": 8192,
             "rope_theta": 100000, "rms_norm_eps": 1e-5},
    "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
               "image_size": 512, "patch_size": 16},
    "scale_factor": 4,
    "image_size": 512,
}
TINY_SMOLVLM = {
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 512, "max_position_embeddings": 512,
             "rope_theta": 10000, "rms_norm_eps": 1e-5},
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
               "image_size": 32, "patch_size": 8},
    "scale_factor": 2,
    "image_size": 32,
}
SPECIAL_TOKENS = {"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
                  "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"}
WORDS = ("pick up the red cube and place it in the box open drawer close fold towel stack blocks move arm left "
         "right grasp release push pull lift put on table bowl cup")


@dataclass(frozen=True)
class RobotFeatures:
    """What the checkpoint's robot has: camera names (`observation.images.<name>`), state and action dims."""

    cameras: tuple[str, ...] = ("front", "wrist")
    state_dim: int = 6
    action_dim: int = 6
    image_shape: tuple[int, int, int] = (3, 48, 64)  # what the dataset recorded (C, H, W); clients may send any

    def input_features(self) -> dict[str, Any]:
        from lerobot.configs.types import FeatureType, PolicyFeature

        features = {f"observation.images.{cam}": PolicyFeature(FeatureType.VISUAL, self.image_shape)
                    for cam in self.cameras}
        features["observation.state"] = PolicyFeature(FeatureType.STATE, (self.state_dim,))
        return features

    def output_features(self) -> dict[str, Any]:
        from lerobot.configs.types import FeatureType, PolicyFeature

        return {"action": PolicyFeature(FeatureType.ACTION, (self.action_dim,))}

    def stats(self, seed: int = 0) -> dict[str, dict[str, Any]]:
        """Dataset statistics in LeRobot's layout, non-trivial so that normalisation matters."""
        import torch

        g = torch.Generator().manual_seed(seed)
        stats: dict[str, dict[str, Any]] = {}
        for key, dim in (("observation.state", self.state_dim), ("action", self.action_dim)):
            mean, std = torch.randn(dim, generator=g) * 10, torch.rand(dim, generator=g) * 5 + 0.5
            stats[key] = {"mean": mean, "std": std, "min": mean - 3 * std, "max": mean + 3 * std,
                          "q01": mean - 2 * std, "q99": mean + 2 * std}
        for cam in self.cameras:
            shape = (3, 1, 1)
            stats[f"observation.images.{cam}"] = {
                "mean": torch.full(shape, 0.45), "std": torch.full(shape, 0.25),
                "min": torch.zeros(shape), "max": torch.ones(shape)}
        return stats


def build_tokenizer(directory: Path, vocab_size: int, extra_special: dict[str, str] | None = None,
                    pad: str = "<pad>", bos: str = "<bos>", eos: str = "<eos>") -> Any:
    """A byte-level BPE tokenizer (the `tokenizers` package, trained on a few words) saved as a
    PreTrainedTokenizerFast; `extra_special` become attributes (`tokenizer.image_token`, ...) as SmolVLM's are."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    extra = dict(extra_special or {})
    specials = [pad, bos, eos, "<unk>", *extra.values()]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 8, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([WORDS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, bos_token=bos, eos_token=eos,
                                   unk_token="<unk>", extra_special_tokens=extra, model_max_length=4096)
    fast.save_pretrained(directory)
    return fast


def build_smolvlm_dir(directory: Path, sizes: dict[str, Any] = TINY_SMOLVLM) -> Path:
    """A local stand-in for `HuggingFaceTB/SmolVLM2-500M-Video-Instruct` as SmolVLA reads it with
    load_vlm_weights=False: config.json, tokenizer and processor (no weights: SmolVLA initialises the VLM)."""
    from transformers import SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(directory, min(sizes["text"]["vocab_size"], 512), SPECIAL_TOKENS)
    image_token_id = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS["image_token"])
    text = dict(sizes["text"], pad_token_id=tokenizer.pad_token_id, model_type="llama")
    config = SmolVLMConfig(text_config=text, vision_config=dict(sizes["vision"]), scale_factor=sizes["scale_factor"],
                           image_token_id=image_token_id, pad_token_id=tokenizer.pad_token_id)
    config.save_pretrained(directory)
    image_size = sizes["image_size"]
    image_seq_len = (image_size // sizes["vision"]["patch_size"]) ** 2 // sizes["scale_factor"] ** 2
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(size={"longest_edge": image_size},
                                              max_image_size={"longest_edge": image_size}),
        tokenizer=tokenizer, video_processor=SmolVLMVideoProcessor(), image_seq_len=image_seq_len)
    processor.save_pretrained(directory)
    return directory


def build_smolvla(directory: Path, robot: RobotFeatures = RobotFeatures(), vlm_dir: Path | None = None,
                  sizes: dict[str, Any] = TINY_SMOLVLM, seed: int = 0, **config: Any) -> Path:
    """A SmolVLA checkpoint directory (LeRobot's `save_pretrained` of the policy and both processors)."""
    import torch
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    directory = Path(directory)
    vlm_dir = build_smolvlm_dir(directory.parent / f"{directory.name}_vlm", sizes) if vlm_dir is None else vlm_dir
    tiny = sizes is TINY_SMOLVLM
    defaults: dict[str, Any] = {
        "vlm_model_name": str(vlm_dir), "load_vlm_weights": False, "device": "cpu",
        "input_features": robot.input_features(), "output_features": robot.output_features(),
        "resize_imgs_with_padding": (sizes["image_size"], sizes["image_size"]),
    }
    if tiny:
        defaults.update(chunk_size=10, n_action_steps=10, num_steps=3, num_vlm_layers=4, max_state_dim=16,
                        max_action_dim=16, tokenizer_max_length=16)
    cfg = SmolVLAConfig(**{**defaults, **config})
    torch.manual_seed(seed)
    policy = SmolVLAPolicy(cfg)
    _randomise(policy, seed)
    return _save(directory, policy, cfg, robot)


def _randomise(policy: Any, seed: int) -> None:
    """Random weights everywhere (a fresh model has zero-initialised pieces), seeded and small."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in policy.parameters():
            if param.dtype.is_floating_point:
                param.copy_((torch.randn(param.shape, generator=g) * 0.05).to(param.dtype))


def _save(directory: Path, policy: Any, cfg: Any, robot: RobotFeatures) -> Path:
    from lerobot.policies.factory import make_pre_post_processors

    preprocessor, postprocessor = make_pre_post_processors(cfg, dataset_stats=robot.stats())
    policy.save_pretrained(directory)
    preprocessor.save_pretrained(directory)
    postprocessor.save_pretrained(directory)
    return directory

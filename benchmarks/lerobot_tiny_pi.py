"""A LeRobot plugin for tests: pi0/pi0.5 at tiny sizes. LeRobot fixes their Gemma sizes by variant name
(`gemma_2b`, `gemma_300m`) and PaliGemma's SigLIP at 400M parameters; this patches both, keeping the names.
Imported by the checkpoint builder and, through `--lerobot-plugin`, by the server's python model: the same
sizes on both sides. Never for real checkpoints."""

from __future__ import annotations

from lerobot.policies.pi0 import modeling_pi0
from lerobot.policies.pi05 import modeling_pi05

TINY_GEMMA = {"gemma_2b": dict(width=64, depth=2, mlp_dim=128, num_heads=2, num_kv_heads=1, head_dim=32),
              "gemma_300m": dict(width=32, depth=2, mlp_dim=64, num_heads=2, num_kv_heads=1, head_dim=32)}


def _tiny_paligemma(original):
    def build(config):
        vision = config.vision_config
        vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads = 32, 1, 2
        vision.intermediate_size, vision.projection_dim = 64, config.text_config.hidden_size
        return original(config=config)
    return build


for module in (modeling_pi0, modeling_pi05):
    if not getattr(module, "_openpi_triton_tiny", False):
        module.get_gemma_config = lambda variant, _m=module: _m.GemmaConfig(**TINY_GEMMA[variant])
        module.PaliGemmaForConditionalGeneration = _tiny_paligemma(module.PaliGemmaForConditionalGeneration)
        module._openpi_triton_tiny = True

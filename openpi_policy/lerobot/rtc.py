"""Real-time chunking (RTC) of a served LeRobot policy, per row of a Triton batch, with LeRobot's own maths.

LeRobot 0.4 implements RTC (`lerobot.policies.rtc`, Black et al. 2025) for SmolVLA, pi0 and pi0.5: with
`config.rtc_config.enabled`, each denoising step of `sample_actions` goes through
`RTCProcessor.denoise_step(x_t, prev_chunk_left_over, inference_delay, time, denoise, execution_horizon)`,
which guides the velocity so that the new chunk agrees with the leftover of the previous one. It takes ONE
`inference_delay` (and one leftover length) for the whole batch.

Robots of one Triton batch each have their own leftover, delay, or no RTC at all. `BatchedRTCProcessor`
extends LeRobot's processor instead of grouping whole `predict_action_chunk` calls: the model's velocity is
computed once for the whole batch (the expensive part: the action expert on the cached VLM prefix), then
rows are grouped by (delay, leftover length) and each group goes through LeRobot's own
`RTCProcessor.denoise_step` with that velocity (elementwise guidance, cheap). Rows without RTC keep the
plain velocity bit for bit, so a non-RTC robot gets the answer it gets in a batch without RTC. (Grouping
whole calls would cost one VLM prefix and one full denoising loop per distinct delay.) This works because
LeRobot's `denoise_step` computes `v_t` before it marks `x_t` as requiring grad: its correction is the
weighted error itself, and the velocity of a group's rows does not depend on how it was obtained.

Per row, the python model gets three inputs (`RTC_INPUTS`): the leftover in the robot's units, padded to
[chunk_size, action_dim]; its length (0: no RTC for this row); the inference delay in control steps. The
leftover is normalised into the policy's action space with the checkpoint's own `NormalizerProcessorStep`
(its preprocessor's, from the saved stats), as LeRobot's RTC expects model-space leftovers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LEFTOVER, LENGTH, DELAY = "rtc_leftover", "rtc_length", "rtc_delay"
RTC_INPUTS = (LEFTOVER, LENGTH, DELAY)


def _base_processor() -> type:
    from lerobot.policies.rtc.modeling_rtc import RTCProcessor

    return RTCProcessor


@dataclass(frozen=True)
class RowGuidance:
    """The RTC inputs of a batch, per row: leftovers already normalised (model space, [B, T, A] tensor),
    their lengths (0 = no RTC) and delays."""

    leftovers: Any
    lengths: tuple[int, ...]
    delays: tuple[int, ...]

    def groups(self) -> dict[tuple[int, int], list[int]]:
        """(delay, length) -> rows, for rows with RTC."""
        table: dict[tuple[int, int], list[int]] = {}
        for row, (length, delay) in enumerate(zip(self.lengths, self.delays, strict=True)):
            if length > 0:
                table.setdefault((delay, length), []).append(row)
        return table


def make_batched_processor(rtc_config: Any) -> Any:
    """A LeRobot `RTCProcessor` whose `denoise_step` also takes a `RowGuidance` as `prev_chunk_left_over`."""
    base = _base_processor()

    class BatchedRTCProcessor(base):  # type: ignore[misc, valid-type]
        def denoise_step(self, x_t: Any, prev_chunk_left_over: Any, inference_delay: Any, time: Any,
                         original_denoise_step_partial: Any, execution_horizon: Any = None) -> Any:
            if not isinstance(prev_chunk_left_over, RowGuidance):
                return super().denoise_step(x_t, prev_chunk_left_over, inference_delay, time,
                                            original_denoise_step_partial, execution_horizon)
            v_t = original_denoise_step_partial(x_t)  # one model pass for every row
            guided = v_t.clone()
            for (delay, length), rows in prev_chunk_left_over.groups().items():
                index = list(rows)
                group_v = v_t[index]
                guided[index] = super().denoise_step(
                    x_t[index], prev_chunk_left_over.leftovers[index, :length], delay, time,
                    lambda _x, group_v=group_v: group_v, execution_horizon).to(guided.dtype)
            return guided

    return BatchedRTCProcessor(rtc_config)


def enable_rtc(policy: Any) -> None:
    """Switch a loaded SmolVLA/pi0/pi0.5 policy to RTC with the batched processor; rows without RTC (and
    batches with none) are sampled exactly as before."""
    from lerobot.policies.rtc.configuration_rtc import RTCConfig

    config = policy.config
    rtc = getattr(config, "rtc_config", None) or RTCConfig()
    rtc.enabled = True
    rtc.debug = False
    config.rtc_config = rtc
    processor = make_batched_processor(rtc)
    policy.rtc_processor = processor
    policy.model.rtc_processor = processor


def action_normaliser(preprocessor: Any) -> Any:
    """The checkpoint's `NormalizerProcessorStep` (robot units -> the policy's normalised action space)."""
    from lerobot.processor import NormalizerProcessorStep

    for step in getattr(preprocessor, "steps", ()):
        if isinstance(step, NormalizerProcessorStep):
            return step
    return None


def normalise_actions(normaliser: Any, actions: Any) -> Any:
    """Actions [B, T, A] in the robot's units -> normalised, by LeRobot's own normaliser step."""
    if normaliser is None:
        return actions
    from lerobot.processor import TransitionKey, create_transition

    return normaliser(create_transition(action=actions))[TransitionKey.ACTION]


def row_guidance(leftovers: np.ndarray, lengths: Sequence[int], delays: Sequence[int], normaliser: Any,
                 device: str) -> RowGuidance | None:
    """The `RowGuidance` of a batch from the python model's RTC inputs, or None when no row asks for RTC."""
    import torch

    lengths = tuple(int(n) for n in lengths)
    if not any(lengths):
        return None
    raw = torch.from_numpy(np.ascontiguousarray(leftovers, np.float32)).to(device)
    normalised = normalise_actions(normaliser, raw).to(torch.float32)
    return RowGuidance(normalised, lengths, tuple(int(d) for d in delays))


def check_rows(lengths: Sequence[int], delays: Sequence[int], chunk_size: int) -> None:
    """Refuse RTC inputs that do not make sense (the front checks them first; this guards direct callers)."""
    for row, (length, delay) in enumerate(zip(lengths, delays, strict=True)):
        if length == 0:
            continue
        if not 0 < length <= chunk_size:
            raise ValueError(f"row {row}: RTC leftover of {length} actions; the chunk has {chunk_size}")
        if not 0 <= delay <= length or delay >= chunk_size:
            raise ValueError(f"row {row}: RTC delay {delay} outside [0, min({length} leftover actions, "
                             f"chunk size {chunk_size} - 1)]")

"""Real-time chunking of a tiny SmolVLA in-process: what RTC buys (the first `d` actions of a new chunk follow the
leftover of the previous one), and that our per-row batching equals LeRobot's own RTC run row by row
(`RTCProcessor` as LeRobot ships it, with the leftover LeRobot expects: model space, before the postprocessor).
The served path is tests/test_rtc_serving.py."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from openpi_policy.lerobot.batch import noise_for_seed
from openpi_triton.front.codec import ProtocolError
from openpi_triton.front.rtc import rtc_request
from openpi_triton.triton.policy import Policy, RtcSpec

CHUNK, ACTION_DIM = 10, 6
SEEDS = 30


def observation(seed: int, rows: int = 1) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {"observation.images.front": torch.rand(rows, 3, 48, 64, generator=g),
            "observation.images.wrist": torch.rand(rows, 3, 32, 64, generator=g),
            "observation.state": torch.randn(rows, 6, generator=g) * 3,
            "task": ["pick up the red cube"] * rows}


def leftover_of(chunk: np.ndarray, executed: int) -> tuple[np.ndarray, int]:
    padded = np.zeros((CHUNK, ACTION_DIM), np.float32)
    padded[:CHUNK - executed] = chunk[executed:]
    return padded, CHUNK - executed


def test_rtc_keeps_the_first_actions_on_the_leftover(smolvla_runner) -> None:
    """Over 30 seeds, every RTC chunk's first d actions are closer to the leftover than the same seed's chunk
    without RTC (by chance: 2^-30), and the mean error drops by far more than its spread."""
    delay, executed = 3, 2
    plain_errors, rtc_errors = [], []
    for seed in range(SEEDS):
        previous = smolvla_runner.run_batch(observation(seed), [10_000 + seed])[0]
        leftover, length = leftover_of(previous, executed)
        now = observation(seed + 500)  # the world moved on: a newer observation
        plain = smolvla_runner.run_batch(dict(now), [seed])[0]
        guided = smolvla_runner.run_batch(dict(now), [seed], (leftover[None], [length], [delay]))[0]
        plain_errors.append(np.abs(plain[:delay] - leftover[:delay]).mean())
        rtc_errors.append(np.abs(guided[:delay] - leftover[:delay]).mean())
    plain_errors, rtc_errors = np.array(plain_errors), np.array(rtc_errors)
    assert (rtc_errors < plain_errors).all()
    gain = plain_errors - rtc_errors
    assert gain.mean() > 5 * gain.std() / np.sqrt(SEEDS)
    assert rtc_errors.mean() < 0.5 * plain_errors.mean()


@pytest.fixture(scope="module")
def lerobot_rtc(smolvla_checkpoint) -> tuple[Any, Any, Any]:
    """LeRobot's own policy with its own RTCProcessor (RTCConfig defaults, enabled), and its processors."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors
    from lerobot.policies.rtc.configuration_rtc import RTCConfig
    from lerobot.policies.rtc.modeling_rtc import RTCProcessor

    config = PreTrainedConfig.from_pretrained(smolvla_checkpoint)
    config.rtc_config = RTCConfig(enabled=True)
    policy = get_policy_class(config.type).from_pretrained(smolvla_checkpoint, config=config)
    assert type(policy.model.rtc_processor) is RTCProcessor
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(smolvla_checkpoint))
    return policy, pre, post


def lerobot_chunk(lerobot_rtc: tuple[Any, Any, Any], obs: dict[str, Any], seed: int, **rtc: Any) -> tuple[Any, Any]:
    """(model-space chunk, chunk in robot units) from LeRobot alone, one row."""
    policy, pre, post = lerobot_rtc
    noise = noise_for_seed(seed, policy.config.chunk_size, policy.config.max_action_dim)[None]
    with torch.no_grad():
        model_space = policy.predict_action_chunk(pre(dict(obs)), noise=noise, **rtc)
        return model_space, post(model_space.clone())[0].numpy()


def test_mixed_batch_rows_equal_lerobots_rtc_row_by_row(smolvla_runner, lerobot_rtc) -> None:
    """One batch: a row without RTC and rows with different delays and leftover lengths; each row equals
    LeRobot's own predict_action_chunk(inference_delay=d, prev_chunk_left_over=<model-space leftover>) on
    that row alone; the row without RTC equals the answer without any RTC in the batch."""
    rows = [(None, None), (2, 2), (4, 2), (2, 5)]  # (delay, executed)
    batch = observation(7, len(rows))
    seeds = [100 + i for i in range(len(rows))]
    leftovers = np.zeros((len(rows), CHUNK, ACTION_DIM), np.float32)
    lengths, delays, wanted = [], [], []
    for i, (delay, executed) in enumerate(rows):
        one = {key: value[i:i + 1] for key, value in batch.items()}
        if delay is None:
            lengths.append(0)
            delays.append(0)
            wanted.append(lerobot_chunk(lerobot_rtc, one, seeds[i])[1])
            continue
        previous_model, previous = lerobot_chunk(lerobot_rtc, observation(50 + i), 900 + i)
        leftovers[i], length = leftover_of(previous, executed)
        lengths.append(length)
        delays.append(delay)
        wanted.append(lerobot_chunk(lerobot_rtc, one, seeds[i], inference_delay=delay,
                                    prev_chunk_left_over=previous_model[:, executed:])[1])
    got = smolvla_runner.run_batch(batch, seeds, (leftovers, lengths, delays))
    for i in range(len(rows)):
        np.testing.assert_allclose(got[i], wanted[i], atol=1e-4, rtol=0, err_msg=f"row {i} ({rows[i]})")
    without = smolvla_runner.run_batch(observation(7, len(rows)), seeds)
    np.testing.assert_array_equal(got[0], without[0])
    assert np.abs(got[1] - without[1]).max() > 1e-2  # RTC changed the guided rows


def test_runner_refuses_rows_that_make_no_sense(smolvla_runner) -> None:
    leftovers = np.zeros((1, CHUNK, ACTION_DIM), np.float32)
    with pytest.raises(ValueError, match="delay 6 outside"):
        smolvla_runner.run_batch(observation(1), [1], (leftovers, [5], [6]))


RTC_POLICY = Policy(name="smol", metadata={}, inputs=(), outputs={"actions": "actions"}, seed_input="seed",
                    stateful=False, batched=True,
                    rtc=RtcSpec("rtc_leftover", "rtc_length", "rtc_delay", "actions", CHUNK, ACTION_DIM))


@pytest.mark.parametrize(("message", "last", "error"), [
    ({"rtc/leftover": np.zeros((3, 6), np.float32)}, None, "needs rtc/delay"),
    ({"rtc/leftover": np.zeros((3, 5), np.float32), "rtc/delay": 1}, None, r"must be \[n, 6\]"),
    ({"rtc/leftover": np.zeros((11, 6), np.float32), "rtc/delay": 1}, None, "1 <= n <= 10"),
    ({"rtc/leftover": np.full((3, 6), np.nan, np.float32), "rtc/delay": 1}, None, "NaN"),
    ({"rtc/leftover": np.zeros((3, 6), np.float32), "rtc/delay": 4}, None, "rtc/delay 4: must be in"),
    ({"rtc/leftover": np.zeros((3, 6), np.float32), "rtc/delay": -1}, None, "rtc/delay -1"),
    ({"rtc/leftover": np.zeros((3, 6), np.float32), "rtc/delay": 1.5}, None, "must be an integer"),
    ({"rtc/executed": 2, "rtc/delay": 1}, None, "no answered chunk yet"),
    ({"rtc/executed": 10, "rtc/delay": 0}, np.zeros((10, 6), np.float32), r"in \[0, 9\]"),
    ({"rtc/executed": 2, "rtc/leftover": np.zeros((3, 6)), "rtc/delay": 1}, None, "exactly one"),
])
def test_bad_rtc_keys_are_named(message: dict, last: Any, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        rtc_request(RTC_POLICY, message, last)


def test_remembered_mode_is_the_explicit_leftover() -> None:
    last = np.arange(60, dtype=np.float32).reshape(10, 6)
    remembered = rtc_request(RTC_POLICY, {"rtc/executed": 4, "rtc/delay": 2}, last)
    explicit = rtc_request(RTC_POLICY, {"rtc/leftover": last[4:].tolist(), "rtc/delay": 2}, None)
    assert remembered is not None and explicit is not None
    np.testing.assert_array_equal(remembered.leftover, explicit.leftover)
    assert remembered.delay == explicit.delay == 2


def test_policy_without_rtc_refuses_rtc_keys() -> None:
    core = Policy(name="libero", metadata={}, inputs=(), outputs={"actions": "actions"}, seed_input="seed",
                  stateful=False, batched=True)
    with pytest.raises(ProtocolError, match="'libero' does not support real-time chunking"):
        rtc_request(core, {"rtc/executed": 1, "rtc/delay": 1}, None)
    assert rtc_request(core, {"observation/state": np.zeros(8)}, None) is None

"""The shared transforms against values computed by hand and against openpi's own implementations."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from openpi_client import image_tools

from openpi_policy.tokenizer import BOS_ID, PAD_ID, ByteTokenizer, clean_prompt, tokenize_prompts
from openpi_policy.transforms import (
    NormStats,
    flow_noise,
    normalize,
    pad_last_dim,
    prepare_images,
    resize_with_pad,
    unnormalize,
)


def test_resize_with_pad_letterboxes_a_480x640_frame():
    frame = np.full((480, 640, 3), 200, np.uint8)
    out = resize_with_pad(frame)
    # Limiting side is the width: 640 -> 224, so 480 -> int(480 / (640/224)) = 168 rows,
    # centred with int((224 - 168) / 2) = 28 black rows above and below.
    assert out.shape == (224, 224, 3)
    assert (out[:28] == 0).all() and (out[196:] == 0).all()
    assert (out[28:196] == 200).all()


def test_resize_with_pad_matches_openpi_on_a_natural_frame():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_with_pad(frame), image_tools.resize_with_pad(frame, 224, 224))


def test_resize_with_pad_leaves_a_224_frame_untouched():
    frame = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    assert resize_with_pad(frame) is frame


def test_prepare_images_scales_to_minus_one_one_and_goes_chw():
    frames = np.zeros((2, 224, 224, 3), np.uint8)
    frames[0, 0, 0] = [0, 255, 51]
    images, mask = prepare_images(frames)
    assert images.shape == (2, 3, 224, 224) and images.dtype == np.float32
    np.testing.assert_allclose(images[0, :, 0, 0], [-1.0, 1.0, 51 / 255 * 2 - 1], atol=1e-6)
    assert mask.tolist() == [True, True]


def test_chw_frames_and_absent_cameras():
    hwc = np.random.default_rng(2).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    from_hwc, _ = prepare_images(hwc, "HWC")
    from_chw, _ = prepare_images(np.ascontiguousarray(hwc.transpose(0, 3, 1, 2)), "CHW")
    np.testing.assert_array_equal(from_hwc, from_chw)

    absent, mask = prepare_images(np.zeros((2, 3, 0, 0), np.uint8), "CHW")
    assert mask.tolist() == [False, False] and not absent.any()


STATS = NormStats(
    mean=np.array([1.0, -2.0], np.float32), std=np.array([2.0, 0.5], np.float32),
    q01=np.array([0.0, -1.0], np.float32), q99=np.array([10.0, 1.0], np.float32),
)


def test_zscore_normalisation_by_hand():
    x = np.array([[5.0, -1.0]])
    # (5 - 1) / 2 = 2 and (-1 - -2) / 0.5 = 2 (up to the 1e-6 in the denominator)
    np.testing.assert_allclose(normalize(x, STATS, "zscore"), [[2.0, 2.0]], rtol=1e-5)


def test_quantile_normalisation_by_hand():
    x = np.array([[5.0, 1.0], [0.0, -1.0]])
    # midpoint of [q01, q99] -> 0, q99 -> 1, q01 -> -1
    np.testing.assert_allclose(normalize(x, STATS, "quantile"), [[0.0, 1.0], [-1.0, -1.0]], atol=1e-5)


@pytest.mark.parametrize("mode", ["zscore", "quantile"])
def test_unnormalize_inverts_normalize(mode):
    x = np.random.default_rng(3).normal(size=(4, 2)).astype(np.float32)
    np.testing.assert_allclose(unnormalize(normalize(x, STATS, mode), STATS, mode), x, atol=1e-5)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="zscore"):
        normalize(np.zeros((1, 2)), STATS, "minmax")  # type: ignore[arg-type]


def test_state_is_zero_padded_to_the_model_width():
    padded = pad_last_dim(np.ones((1, 8), np.float32), 32)
    assert padded.shape == (1, 32) and padded[0, :8].all() and not padded[0, 8:].any()


def test_prompt_cleaning_and_padding():
    assert clean_prompt("  pick_up the\nbowl ") == "pick up the bowl"
    ids, mask = tokenize_prompts(["ab"], ByteTokenizer(), 8)
    # BOS, 'a' (97 + 2), 'b' (98 + 2), '\n' (10 + 2), then padding
    assert ids[0].tolist() == [BOS_ID, 99, 100, 12, PAD_ID, PAD_ID, PAD_ID, PAD_ID]
    assert mask[0].tolist() == [True] * 4 + [False] * 4


def test_long_prompts_are_truncated():
    ids, mask = tokenize_prompts(["x" * 100], ByteTokenizer(), 48)
    assert ids.shape == (1, 48) and mask.all()
    assert ids[0, 0] == BOS_ID and (ids[0, 1:] == ord("x") + 2).all()


def test_noise_is_a_function_of_the_seed():
    a, b, c = flow_noise(np.array([[7], [7], [8]]), 50, 32)
    assert a.shape == (50, 32) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


# --- the code Triton's python backend imports runs on Python 3.10 (the 24.10 container) ------------

# Standard-library names that appeared in Python 3.11 or later.
NEWER_THAN_3_10 = {"tomllib", "Self", "StrEnum", "TaskGroup", "ExceptionGroup", "assert_never", "reveal_type",
                   "LiteralString", "Never", "Required", "NotRequired", "TypeVarTuple", "Unpack", "UTC"}


def _python_backend_sources() -> list[Path]:
    root = Path(__file__).resolve().parent.parent
    return sorted([*root.joinpath("openpi_policy").glob("*.py"), *root.joinpath("model_repository").rglob("*.py")])


@pytest.mark.parametrize("path", _python_backend_sources(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_python_backend_code_parses_as_python_3_10(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path), feature_version=(3, 10))
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    used |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    used |= {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
             for alias in node.names}
    assert not used & NEWER_THAN_3_10, f"{path}: uses {sorted(used & NEWER_THAN_3_10)}, new in Python 3.11+"

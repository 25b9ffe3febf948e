"""The shared transforms against values computed by hand and against openpi's own implementations."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from openpi_client import image_tools

from openpi_policy import transforms
from openpi_policy.tokenizer import BOS_ID, PAD_ID, ByteTokenizer, PromptCache, clean_prompt, tokenize_prompts
from openpi_policy.transforms import (
    NormStats,
    flow_noise,
    norm_table,
    pad_last_dim,
    prepare_images,
    resize_with_pad,
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


def test_prepare_images_keeps_uint8_hwc_frames_as_they_are():
    frames = np.random.default_rng(3).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    images, mask = prepare_images(frames)
    assert images.shape == (2, 224, 224, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, frames)
    assert mask.tolist() == [True, True]


def test_a_camera_at_model_size_skips_the_resize(monkeypatch):
    def no_resize(*args, **kwargs):
        raise AssertionError("resize_with_pad ran for a frame already at the model's size")

    monkeypatch.setattr(transforms, "resize_with_pad", no_resize)
    hwc = np.random.default_rng(4).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    np.testing.assert_array_equal(prepare_images(hwc)[0], hwc)
    np.testing.assert_array_equal(prepare_images(np.ascontiguousarray(hwc.transpose(0, 3, 1, 2)), "CHW")[0], hwc)
    with pytest.raises(AssertionError, match="already at the model's size"):  # the guard itself works
        prepare_images(np.zeros((1, 480, 640, 3), np.uint8))


def test_off_size_frames_are_resized_with_pad_in_either_layout():
    frame = np.random.default_rng(5).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    expected = image_tools.resize_with_pad(frame, 224, 224)
    np.testing.assert_array_equal(prepare_images(frame[None])[0][0], expected)
    np.testing.assert_array_equal(prepare_images(frame.transpose(2, 0, 1)[None], "CHW")[0][0], expected)


def test_chw_frames_and_absent_cameras():
    hwc = np.random.default_rng(2).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    from_hwc, _ = prepare_images(hwc, "HWC")
    from_chw, _ = prepare_images(np.ascontiguousarray(hwc.transpose(0, 3, 1, 2)), "CHW")
    np.testing.assert_array_equal(from_hwc, from_chw)

    absent, mask = prepare_images(np.zeros((2, 3, 0, 0), np.uint8), "CHW")
    assert mask.tolist() == [False, False] and not absent.any()


def normalize(x: np.ndarray, stats: NormStats, mode: str) -> np.ndarray:
    """What the core graph does with the preprocess's table (`openpi_policy.serving.Normalize`)."""
    center, scale = norm_table(stats, mode, stats.dim)  # type: ignore[arg-type]
    return (x - center) / scale


def unnormalize(y: np.ndarray, stats: NormStats, mode: str) -> np.ndarray:
    """What the core graph does to the actions (`openpi_policy.serving.Unnormalize`)."""
    center, scale = norm_table(stats, mode, stats.dim)  # type: ignore[arg-type]
    return y * scale + center


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


@pytest.mark.parametrize("mode", ["zscore", "quantile"])
def test_norm_table_is_openpis_formula_as_center_and_scale(mode):
    """The core applies (x - center) / scale; it must be openpi's formula, and identity on padding dims."""
    x = np.random.default_rng(6).normal(size=(5, 2)).astype(np.float32) * 3
    if mode == "zscore":
        openpi = (x - STATS.mean) / (STATS.std + 1e-6)
    else:
        openpi = (x - STATS.q01) / (STATS.q99 - STATS.q01 + 1e-6) * 2.0 - 1.0
    center, scale = norm_table(STATS, mode, 4)
    np.testing.assert_allclose((x - center[:2]) / scale[:2], openpi, rtol=1e-6, atol=1e-6)
    assert center[2:].tolist() == [0, 0] and scale[2:].tolist() == [1, 1]
    with pytest.raises(ValueError, match="more than the model's 1"):
        norm_table(STATS, mode, 1)


def test_norm_table_keeps_precision_where_the_mean_is_far_from_zero():
    """Centring before scaling: a joint near 3 rad with std 0.01 still normalises to float32 precision
    (x * (1/std) - mean/std would cancel two numbers near 300 and keep ~3e-5)."""
    stats = NormStats(mean=np.array([3.0], np.float32), std=np.array([0.01], np.float32),
                      q01=np.array([2.98], np.float32), q99=np.array([3.02], np.float32))
    x = np.float32(3.0123)
    center, scale = norm_table(stats, "zscore", 1)
    exact = (np.float64(x) - 3.0) / (np.float64(np.float32(0.01)) + 1e-6)
    assert abs(float((x - center[0]) / scale[0]) - exact) < 1e-5


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


def test_prompt_cache_is_bounded_and_returns_the_same_tokens():
    cache = PromptCache(ByteTokenizer(), 48, max_prompts=2)
    prompts = ["pick up the bowl", "open_the drawer", "  stack blocks\n"]
    expected = tokenize_prompts(prompts, ByteTokenizer(), 48)
    for _ in range(3):  # the second and third rounds come from the cache (or are re-made after eviction)
        ids, mask = cache(prompts)
        np.testing.assert_array_equal(ids, expected[0])
        np.testing.assert_array_equal(mask, expected[1])
        assert len(cache) <= 2
    # Most recently used stays: asking for the last prompt again is a hit, the first one was dropped.
    hits = cache.hits
    cache(["  stack blocks\n"])
    assert cache.hits == hits + 1
    misses = cache.misses
    cache(["pick up the bowl"])
    assert cache.misses == misses + 1
    # A batch's arrays are its own: changing them cannot change what the next request gets.
    ids, _ = cache(["pick up the bowl", "pick up the bowl"])
    ids[:] = 0
    np.testing.assert_array_equal(cache(["pick up the bowl"])[0][0], expected[0][0])


def test_a_repeated_prompt_is_tokenised_once():
    class CountingTokenizer(ByteTokenizer):
        calls = 0

        def encode(self, text: str, add_bos: bool = False) -> list[int]:
            CountingTokenizer.calls += 1
            return super().encode(text, add_bos)

    cache = PromptCache(CountingTokenizer(), 48)
    for _ in range(50):
        cache(["put the bowl on the plate"])
    assert CountingTokenizer.calls == 2  # the prompt and the trailing newline, on the first step only


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

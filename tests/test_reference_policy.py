"""The exported reference policy: shape, reproducibility, and a graph TensorRT 10 can parse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from openpi_policy import spec
from openpi_policy.core import SPINNING_ENV, SPLIT_ENV, OnnxRuntimeCore
from openpi_policy.export import example_inputs, export_reference_policy

# Operators of the exported graph that TensorRT 10's ONNX parser supports. Control flow
# (Loop, If, Scan) and anything data-dependent stay out: the Euler steps are unrolled.
TENSORRT_OPS = {
    "Add", "Cast", "Concat", "Constant", "ConstantOfShape", "Conv", "Div", "Equal", "Erf", "Expand",
    "Flatten", "Gather", "Gemm", "Identity", "LayerNormalization", "MatMul", "Mod", "Mul", "Reshape",
    "Shape", "Sigmoid", "Slice", "Softmax", "Split", "Squeeze", "Sub", "Transpose", "Unsqueeze", "Where",
}


def test_graph_interface_and_operators(model_onnx: Path):
    model = onnx.load(str(model_onnx))
    assert model.opset_import[0].version >= 17
    ops = {node.op_type for node in model.graph.node}
    assert ops <= TENSORRT_OPS, f"operators TensorRT may not parse: {ops - TENSORRT_OPS}"
    assert [i.name for i in model.graph.input] == list(spec.CORE_INPUTS)
    for tensor in [*model.graph.input, *model.graph.output]:
        assert tensor.type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch


@pytest.mark.parametrize("batch", [1, 3])
def test_actions_have_the_core_shape(model_onnx: Path, batch: int):
    (actions,) = _session(model_onnx).run(None, example_inputs(batch))
    assert actions.shape == (batch, spec.ACTION_HORIZON, spec.ACTION_DIM)
    assert actions.dtype == np.float32 and np.isfinite(actions).all()


def test_export_is_reproducible_and_seeded(model_onnx: Path, tmp_path: Path):
    inputs = example_inputs(2)
    shipped = _session(model_onnx).run(None, inputs)[0]
    again = _session(export_reference_policy(tmp_path / "again.onnx", seed=0)).run(None, inputs)[0]
    other = _session(export_reference_policy(tmp_path / "other.onnx", seed=1)).run(None, inputs)[0]
    np.testing.assert_array_equal(shipped, again)
    assert not np.allclose(shipped, other)


def test_noise_and_masks_reach_the_actions(model_onnx: Path):
    session = _session(model_onnx)
    inputs = example_inputs(1)
    base = session.run(None, inputs)[0]
    for name, change in [("noise", lambda x: x + 1), ("image_masks", lambda x: ~x), ("tokens", lambda x: x + 1)]:
        varied = dict(inputs, **{name: change(inputs[name])})
        assert not np.allclose(session.run(None, varied)[0], base), f"{name} does not affect the actions"


@pytest.mark.parametrize(("value", "expected"), [(None, "0"), ("1", "1")])
def test_core_workers_sleep_unless_spinning_is_asked_for(model_onnx: Path, monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(SPINNING_ENV, raising=False)
    else:
        monkeypatch.setenv(SPINNING_ENV, value)
    options = _session(model_onnx).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == expected


def test_a_bad_spinning_setting_is_named(model_onnx: Path, monkeypatch):
    monkeypatch.setenv(SPINNING_ENV, "yes")
    with pytest.raises(ValueError, match="OPENPI_TRITON_ORT_SPINNING must be 0 or 1, got 'yes'"):
        _session(model_onnx)


@pytest.mark.parametrize(("threads", "rows"), [(2, 2), (2, 5), (3, 3), (3, 7), (3, 2)])
def test_a_batch_split_over_threads_gets_the_whole_batch_answer(model_onnx: Path, monkeypatch, threads, rows):
    monkeypatch.delenv(SPLIT_ENV, raising=False)
    core = OnnxRuntimeCore(model_onnx, threads=threads)
    assert len(core.shard_sessions) == threads
    inputs = example_inputs(rows, seed=rows)
    whole = core.session.run(["actions"], inputs)[0]
    np.testing.assert_allclose(core(inputs), whole, rtol=0, atol=1e-6)


def test_splitting_can_be_turned_off(model_onnx: Path, monkeypatch):
    monkeypatch.setenv(SPLIT_ENV, "0")
    core = OnnxRuntimeCore(model_onnx, threads=2)
    assert core.shard_sessions == []
    assert core(example_inputs(4)).shape == (4, *spec.CORE_OUTPUTS["actions"][1])
    monkeypatch.setenv(SPLIT_ENV, "on")
    with pytest.raises(ValueError, match="OPENPI_TRITON_ORT_SPLIT must be 0 or 1, got 'on'"):
        OnnxRuntimeCore(model_onnx, threads=2)


def _session(path: Path):
    return OnnxRuntimeCore(path).session

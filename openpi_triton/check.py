"""`openpi-triton check`: find what is wrong with a model repository before Triton or a robot does.

Checks every policy (a model whose config has `policy_server_config`): its parameters parse as the
front will read them (an `output_map` slice fits the output), each ensemble step's tensors exist with
the same dtype and shape on both sides, the preprocess settings load (norm stats included) and agree
with the declared state inputs and with the action dims the robot gets (the slice), and the policy
core's runtime settings parse and, when it runs ONNX Runtime, its model.onnx matches its config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openpi_policy.core_config import core_settings
from openpi_policy.pipeline import Preprocessor
from openpi_triton.config import CPU_CONFIG_NAME, core_onnx_path
from openpi_triton.triton.policy import Policy, PolicyConfigError, is_policy, policy_from_config
from openpi_triton.triton.repository import config_path, read_model_config

ONNX_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64"}


@dataclass
class Report:
    policies: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _load_models(repository: Path, config_name: str, report: Report) -> dict[str, tuple[Path, dict[str, Any]]]:
    models = {}
    for directory in sorted(p for p in repository.iterdir() if p.is_dir()):
        path = config_path(directory, config_name)
        if not path.exists():
            if not directory.name.startswith("."):
                report.problems.append(f"{directory}: no config.pbtxt, so tritonserver refuses to start; delete the "
                                       "directory if it is a model an older checkout left behind (only __pycache__)")
            continue
        try:
            config = read_model_config(path)
        except Exception as error:  # protobuf's text-format errors name the line and column
            report.problems.append(f"{path}: does not parse: {error}")
            continue
        models[config.get("name", directory.name)] = (path, config)
    return models


def _tensors(config: dict[str, Any], kind: str) -> dict[str, tuple[str, list[int]]]:
    return {t["name"]: (t["data_type"], [int(d) for d in t.get("dims", [])]) for t in config.get(kind, [])}


def _check_ensemble(path: Path, config: dict[str, Any], models: dict[str, tuple[Path, dict]], report: Report) -> None:
    available = _tensors(config, "input")  # tensors flowing through the ensemble, by ensemble name
    for step in config.get("ensemble_scheduling", {}).get("step", []):
        model = step["model_name"]
        if model not in models:
            report.problems.append(f"{path}: step uses model {model!r}, which is not in the repository")
            return
        step_config = models[model][1]
        inputs, outputs = _tensors(step_config, "input"), _tensors(step_config, "output")
        for model_input, tensor in step.get("input_map", {}).items():
            if model_input not in inputs:
                report.problems.append(f"{path}: step {model!r} has no input {model_input!r}")
            elif tensor not in available:
                report.problems.append(f"{path}: step {model!r} input {model_input!r} reads {tensor!r}, "
                                       "which no earlier step or ensemble input provides")
            elif available[tensor] != inputs[model_input]:
                report.problems.append(f"{path}: {tensor!r} is {available[tensor]} but {model!r} input "
                                       f"{model_input!r} expects {inputs[model_input]}")
        for model_output, tensor in step.get("output_map", {}).items():
            if model_output not in outputs:
                report.problems.append(f"{path}: step {model!r} has no output {model_output!r}")
            else:
                available[tensor] = outputs[model_output]
    for name, declared in _tensors(config, "output").items():
        if name in available and available[name] != declared:
            report.problems.append(f"{path}: output {name!r} is declared {declared} but the last step "
                                   f"produces {available[name]}")
        elif name not in available:
            report.problems.append(f"{path}: output {name!r} is produced by no step")


def _parameter(config: dict[str, Any], key: str) -> str | None:
    return config.get("parameters", {}).get(key, {}).get("string_value")


def _model_dir(path: Path) -> Path:
    return path.parent if path.parent.name != "configs" else path.parent.parent


def _check_processing(models: dict[str, tuple[Path, dict]], report: Report) -> dict[str, Preprocessor]:
    """Load every preprocess model's settings as Triton would, then compare shapes; returns them by model."""
    loaded = {}
    for name, (path, config) in models.items():
        if _parameter(config, "preprocess") is None:
            continue
        try:
            pre = Preprocessor.from_model_config(config, _model_dir(path))
        except (ValueError, KeyError, TypeError, OSError) as error:
            report.problems.append(f"{path}: {type(error).__name__}: {error}")
            continue
        loaded[name] = pre
        inputs = _tensors(config, "input")
        state_dims = sum(math.prod(inputs[i][1]) for i in pre.config.state_inputs if i in inputs)
        missing = [i for i in pre.input_names if i not in inputs]
        if missing:
            report.problems.append(f"{path}: preprocess reads inputs {missing} the config does not declare")
        elif state_dims != pre.state_stats.dim:
            report.problems.append(f"{path}: state inputs have {state_dims} dims but "
                                   f"{pre.config.norm_stats} has {pre.state_stats.dim} for 'state'")
    return loaded


def _check_action_dims(path: Path, config: dict[str, Any], policy: Policy, preprocessors: dict[str, Preprocessor],
                       report: Report) -> None:
    """The action dims a robot gets (on the last axis of `actions`: the union of its response keys' cuts, such
    as an arm's and a gripper's, or the whole output for a key without a slice) are exactly those of the
    'actions' norm stats its preprocess un-normalises with: dims past them would reach the robot as the
    network's padding, never un-normalised."""
    declared = {name: dims for name, (_, dims) in _tensors(config, "output").items()}
    if len(declared.get("actions", [])) != 2:
        return
    keys = [key for key, output in policy.outputs.items() if output == "actions"]
    covered: set[int] = set()
    given = []
    for key in keys:
        cut = policy.cut(key)
        last = cut[1] if len(cut) == 2 else slice(0, declared["actions"][-1])
        covered |= set(range(last.start, last.stop))
        if key not in policy.slices:
            given.append(f"{key!r} output (no slice) {declared['actions']}")
        else:
            offset = f" at offset {list(policy.offsets[key])}" if key in policy.offsets else ""
            given.append(f"{key!r} slice {list(policy.slices[key])}{offset}")
    dims = f"{len(covered)} action dims" if covered == set(range(len(covered))) else f"action dims {sorted(covered)}"
    steps = [step["model_name"] for step in config.get("ensemble_scheduling", {}).get("step", [])]
    for pre in (preprocessors[step] for step in steps if step in preprocessors):
        if keys and covered != set(range(pre.action_stats.dim)):
            report.problems.append(f"{path}: output_map {', '.join(given)} {'give' if len(keys) > 1 else 'gives'} "
                                   f"{dims} but {pre.config.norm_stats} has {pre.action_stats.dim} for 'actions'")


def _check_core(repository: Path, models: dict[str, tuple[Path, dict]], report: Report) -> None:
    """The policy core's runtime settings parse; one that runs model.onnx has a model.onnx that matches."""
    if "policy_core" not in models:
        return
    path, config = models["policy_core"]
    try:
        torch_settings = core_settings(config)
    except ValueError as error:
        report.problems.append(f"{path}: {error}")
        return
    if torch_settings is None:
        _check_onnx(repository, path, config, report)


def _check_onnx(repository: Path, path: Path, config: dict[str, Any], report: Report) -> None:
    onnx_path = core_onnx_path(repository)
    if not onnx_path.exists():
        report.problems.append(f"{onnx_path}: missing; run `openpi-triton export` or copy your own ONNX there")
        return
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    declared = _tensors(config, "input") | _tensors(config, "output")
    for value in [*graph.input, *graph.output]:
        if value.name not in declared:
            report.problems.append(f"{onnx_path}: tensor {value.name!r} is not in {path.name}")
            continue
        dtype, dims = declared[value.name]
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
        onnx_type = ONNX_TYPES.get(value.type.tensor_type.elem_type, str(value.type.tensor_type.elem_type))
        # A symbolic ONNX dim (-1) is fine where the config is fixed: TensorRT resolves it.
        dims_agree = len(shape) == len(dims) + 1 and all(o in (-1, c) for o, c in zip(shape[1:], dims, strict=True))
        if onnx_type != dtype or not dims_agree or shape[0] != -1:
            report.problems.append(f"{onnx_path}: {value.name!r} is {onnx_type} {shape} in the ONNX but "
                                   f"{dtype} [batch, {', '.join(map(str, dims))}] in {path.name}")


def check_repository(repository: Path, config_name: str = CPU_CONFIG_NAME) -> Report:
    report = Report()
    if not repository.is_dir():
        report.problems.append(f"{repository}: no such directory")
        return report
    models = _load_models(repository, config_name, report)
    preprocessors = _check_processing(models, report)
    for name, (path, config) in models.items():
        if not is_policy(config):
            continue
        try:
            policy = policy_from_config(config)
            report.policies.append(name)
        except PolicyConfigError as error:
            report.problems.append(f"{path}: {error}")
            policy = None
        if config.get("platform") == "ensemble":
            _check_ensemble(path, config, models, report)
            if policy is not None:
                _check_action_dims(path, config, policy, preprocessors, report)
    if not report.policies and not report.problems:
        report.problems.append(f"{repository}: no model has a 'policy_server_config' parameter, so nothing is served")
    _check_core(repository, models, report)
    return report

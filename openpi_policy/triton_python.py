"""Triton python-backend models, kept here so each `model.py` in the repository is one import.

Every model handles all the requests of one `execute` call as a single batch: inputs are stacked,
the work runs once, and the outputs are split back per request. An exception fails every request
of that call with a Triton error (the server and other calls are unaffected).

This module imports `triton_python_backend_utils`, which exists only inside Triton's python stub.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from openpi_policy.core import OnnxRuntimeCore
from openpi_policy.core_config import config_device, core_settings
from openpi_policy.history import SessionHistory
from openpi_policy.pipeline import Preprocessor, model_parameter


def _model_dir(args: dict[str, str]) -> Path:
    return Path(args["model_repository"])


def _as_numpy(tensor: Any) -> np.ndarray:
    return tensor.as_numpy()


def _run_batched(
    requests: Sequence[Any],
    input_names: Sequence[str],
    output_names: Sequence[str],
    work: Callable[[list[dict[str, Any]]], dict[str, Any]],
    read: Callable[[Any], Any] = _as_numpy,
    wrap: Callable[[str, Any], Any] | None = None,
) -> list[Any]:
    """`read` turns each input into what `work` takes (NumPy arrays by default), `wrap` each request's rows
    of an output into a pb_utils.Tensor (pb_utils.Tensor itself by default, which the stub defines only
    after it has imported the model)."""
    wrap = wrap or pb_utils.Tensor
    try:
        inputs = [
            {name: read(pb_utils.get_input_tensor_by_name(request, name)) for name in input_names}
            for request in requests
        ]
        outputs = work(inputs)
    except Exception as error:  # one bad batch must not take the model down
        message = pb_utils.TritonError(f"{type(error).__name__}: {error}")
        return [pb_utils.InferenceResponse(error=message) for _ in requests]

    responses, start = [], 0
    for request_inputs in inputs:
        size = len(next(iter(request_inputs.values())))
        tensors = [wrap(name, outputs[name][start : start + size]) for name in output_names]
        responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        start += size
    return responses


class PreprocessModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.preprocessor = Preprocessor.from_model_config(config, _model_dir(args))
        self.output_names = [output["name"] for output in config["output"]]

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        return _run_batched(requests, self.preprocessor.input_names, self.output_names, self.preprocessor)


class HistoryPreprocessModel:
    """A stateful preprocess (Triton `sequence_batching` with START, END and CORRID control inputs): each
    camera's frame joins its session's history (`openpi_policy.history`), whose mosaic the preprocess then
    takes as that camera; the output `frames_output` says how many frames of history each answer saw, and
    `held_output` (when the config declares it) how many sessions the model holds after the call. A new
    prompt restarts the history, as DreamZero's does. Requests of different sessions in one `execute` are
    still one batch.

    The `history` parameter: {"depth": 4, "max_sessions": 128, "frames_output": "frames",
    "held_output": "held_sessions"}."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.preprocessor = Preprocessor.from_model_config(config, _model_dir(args))
        settings = json.loads(model_parameter(config, "history"))
        self.cameras = [camera.input for camera in self.preprocessor.config.cameras if camera is not None]
        self.history = SessionHistory(self.cameras, int(settings.get("depth", 4)),
                                      int(settings.get("max_sessions", 128)))
        self.frames_output = settings.get("frames_output", "frames")
        self.held_output = settings.get("held_output", "held_sessions")
        self.output_names = [output["name"] for output in config["output"]]

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        def work(inputs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
            seen, held = [], []
            prompt = self.preprocessor.config.prompt_input
            for request in inputs:
                sequence, start, end = (int(request[name].reshape(-1)[0]) for name in ("CORRID", "START", "END"))
                context = request[prompt].reshape(-1)[0] if prompt else None
                mosaics, frames = self.history.add(sequence, bool(start),
                                                   {camera: request[camera][0] for camera in self.cameras}, context)
                request.update({camera: mosaic[None] for camera, mosaic in mosaics.items()})
                if end:
                    self.history.end(sequence)
                seen.append(frames)
                held.append(len(self.history))
            outputs = self.preprocessor(inputs)
            outputs[self.frames_output] = np.array(seen, np.int32).reshape(-1, 1)
            outputs[self.held_output] = np.array(held, np.int32).reshape(-1, 1)
            return outputs

        # A robot's unusable frame fails its own request only: the other robots of the batch, and every
        # session's history, never see it.
        problems = [self._problem(request) for request in requests]
        usable = [request for request, problem in zip(requests, problems, strict=True) if problem is None]
        names = [*self.preprocessor.input_names, "CORRID", "START", "END"]
        answers = iter(_run_batched(usable, names, self.output_names, work) if usable else [])
        return [next(answers) if problem is None else pb_utils.InferenceResponse(error=pb_utils.TritonError(problem))
                for problem in problems]

    def _problem(self, request: Any) -> str | None:
        for camera in self.cameras:
            shape = pb_utils.get_input_tensor_by_name(request, camera).as_numpy().shape
            if len(shape) != 4 or shape[0] != 1 or 0 in shape:
                return f"camera {camera!r}: expected one [H, W, 3] frame, got shape {list(shape[1:])}"
        return None


class PolicyCoreModel:
    """The policy core in the runtime its config's `core` parameter names (`openpi_policy.core`)."""

    def initialize(self, args: dict[str, str]) -> None:
        torch_settings = core_settings(json.loads(args["model_config"]))
        self.runtime = OnnxRuntimeModel() if torch_settings is None else TorchModel()
        self.runtime.initialize(args)

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        return self.runtime.execute(requests)


class OnnxRuntimeModel:
    """`model.onnx` in ONNX Runtime on the CPU, one session run per `execute`."""

    def initialize(self, args: dict[str, str]) -> None:
        self.core = OnnxRuntimeCore(_model_dir(args) / args["model_version"] / "model.onnx")

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        def work(inputs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
            if len(inputs) == 1:  # a lone robot: its tensors as they are, no concatenated copy
                return {"actions": self.core(inputs[0])}
            feeds = {name: np.concatenate([i[name] for i in inputs]) for name in self.core.input_names}
            return {"actions": self.core(feeds)}

        return _run_batched(requests, self.core.input_names, ["actions"], work)


class TorchModel:
    """The network in PyTorch on this instance's device (`openpi_policy.torch_core`).

    Tensors cross by DLPack both ways: each input is a view of the request's memory, copied once into the
    core's batch buffers; each response's actions are a view of the batch's actions on the CPU."""

    def initialize(self, args: dict[str, str]) -> None:
        from openpi_policy.torch_core import build_torch_core

        config = json.loads(args["model_config"])
        device = "cpu"
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        elif config_device(config) == "cuda":
            raise RuntimeError("the policy core's config asks for a GPU, but Triton gave this instance none")
        self.core = build_torch_core(core_settings(config), device, int(config["max_batch_size"]))
        pb_utils.Logger.log_info(f"policy_core: {self.core.description}")

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        from torch.utils import dlpack

        def work(inputs: list[dict[str, Any]]) -> dict[str, Any]:
            return {"actions": self.core.run(inputs)}

        return _run_batched(requests, self.core.input_names, ["actions"], work,
                            read=lambda tensor: dlpack.from_dlpack(tensor.to_dlpack()),
                            wrap=lambda name, rows: pb_utils.Tensor.from_dlpack(name, dlpack.to_dlpack(rows)))

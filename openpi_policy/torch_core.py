"""The policy core in PyTorch (`policy_core/configs/gpu_torch.pbtxt`): the network inside the serving wrapper,
on CUDA in float16 with one CUDA graph per batch size, or on CPU in float32 (tests, hosts without a GPU).

Nothing is exported: the network is built from code (the reference policy's weights are seeded, so it is
the network in `model.onnx`), which is what lets a GPU without TensorRT serve it.

Batches go through static buffers of `max_batch` rows, one per core input. A batch of n rows is copied
into them (on CUDA: per request into pinned host memory, then one host-to-device copy per input) and runs
at the smallest batch size with a graph that holds it, the extra rows being whatever the buffers hold
from before: every row of the network is computed independently of the others, and their actions are
never read. Without graphs (CPU) a batch runs at its own size.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from openpi_policy import spec
from openpi_policy.core_config import TorchCoreSettings
from openpi_policy.export import example_inputs
from openpi_policy.serving import ServingPolicy

# Largest |float16 - float32| allowed per action (atol + rtol * |float32 action|). On the development CPU
# (PyTorch 2.13 float16 against ONNX Runtime float32, batches of 4 with an action scale of 2) the largest
# difference was 0.012 for actions up to 7.9, the mean 0.001 (tests/test_torch_core.py checks it).
FP16_TOLERANCE = {"rtol": 2e-2, "atol": 2e-2}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Warm-up runs before a capture: lazy initialisation (cuBLAS handles, autotuning) must not be captured.
WARMUP_RUNS = 3


def build_network(settings: TorchCoreSettings) -> torch.nn.Module:
    module, _, function = settings.network.partition(":")
    return getattr(importlib.import_module(module), function)()


def build_torch_core(settings: TorchCoreSettings, device: str, max_batch: int) -> TorchCore:
    """The core a Triton instance (or the in-process reference) runs on `device` ("cuda:0", "cpu")."""
    target = torch.device(device)
    on_cuda = target.type == "cuda"
    dtype = DTYPES[settings.precision] if on_cuda else torch.float32
    graphs = None
    if on_cuda and settings.cuda_graphs:
        graphs = settings.graph_batches or tuple(range(1, max_batch + 1))
    return TorchCore(build_network(settings), target, dtype, max_batch, graphs)


class TorchCore:
    """Core inputs (`spec.CORE_INPUTS`) -> un-normalised actions, in PyTorch on one device.

    `static_batches`: batch sizes to run through the static buffers (CUDA graphs on CUDA, captured here;
    eager elsewhere, which tests use to exercise the padding on CPU); None runs every batch eagerly at
    its own size."""

    def __init__(self, network: torch.nn.Module, device: torch.device, dtype: torch.dtype = torch.float32,
                 max_batch: int = 64, static_batches: Sequence[int] | None = None) -> None:
        self.device, self.dtype, self.max_batch = torch.device(device), dtype, max_batch
        self.input_names = list(spec.CORE_INPUTS)
        self.model = ServingPolicy(network.to(device=self.device, dtype=dtype),
                                   None if dtype == torch.float32 else dtype).eval()
        self.batches = tuple(sorted({b for b in static_batches or () if b <= max_batch}))
        if static_batches is not None and max_batch not in self.batches:
            self.batches += (max_batch,)  # every batch Triton forms fits in some static size
        self.buffers: dict[str, torch.Tensor] = {}
        self.staging: dict[str, torch.Tensor] = {}
        self.graphs: dict[int, tuple[Any, torch.Tensor]] = {}  # batch -> (CUDA graph, its output buffer)
        if self.batches:
            self._allocate()
            if self.device.type == "cuda":
                self._capture()

    @property
    def description(self) -> str:
        graphs = f"CUDA graphs for batch {_ranges(self.graphs)}" if self.graphs else "no CUDA graphs"
        return f"PyTorch {torch.__version__} on {self.device}, {str(self.dtype).removeprefix('torch.')}, {graphs}"

    def _allocate(self) -> None:
        # Valid inputs, not garbage: the rows past a batch run too (their outputs are dropped).
        example = example_inputs(self.max_batch)
        for name in self.input_names:
            host = torch.from_numpy(example[name])
            self.buffers[name] = host.to(self.device)
            if self.device.type == "cuda":
                self.staging[name] = host.pin_memory()

    @torch.inference_mode()
    def _capture(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for batch in self.batches:
                for _ in range(WARMUP_RUNS):
                    self._eager(batch)
        torch.cuda.current_stream(self.device).wait_stream(side)
        # Largest first, sharing one memory pool: the smaller graphs reuse the largest one's memory (their
        # replays never overlap: one stream, one execute at a time).
        for batch in sorted(self.batches, reverse=True):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                output = self._eager(batch)
            self.graphs[batch] = (graph, output)
        torch.cuda.synchronize(self.device)

    def _eager(self, batch: int) -> torch.Tensor:
        return self.model(*(self.buffers[name][:batch] for name in self.input_names))

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Batched NumPy inputs (the in-process pipeline's core) -> actions [B, 50, 32] float32."""
        tensors = {name: torch.from_numpy(np.ascontiguousarray(inputs[name])) for name in self.input_names}
        rows = len(tensors[self.input_names[0]])
        chunks = [self.run([{n: t[start:start + self.max_batch] for n, t in tensors.items()}])
                  for start in range(0, rows, self.max_batch)]
        return torch.cat(chunks).numpy()

    @torch.inference_mode()
    def run(self, requests: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
        """Requests' CPU tensors (each with a batch axis; at most `max_batch` rows in all), as one batch ->
        actions, float32 on the CPU, the requests' rows in order."""
        rows = sum(len(request[self.input_names[0]]) for request in requests)
        if not self.batches:
            feeds = [torch.cat([r[name] for r in requests]) if len(requests) > 1 else requests[0][name]
                     for name in self.input_names]
            return self.model(*(x.to(self.device) for x in feeds)).to("cpu", torch.float32)
        if rows > self.max_batch:
            raise ValueError(f"{rows} rows in one batch, but the core holds {self.max_batch} (max_batch_size)")
        batch = next(b for b in self.batches if b >= rows)
        for name in self.input_names:
            target = self.staging.get(name, self.buffers[name])
            start = 0
            for request in requests:
                part = request[name]
                target[start:start + len(part)].copy_(part)
                start += len(part)
            if name in self.staging:
                self.buffers[name][:rows].copy_(target[:rows], non_blocking=True)
        if batch in self.graphs:
            graph, output = self.graphs[batch]
            graph.replay()
        else:
            output = self._eager(batch)
        # The copy to the CPU waits for the replay, and with it for the pinned buffers' copies above.
        return output[:rows].to("cpu", torch.float32)


def _ranges(batches: Mapping[int, Any]) -> str:
    sizes = sorted(batches)
    return f"{sizes[0]}…{sizes[-1]}" if sizes == list(range(sizes[0], sizes[-1] + 1)) and len(sizes) > 2 \
        else ", ".join(map(str, sizes))

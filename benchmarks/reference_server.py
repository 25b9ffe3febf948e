"""OpenPI's reference `WebsocketPolicyServer` (the `openpi-server` package) serving the same policy
in-process: the same preprocess objects and the same policy core as Triton's for `--config-name`
(ONNX Runtime on the same `model.onnx`, or the PyTorch core on the same GPU; `ReferencePipeline`), with
the observation -> tensor mapping taken from the ensemble's config.

Run as `python -m benchmarks.reference_server --port 8765`; the side-by-side benchmark starts it in
a subprocess so that it has its own interpreter, as it would in production.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from openpi_client.base_policy import BasePolicy

from benchmarks.arguments import add_flags
from openpi_triton.config import CPU_CONFIG_NAME, DEFAULT_POLICY, FRONT_PORT
from openpi_triton.front.codec import flatten
from openpi_triton.front.observations import observation_to_tensors, unbatch
from openpi_triton.triton.reference import load_reference_pipeline
from openpi_triton.triton.repository import policy_from_repository


class ReferencePolicy(BasePolicy):
    """An OpenPI policy object: observation dict in, `{"actions": [H, D], "policy_timing": ...}` out."""

    def __init__(self, model_repository: Path, policy: str, threads: int = 0, config_name: str = CPU_CONFIG_NAME,
                 device: str | None = None) -> None:
        self.policy = policy_from_repository(model_repository, policy)
        if len(self.policy.outputs) != 1:
            raise ValueError(f"policy {policy!r}: the reference pipeline produces one output (actions), "
                             f"the ensemble declares {sorted(self.policy.outputs)}")
        self.pipeline = load_reference_pipeline(model_repository, policy, threads, config_name, device)
        self.metadata: dict[str, Any] = self.policy.metadata

    def infer(self, obs: dict) -> dict:
        started = time.monotonic()
        observation = flatten(obs)  # nested maps become "a/b" keys, as the front flattens them
        seed = observation.pop("seed", None)
        tensors = observation_to_tensors(self.policy, observation, None if seed is None else int(seed))
        (output_name,) = self.policy.outputs.values()
        result: dict[str, Any] = unbatch(self.policy, {output_name: self.pipeline(tensors)})
        result["policy_timing"] = {"infer_ms": (time.monotonic() - started) * 1000}
        return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser, "model-repository", "policy", policy=DEFAULT_POLICY)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=FRONT_PORT)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: one per core)")
    parser.add_argument("--config-name", default=CPU_CONFIG_NAME, help="policy core config variant to run")
    parser.add_argument("--device", help="the PyTorch core's device (default: where the config runs it)")
    args = parser.parse_args(argv)

    from openpi_server import WebsocketPolicyServer

    logging.basicConfig(level=logging.WARNING)
    policy = ReferencePolicy(args.model_repository, args.policy, args.threads, args.config_name, args.device)
    WebsocketPolicyServer(policy, host=args.host, port=args.port, metadata=policy.metadata).serve_forever()


if __name__ == "__main__":
    main()

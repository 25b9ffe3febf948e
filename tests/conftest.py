"""Shared fixtures: the exported reference policy and one real tritonserver for the session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from frontend.embedded_triton import EmbeddedTriton, free_port

ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = ROOT / "model_repository"
TEST_MODEL_REPOSITORY = Path(__file__).resolve().parent / "model_repository"
MODEL_ONNX = MODEL_REPOSITORY / "policy_core" / "1" / "model.onnx"


@pytest.fixture(scope="session")
def model_onnx() -> Path:
    """The policy core's model.onnx (exported from code when missing; `make test` exports it first)."""
    if not MODEL_ONNX.exists():
        from openpi_policy.export import export_reference_policy

        export_reference_policy(MODEL_ONNX)
    return MODEL_ONNX


@pytest.fixture(scope="session")
def triton(model_onnx: Path) -> Iterator[EmbeddedTriton]:
    """A real tritonserver (the nvidia-pytriton binary) on the CPU configuration, on free ports."""
    repositories = [MODEL_REPOSITORY]
    if TEST_MODEL_REPOSITORY.is_dir():
        repositories.append(TEST_MODEL_REPOSITORY)
    server = EmbeddedTriton(
        repositories, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )
    with server:
        yield server

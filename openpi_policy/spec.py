"""The policy core's tensor interface: one place for the names and shapes every part agrees on.

The preprocess models produce these tensors, the policy core (ONNX / TensorRT) consumes them, and
the reference export writes them into `model.onnx`. All shapes exclude the batch axis.
"""

from __future__ import annotations

NUM_CAMERAS = 3
IMAGE_SIZE = 224
STATE_DIM = 32
MAX_TOKEN_LEN = 48
ACTION_HORIZON = 50
ACTION_DIM = 32
NUM_FLOW_STEPS = 10

# name -> (numpy dtype name, shape without batch)
CORE_INPUTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "images": ("float32", (NUM_CAMERAS, 3, IMAGE_SIZE, IMAGE_SIZE)),
    "image_masks": ("bool", (NUM_CAMERAS,)),
    "state": ("float32", (STATE_DIM,)),
    "tokens": ("int64", (MAX_TOKEN_LEN,)),
    "token_mask": ("bool", (MAX_TOKEN_LEN,)),
    "noise": ("float32", (ACTION_HORIZON, ACTION_DIM)),
}
CORE_OUTPUTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "actions": ("float32", (ACTION_HORIZON, ACTION_DIM)),
}

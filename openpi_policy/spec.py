"""The policy core's tensor interface: one place for the names and shapes every part agrees on.

The preprocess models produce these tensors, the policy core (ONNX / TensorRT) consumes them, and
the reference export writes them into `model.onnx`. All shapes exclude the batch axis.

Camera pixels cross every boundary once, as the uint8 HWC frames robots send: converting them to
float in [-1, 1] (4x the bytes) and to CHW happens inside the core graph, on the GPU when there is
one. So do the state's normalisation and the actions' un-normalisation: per-dimension affine maps
whose coefficients come in with each request (`NORM_ROWS`), because one core serves every robot
format and each format has its own norm stats. The robot's horizon and action dims are a slice the
front takes of `actions` (the ensemble's `output_map`), so no python step runs after the core.
"""

from __future__ import annotations

NUM_CAMERAS = 3
IMAGE_SIZE = 224
STATE_DIM = 32
MAX_TOKEN_LEN = 48
ACTION_HORIZON = 50
ACTION_DIM = 32
NUM_FLOW_STEPS = 10

# Rows of `state_norm` and `action_norm`: normalised = (x - center) / scale and x = normalised * scale +
# center, per dimension. Dimensions a robot does not have (padding up to 32) get center 0, scale 1.
NORM_ROWS = ("center", "scale")

# name -> (numpy dtype name, shape without batch); the ONNX graph's inputs in this order.
CORE_INPUTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "images": ("uint8", (NUM_CAMERAS, IMAGE_SIZE, IMAGE_SIZE, 3)),
    "image_masks": ("bool", (NUM_CAMERAS,)),
    "state": ("float32", (STATE_DIM,)),
    "state_norm": ("float32", (len(NORM_ROWS), STATE_DIM)),
    "tokens": ("int64", (MAX_TOKEN_LEN,)),
    "token_mask": ("bool", (MAX_TOKEN_LEN,)),
    "noise": ("float32", (ACTION_HORIZON, ACTION_DIM)),
    "action_norm": ("float32", (len(NORM_ROWS), ACTION_DIM)),
}
CORE_OUTPUTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "actions": ("float32", (ACTION_HORIZON, ACTION_DIM)),
}
# The inputs that carry NORM_ROWS tables.
NORM_INPUTS = ("state_norm", "action_norm")

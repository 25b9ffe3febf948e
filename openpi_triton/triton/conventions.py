"""How a policy's answers look on the wire, read from its `answer_convention` parameter (JSON):

    {"handshake": "metadata" | "roboarena",
     "infer": "map" | "bare" | {"openpi": ..., "msgpack_numpy": ...},
     "reset": "map" | "text" | {"openpi": ..., "msgpack_numpy": ...},
     "bare_output": "actions"}

- `handshake`: the first frame is `policy_server_config` as written (`metadata`, the default), or a
  RoboArena `PolicyServerConfig`, whose fields are then checked here (`roboarena`); a RoboArena handshake
  with `needs_session_id: true` makes `session_id` required on every `infer`.
- `infer`: the policy's named outputs in a map with `server_timing` (`map`, OpenPI's and vllm-omni's
  answer, the default), or the bare array of one output, `bare_output` (`bare`, RoboArena's).
- `reset`: the msgpack map `{"status": "reset successful"}` (`map`, the default) or the text frame
  "reset successful" (`text`, RoboArena's).
`infer` and `reset` may instead name one form per client encoding, the array markers its frames use:
openpi-client's (`openpi`) or the msgpack-numpy package's (`msgpack_numpy`). RoboArena's evaluation client
(openpi markers) reads a bare array where MolmoSpaces' DreamZero client (msgpack-numpy) reads
`result["actions"]`, so one policy can serve both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ENCODINGS = ("openpi", "msgpack_numpy")
INFER_FORMS = ("map", "bare")
RESET_FORMS = ("map", "text")
HANDSHAKES = ("metadata", "roboarena")
# RoboArena's PolicyServerConfig: each field and the check its value must pass.
ROBOARENA_FIELDS: dict[str, tuple[str, Any]] = {
    "image_resolution": ("null or [height, width] of positive integers",
                         lambda v: v is None or (isinstance(v, list) and len(v) == 2
                                                 and all(isinstance(n, int) and n > 0 for n in v))),
    "needs_wrist_camera": ("true or false", lambda v: isinstance(v, bool)),
    "n_external_cameras": ("0, 1 or 2", lambda v: v in (0, 1, 2) and not isinstance(v, bool)),
    "needs_stereo_camera": ("true or false", lambda v: isinstance(v, bool)),
    "needs_session_id": ("true or false", lambda v: isinstance(v, bool)),
    "action_space": ("'joint_position' or 'joint_velocity'", lambda v: v in ("joint_position", "joint_velocity")),
}


class ConventionError(ValueError):
    """An `answer_convention` the front cannot follow; the message says which part and why."""


@dataclass(frozen=True)
class AnswerConvention:
    handshake: str = "metadata"
    infer: dict[str, str] = field(default_factory=lambda: dict.fromkeys(ENCODINGS, "map"))
    reset: dict[str, str] = field(default_factory=lambda: dict.fromkeys(ENCODINGS, "map"))
    bare_output: str = "actions"
    session_id_required: bool = False

    def describe(self) -> dict[str, Any]:
        """The entry for GET /v1/policies."""
        return {"handshake": self.handshake, "infer": self.infer, "reset": self.reset,
                "bare_output": self.bare_output, "session_id_required": self.session_id_required}


DEFAULT_CONVENTION = AnswerConvention()


def _per_encoding(raw: Any, part: str, forms: tuple[str, ...]) -> dict[str, str]:
    if isinstance(raw, str):
        raw = dict.fromkeys(ENCODINGS, raw)
    if not isinstance(raw, Mapping):
        raise ConventionError(f"'{part}' must be one of {list(forms)} or a map from client encoding "
                              f"({', '.join(ENCODINGS)}) to one of them, got {type(raw).__name__}")
    unknown = set(raw) - set(ENCODINGS)
    if unknown:
        raise ConventionError(f"'{part}' names unknown client encodings {sorted(unknown)}; known: {list(ENCODINGS)}")
    chosen = {encoding: raw.get(encoding, "map") for encoding in ENCODINGS}
    for encoding, form in chosen.items():
        if form not in forms:
            raise ConventionError(f"'{part}' for {encoding} clients is {form!r}; known: {list(forms)}")
    return chosen


def _check_roboarena(metadata: Mapping[str, Any]) -> None:
    missing = [name for name in ROBOARENA_FIELDS if name not in metadata]
    if missing:
        raise ConventionError(f"a RoboArena handshake needs 'policy_server_config' fields {missing}")
    for name, (wanted, valid) in ROBOARENA_FIELDS.items():
        if not valid(metadata[name]):
            raise ConventionError(f"RoboArena handshake field {name!r} must be {wanted}, got {metadata[name]!r}")


def convention_from_parameter(raw: Any, metadata: Mapping[str, Any], outputs: Mapping[str, str]) -> AnswerConvention:
    """The convention of a policy from its parsed `answer_convention` (None: the default); `metadata` is its
    `policy_server_config`, `outputs` its response keys. Raises ConventionError."""
    if raw is None:
        return DEFAULT_CONVENTION
    if not isinstance(raw, Mapping):
        raise ConventionError(f"must be a JSON object, got {type(raw).__name__}")
    unknown = set(raw) - {"handshake", "infer", "reset", "bare_output"}
    if unknown:
        raise ConventionError(f"unknown fields {sorted(unknown)}; known: handshake, infer, reset, bare_output")
    handshake = raw.get("handshake", "metadata")
    if handshake not in HANDSHAKES:
        raise ConventionError(f"unknown handshake {handshake!r}; known: {list(HANDSHAKES)}")
    if handshake == "roboarena":
        _check_roboarena(metadata)
    infer = _per_encoding(raw.get("infer", "map"), "infer", INFER_FORMS)
    reset = _per_encoding(raw.get("reset", "map"), "reset", RESET_FORMS)
    bare_output = raw.get("bare_output", "actions")
    if "bare" in infer.values() and bare_output not in outputs:
        raise ConventionError(f"'bare_output' {bare_output!r} is not a response key of 'output_map' "
                              f"({sorted(outputs)})")
    return AnswerConvention(handshake=handshake, infer=infer, reset=reset, bare_output=bare_output,
                            session_id_required=handshake == "roboarena" and bool(metadata.get("needs_session_id")))

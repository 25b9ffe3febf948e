"""Isaac GR00T's wire format (N1.5 after Aug 2025, N1.6 and later): one msgpack map per request,
`{endpoint, data, api_token}`; arrays as `{"__ndarray_class__": true, "as_npy": <a whole .npy file>}`, or
(N1.7-era clients) in msgpack-numpy's layout with bin keys; replies packed the same way.

Decoding never unpickles. The oldest generation's bodies (torch.save, a zip file, i.e. pickle) are
refused by their first bytes. A .npy header is read by numpy's own format reader (a literal, never
pickle), its dtype must be one the front accepts, and the data must be exactly as long as the header's
shape says before an array is made: a view on the received bytes, so a header that claims 10^12
elements costs nothing. (`np.load` would allocate what the header claims before reading the data.)
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

from openpi_triton.config import GR00T_GENERATIONS, GR00T_N15
from openpi_triton.front.codec import MAX_NDIM, MAX_NESTING, ProtocolError, array_from_bytes, decode_marker, text
from openpi_triton.npy import read_npy_header
from openpi_triton.triton.modality import MODALITIES, ModalityConfig, observation_key

# torch.save writes a zip file: what GR00T N1 clients up to Aug 2025 send.
PICKLE_GENERATION_MAGIC = b"PK\x03\x04"
NDARRAY_MARKER = "__ndarray_class__"
MODALITY_MARKER = "__ModalityConfig_class__"
MODALITY_FORMS = GR00T_GENERATIONS


def decode_request(body: bytes | memoryview) -> dict[str, Any]:
    """The request envelope as a map (arrays inside `data` still encoded: see `decode_value`)."""
    if bytes(body[:4]) == PICKLE_GENERATION_MAGIC:
        raise ProtocolError("this request is a torch.save (pickle) payload of a GR00T client from before August 2025, "
                            "which this server never unpickles; use a GR00T client that speaks msgpack (N1.5 after "
                            "August 2025, N1.6 or later)")
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except Exception as error:  # msgpack raises several unrelated types for malformed input
        detail = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        raise ProtocolError(f"the request is not valid msgpack ({detail})") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"expected a msgpack map {{endpoint, data, api_token}}, got {type(message).__name__}")
    return message


def npy_array(data: Any, where: str) -> np.ndarray:
    """A whole .npy file (format 1.0 or 2.0, as `np.save` writes it) -> a read-only view on `data`."""
    if not isinstance(data, bytes):
        raise ProtocolError(f"{where}: 'as_npy' must be the bytes of a .npy file, got {type(data).__name__}")
    stream = io.BytesIO(data)
    try:
        shape, fortran_order, dtype = read_npy_header(stream)
    except (ValueError, TypeError, SyntaxError, EOFError) as error:
        raise ProtocolError(f"{where}: not a readable .npy file ({error})") from None
    if len(shape) > MAX_NDIM:
        raise ProtocolError(f"{where}: arrays of more than {MAX_NDIM} dimensions are not accepted")
    payload = memoryview(data)[stream.tell():]
    if fortran_order:  # a Fortran-ordered array is the C-ordered array of the reversed shape, transposed
        return array_from_bytes(payload, dtype.str, list(shape[::-1]), where).T
    return array_from_bytes(payload, dtype.str, list(shape), where)


def decode_value(node: Any, where: str = "data", depth: int = 0) -> Any:
    """Decode every array in a request's `data` (GR00T's `__ndarray_class__`, msgpack-numpy's, openpi's)."""
    if depth > MAX_NESTING:
        raise ProtocolError(f"{where}: values nested deeper than {MAX_NESTING} levels")
    if isinstance(node, dict):
        keys = {text(key): value for key, value in node.items()}
        if keys.get(NDARRAY_MARKER) is True:
            return npy_array(keys.get("as_npy"), where)
        array = decode_marker(node, where)
        if array is not None:
            return array
        return {key: decode_value(value, f"{where}.{key}", depth + 1) for key, value in keys.items()}
    if isinstance(node, list):
        return [decode_value(value, f"{where}[{i}]", depth + 1) for i, value in enumerate(node)]
    return node


def _encode_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "VOc":
            raise TypeError(f"cannot send {obj.dtype} arrays")
        buffer = io.BytesIO()
        np.save(buffer, obj, allow_pickle=False)
        return {NDARRAY_MARKER: True, "as_npy": buffer.getvalue()}
    if isinstance(obj, np.generic):  # GR00T clients have no decoder for numpy scalars
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def encode_reply(obj: Any) -> bytes:
    """A reply as every msgpack generation of GR00T clients reads it (str keys, arrays as .npy)."""
    return msgpack.packb(obj, default=_encode_default, use_bin_type=True)


def modality_config_reply(config: ModalityConfig, form: str) -> dict[str, Any]:
    """The `get_modality_config` reply: each modality as GR00T's ModalityConfig marker. N1.5 clients read
    `as_json` as a JSON string with prefixed keys (`video.front`), N1.6 clients as a map with bare keys and
    every field (enums by name); each crashes on the other's form, hence the server setting."""
    if form not in MODALITY_FORMS:
        raise ValueError(f"modality config form must be one of {MODALITY_FORMS}, got {form!r}")
    reply = {}
    for name in MODALITIES:
        modality = config.modality(name)
        if form == GR00T_N15:
            body: Mapping[str, Any] = {"delta_indices": list(modality.delta_indices),
                                       "modality_keys": [observation_key(name, key) for key in modality.keys]}
            reply[name] = {MODALITY_MARKER: True, "as_json": json.dumps(body)}
        else:
            body = {"delta_indices": list(modality.delta_indices), "modality_keys": list(modality.keys),
                    "sin_cos_embedding_keys": None, "mean_std_embedding_keys": None, "action_configs": None,
                    **modality.extra}
            # examples/DROID's stand-alone client reads `as_dict`; the others `as_json`.
            reply[name] = {MODALITY_MARKER: True, "as_json": body, "as_dict": body}
    return reply

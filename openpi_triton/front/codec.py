"""The OpenPI wire format: msgpack with NumPy arrays, decoded defensively.

Arrays arrive in openpi-client's markers (`{"__ndarray__": true, data, dtype, shape}`, scalars as
`{"__npgeneric__": true, data, dtype}`) or in the `msgpack-numpy` package's (`{nd, type, kind,
shape, data}`). Decoding never unpickles, refuses object/void/complex dtypes, and checks that the
data length equals prod(shape) * itemsize *before* building anything, so a header that claims 10^12
elements costs nothing. Arrays are zero-copy views on the bytes msgpack already holds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

# dtype strings as numpy writes them (`dtype.str`): byte order, kind, item size. Booleans, integers,
# floats and fixed-width strings only; V (void), O (object) and c (complex) never get this far.
_DTYPE = re.compile(r"^[<>|=]?[biufUS]\d{1,4}$")
_REFUSED_KINDS = {"V": "void", "O": "object", "c": "complex", "M": "datetime", "m": "timedelta"}
# The two array marker formats, by what writes them: openpi-client's and the msgpack-numpy package's.
OPENPI_MARKERS = "openpi"
MSGPACK_NUMPY_MARKERS = "msgpack_numpy"
MAX_NDIM = 32
MAX_NESTING = 16


class ProtocolError(ValueError):
    """A frame the server cannot accept; the message says what and where, for the client to read."""


class Refused(Exception):
    """A request (a websocket frame, a GR00T message) that gets an error text instead of an answer;
    `outcome` is its metrics label."""

    def __init__(self, text: str, outcome: str) -> None:
        super().__init__(text)
        self.text, self.outcome = text, outcome


def text(value: Any) -> Any:
    """A msgpack bin key or value as str (lenient: bad UTF-8 becomes U+FFFD); other values as they are."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def parse_dtype(raw: Any, where: str) -> np.dtype:
    name = text(raw)
    if not isinstance(name, str):
        raise ProtocolError(f"{where}: dtype must be a string such as '<f4', got {type(raw).__name__}")
    unsupported = f"{where}: unsupported dtype {name[:40]!r}; send bool, integer, float or string arrays"
    if not _DTYPE.match(name):
        kind = name.lstrip("<>|=")[:1]
        if kind in _REFUSED_KINDS:
            raise ProtocolError(f"{where}: {_REFUSED_KINDS[kind]} dtype {name!r} is not accepted")
        raise ProtocolError(unsupported)
    try:
        dtype = np.dtype(name)
    except TypeError:  # well-formed but not a real type, such as '<f3'
        raise ProtocolError(unsupported) from None
    if dtype.itemsize == 0:
        raise ProtocolError(f"{where}: zero-width dtype {name!r} is not accepted")
    return dtype


def _parse_shape(raw: Any, where: str) -> tuple[int, ...]:
    if not isinstance(raw, (list, tuple)) or len(raw) > MAX_NDIM:
        raise ProtocolError(f"{where}: shape must be a list of at most {MAX_NDIM} integers")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw):
        raise ProtocolError(f"{where}: shape must hold non-negative integers, got {list(raw)[:8]}")
    return tuple(raw)


def array_from_bytes(data: Any, dtype_raw: Any, shape_raw: Any, where: str) -> np.ndarray:
    dtype = parse_dtype(dtype_raw, where)
    shape = _parse_shape(shape_raw, where)
    if not isinstance(data, (bytes, memoryview)):
        raise ProtocolError(f"{where}: array data must be binary, got {type(data).__name__}")
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow, nothing allocated
    if len(data) != expected:
        raise ProtocolError(
            f"{where}: array data is {len(data)} bytes but shape {list(shape)} of {dtype.str} needs {expected}"
        )
    if dtype.kind == "U" and not _valid_code_points(data, dtype):
        raise ProtocolError(f"{where}: the string array holds code points that are not valid unicode "
                            "(lone surrogates or values beyond U+10FFFF)")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _valid_code_points(data: bytes, dtype: np.dtype) -> bool:
    """NumPy's unicode arrays are UTF-32 code units, any 32-bit value; a lone surrogate among them turns
    into an error only later, when the text is encoded (as the prompt is, for Triton)."""
    codes = np.frombuffer(data, dtype=np.dtype(f"{dtype.byteorder}u4"))
    return not (((codes >= 0xD800) & (codes <= 0xDFFF)) | (codes > 0x10FFFF)).any()


def _scalar(data: Any, dtype_raw: Any, where: str) -> np.generic:
    """openpi-client's scalar: the value itself (`obj.item()`) and its dtype."""
    dtype = parse_dtype(dtype_raw, where)
    try:
        return dtype.type(data)
    except (TypeError, ValueError, OverflowError):
        raise ProtocolError(f"{where}: the scalar's value is not a valid {dtype.str}") from None


def _raw_scalar(data: Any, dtype_raw: Any, where: str) -> np.generic:
    """msgpack-numpy's scalar: its bytes (`obj.tobytes()`) and its dtype."""
    return array_from_bytes(data, dtype_raw, [], where)[()]


def decode_marker(node: Mapping[Any, Any], where: str, seen: set[str] | None = None) -> Any:
    """An array or scalar if `node` is one of the two marker formats, else None. The format found is added
    to `seen` (OPENPI_MARKERS or MSGPACK_NUMPY_MARKERS)."""
    keys = {text(key): value for key, value in node.items()}
    if keys.get("__ndarray__") is True or keys.get("__npgeneric__") is True:
        if seen is not None:
            seen.add(OPENPI_MARKERS)
    elif keys.get("nd") is not None and "type" in keys and seen is not None:
        seen.add(MSGPACK_NUMPY_MARKERS)
    if keys.get("__ndarray__") is True:
        return array_from_bytes(keys.get("data"), keys.get("dtype"), keys.get("shape"), where)
    if keys.get("__npgeneric__") is True:
        return _scalar(keys.get("data"), keys.get("dtype"), where)
    if keys.get("nd") is True:  # msgpack-numpy
        if text(keys.get("kind", "")) not in ("", None):
            raise ProtocolError(f"{where}: msgpack-numpy arrays of kind {text(keys.get('kind'))!r} are not accepted")
        return array_from_bytes(keys.get("data"), keys.get("type"), keys.get("shape"), where)
    if keys.get("nd") is False and "type" in keys:  # msgpack-numpy scalar
        return _raw_scalar(keys.get("data"), keys.get("type"), where)
    return None


def flatten(tree: Mapping[Any, Any], prefix: str = "", seen: set[str] | None = None) -> dict[str, Any]:
    """Flatten nested maps with '/' and decode every array marker, naming the key in any error; the marker
    formats found are added to `seen`."""
    if prefix.count("/") >= MAX_NESTING:
        raise ProtocolError(f"key {prefix.rstrip('/')!r}: maps nested deeper than {MAX_NESTING} levels")
    flat: dict[str, Any] = {}
    for raw_key, value in tree.items():
        key = f"{prefix}{text(raw_key)}"
        if isinstance(value, dict):
            decoded = decode_marker(value, f"key {key!r}", seen)
            if decoded is None:
                flat.update(flatten(value, f"{key}/", seen))
            else:
                flat[key] = decoded
        else:
            flat[key] = value
    return flat


def decode_frame(frame: bytes, seen: set[str] | None = None) -> dict[str, Any]:
    """A binary frame -> the flat message map (arrays decoded). Raises ProtocolError. The array marker
    formats the frame uses are added to `seen`."""
    try:
        message = msgpack.unpackb(frame, raw=False, use_list=True)
    except Exception as error:  # msgpack raises several unrelated types for malformed input
        raise ProtocolError(f"the frame is not valid msgpack ({type(error).__name__}: {error})") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"expected a msgpack map (the observation dict), got {type(message).__name__}")
    return flatten(message, seen=seen)


def _encode_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in ("V", "O", "c"):
            raise TypeError(f"cannot send {obj.dtype} arrays")
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _encode_msgpack_numpy(obj: Any) -> Any:
    """The msgpack-numpy package's markers: raw bytes for arrays and scalars alike."""
    if isinstance(obj, (np.ndarray, np.generic)):
        if obj.dtype.kind in ("V", "O", "c"):
            raise TypeError(f"cannot send {obj.dtype} arrays")
        array = np.asarray(obj)
        if isinstance(obj, np.generic):
            return {b"nd": False, b"type": obj.dtype.str, b"data": array.tobytes()}
        return {b"nd": True, b"type": obj.dtype.str, b"kind": b"", b"shape": obj.shape, b"data": array.tobytes()}
    raise TypeError(f"cannot encode {type(obj).__name__}")


def encode(obj: Any, markers: str = OPENPI_MARKERS) -> bytes:
    """Encode a response exactly as openpi-client's `msgpack_numpy.unpackb` expects it, or, with
    `markers=MSGPACK_NUMPY_MARKERS`, as the msgpack-numpy package's `unpackb` does."""
    default = _encode_msgpack_numpy if markers == MSGPACK_NUMPY_MARKERS else _encode_default
    return msgpack.packb(obj, default=default)

"""The only reader of a LeRobot client's pickles: what `pickle.loads` would run, it refuses.

The stock `RobotClient` pickles two dataclasses of `lerobot.async_inference.helpers` (or, in clients of July to
September 2025, `lerobot.scripts.server.helpers`): `RemotePolicyConfig` (SendPolicyInstructions) and
`TimedObservation` (SendObservations), holding plain containers, numbers, strings and numpy arrays and scalars.
`find_class` admits exactly those names and maps each to a class or function of this module, so no lerobot,
numpy or torch code runs on the client's bytes: the two dataclasses become inert records, and numpy's
reconstructors are replaced by ones that check the dtype (booleans, integers and floats only: an object array
would carry pickled objects) and that the data holds exactly shape x itemsize bytes before an array is made,
as a read-only view of the bytes the pickle already holds, within a total budget of array bytes (the memo
lets a pickle refer to one buffer many times). Any other global (os.system, builtins.eval, torch's rebuild
functions), a persistent id (torch storages), a wrong top-level type or a malformed field raises
`PayloadError`, whose text the client gets with INVALID_ARGUMENT.
"""

from __future__ import annotations

import io
import math
import pickle
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HELPERS_MODULES = ("lerobot.async_inference.helpers", "lerobot.scripts.server.helpers")
# numpy 1 and numpy 2 name their reconstructors differently; a client may run either.
_NUMPY_CORES = ("numpy.core", "numpy._core")
_DTYPE_CODE = re.compile(r"^(\?|b1|[iu][1248]|f[248])$")
_MAX_DIMS = 8
_MAX_DEPTH = 8  # nesting of containers inside an observation or a feature map


class PayloadError(ValueError):
    """The bytes are not a pickle this server reads; the text says what was wrong."""


class _Record:
    """The state a pickled dataclass carries (its __dict__), kept as data; never an instance of lerobot's class."""

    kind = ""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict) or not all(isinstance(key, str) for key in state):
            raise PayloadError(f"{self.kind}: its pickled state must be a map of field names")
        self.state = state


class _PolicyConfigRecord(_Record):
    kind = "RemotePolicyConfig"


class _ObservationRecord(_Record):
    kind = "TimedObservation"


class _DType:
    """numpy.dtype(code, align, copy) then BUILD (version, byteorder, ...): only the code and byte order are read."""

    def __init__(self, code: Any = None, align: Any = False, copy: Any = True) -> None:
        if not isinstance(code, str) or not _DTYPE_CODE.match(code):
            raise PayloadError(f"numpy dtype {str(code)[:20]!r} is refused: only booleans, integers and floats")
        self.code, self.byteorder = code, "="

    def __setstate__(self, state: Any) -> None:
        order = state[1] if isinstance(state, tuple) and len(state) > 1 else None
        if order not in ("<", ">", "|", "="):
            raise PayloadError("numpy dtype: malformed pickled state")
        self.byteorder = order

    def resolve(self) -> np.dtype:
        return np.dtype(self.code).newbyteorder(self.byteorder) if self.byteorder in "<>" else np.dtype(self.code)


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    """Protocols 0-2 write bytes as _codecs.encode(str, 'latin1'): only that is done."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise PayloadError("_codecs.encode: only latin1 text (how old pickle protocols write bytes)")
    return text.encode("latin1")


class _Budget:
    def __init__(self, limit: int) -> None:
        self.left = limit

    def charge(self, nbytes: int) -> None:
        if nbytes > self.left:
            raise PayloadError("the pickle's arrays hold more bytes than this server accepts in one message")
        self.left -= nbytes


def _array(budget: _Budget, data: Any, dtype: Any, shape: Any, fortran: bool) -> np.ndarray:
    if not isinstance(dtype, _DType):
        raise PayloadError("numpy array: its dtype is not a pickled numpy dtype")
    if isinstance(shape, int):
        shape = (shape,)
    if (not isinstance(shape, tuple) or len(shape) > _MAX_DIMS
            or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**40 for n in shape)):
        raise PayloadError(f"numpy array: shape must be at most {_MAX_DIMS} non-negative sizes")
    if not isinstance(data, (bytes, bytearray, pickle.PickleBuffer)):
        raise PayloadError("numpy array: its data must be raw bytes")
    resolved = dtype.resolve()
    raw = memoryview(data).cast("B")
    expected = math.prod(shape) * resolved.itemsize
    if raw.nbytes != expected:
        raise PayloadError(f"numpy array: shape {list(shape)} of {resolved} needs {expected} bytes, "
                           f"the pickle holds {raw.nbytes}")
    budget.charge(expected)
    return np.frombuffer(raw, resolved).reshape(shape, order="F" if fortran else "C")


class _ArrayRecord:
    """What numpy's `_reconstruct(ndarray, (0,), b'b')` gives here; BUILD then brings (version, shape, dtype,
    is_fortran, data) and `array` is made from it."""

    budget: _Budget

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]
        if not isinstance(state, tuple) or len(state) != 4:
            raise PayloadError("numpy array: malformed pickled state")
        shape, dtype, fortran, data = state
        self.array = _array(self.budget, data, dtype, shape, bool(fortran))


@dataclass
class _Loaded:
    budget: _Budget
    arrays: list[_ArrayRecord] = field(default_factory=list)


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, array_budget: int) -> None:
        super().__init__(io.BytesIO(data))
        self.loaded = _Loaded(_Budget(array_budget))
        budget = self.loaded.budget

        class Array(_ArrayRecord):  # bound to this load's budget
            pass

        Array.budget = budget

        def reconstruct(cls: Any, shape: Any, code: Any) -> _ArrayRecord:
            if cls is not Array:
                raise PayloadError("numpy _reconstruct: only ndarray is rebuilt")
            return Array()

        def frombuffer(data: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
            return _array(budget, data, dtype, shape, order == "F")

        def scalar(dtype: Any, data: Any = None) -> Any:
            if not isinstance(dtype, _DType) or not isinstance(data, bytes):
                raise PayloadError("numpy scalar: malformed pickled value")
            return _array(budget, data, dtype, (), False)[()]

        self.allowed: dict[tuple[str, str], Any] = {}
        for module in HELPERS_MODULES:
            self.allowed[(module, "RemotePolicyConfig")] = _PolicyConfigRecord
            self.allowed[(module, "TimedObservation")] = _ObservationRecord
        for core in _NUMPY_CORES:
            self.allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
            self.allowed[(f"{core}.multiarray", "scalar")] = scalar
            self.allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
        self.allowed[("numpy", "ndarray")] = Array
        self.allowed[("numpy", "dtype")] = _DType
        self.allowed[("_codecs", "encode")] = _latin1

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None:
            raise PayloadError(f"the pickle refers to {module[:60]}.{name[:60]}, which this server does not load: "
                               "it reads only LeRobot's RemotePolicyConfig and TimedObservation, numpy arrays of "
                               "numbers and plain values")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise PayloadError("the pickle holds a persistent id (such as a torch storage); this server does not load it")


def _load(data: bytes, array_budget: int, expected: type[_Record]) -> dict[str, Any]:
    try:
        value = _Unpickler(data, array_budget).load()
    except PayloadError:
        raise
    except RecursionError:
        raise PayloadError("the pickle is nested too deeply") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, OverflowError, UnicodeDecodeError, ImportError) as error:
        raise PayloadError(f"not a readable pickle ({type(error).__name__}: {str(error)[:200]})") from None
    if not isinstance(value, expected) or not hasattr(value, "state"):
        raise PayloadError(f"expected a pickled {expected.kind}, got {type(value).__name__.lstrip('_')}")
    return {key: _plain(item, f"{expected.kind}.{key}", 0) for key, item in value.state.items()}


def _plain(value: Any, where: str, depth: int) -> Any:
    """`value` with every array record replaced by its array; anything that is not plain data is refused."""
    if isinstance(value, _ArrayRecord):
        if not hasattr(value, "array"):
            raise PayloadError(f"{where}: a numpy array without its data")
        return value.array
    if value is None or isinstance(value, (bool, int, float, str, bytes, np.ndarray, np.generic)):
        return value
    if depth >= _MAX_DEPTH:
        raise PayloadError(f"{where}: nested more than {_MAX_DEPTH} levels deep")
    if isinstance(value, dict):
        return {key: _plain(item, f"{where}[{str(key)[:40]!r}]", depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))
    raise PayloadError(f"{where}: a {type(value).__name__.lstrip('_')} where plain data was expected")


@dataclass(frozen=True)
class PolicyInstructions:
    """A client's RemotePolicyConfig, read into our own type."""

    policy_type: str
    pretrained_name_or_path: str
    lerobot_features: dict[str, dict[str, Any]]
    actions_per_chunk: int
    device: str  # what the client asked for; the server decides and ignores it
    rename_map: dict[str, str]


@dataclass(frozen=True)
class RobotObservation:
    """A client's TimedObservation, read into our own type."""

    timestamp: float
    timestep: int
    observation: dict[str, Any]
    must_go: bool


def _field(state: dict[str, Any], name: str, kinds: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    if name not in state:
        if default is ...:
            raise PayloadError(f"{where} has no field {name!r}")
        return default
    value = state[name]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple)
                                                                                  else (kinds,))):
        raise PayloadError(f"{where}.{name} must be {getattr(kinds, '__name__', kinds)}, got {type(value).__name__}")
    return value


def read_instructions(data: bytes, max_bytes: int) -> PolicyInstructions:
    """A SendPolicyInstructions payload, or PayloadError."""
    if len(data) > max_bytes:
        raise PayloadError(f"policy instructions of {len(data)} bytes exceed the limit of {max_bytes}")
    state = _load(data, max_bytes, _PolicyConfigRecord)
    where = "RemotePolicyConfig"
    features = _field(state, "lerobot_features", dict, where)
    if not all(isinstance(key, str) and isinstance(value, dict) for key, value in features.items()):
        raise PayloadError(f"{where}.lerobot_features must map feature names to maps")
    rename_map = _field(state, "rename_map", dict, where, {})
    if not all(isinstance(key, str) and isinstance(value, str) for key, value in rename_map.items()):
        raise PayloadError(f"{where}.rename_map must map names to names")
    chunk = _field(state, "actions_per_chunk", int, where)
    if not 0 < chunk < 2**31:
        raise PayloadError(f"{where}.actions_per_chunk must be a positive number, got {chunk}")
    return PolicyInstructions(
        policy_type=_field(state, "policy_type", str, where), lerobot_features=features,
        pretrained_name_or_path=_field(state, "pretrained_name_or_path", str, where), actions_per_chunk=chunk,
        device=_field(state, "device", str, where, "cpu"), rename_map=rename_map,
    )


def read_observation(data: bytes, max_bytes: int) -> RobotObservation:
    """A SendObservations payload (the reassembled chunks), or PayloadError."""
    if len(data) > max_bytes:
        raise PayloadError(f"an observation of {len(data)} bytes exceeds the limit of {max_bytes}")
    state = _load(data, max_bytes, _ObservationRecord)
    where = "TimedObservation"
    observation = _field(state, "observation", dict, where)
    if not all(isinstance(key, str) for key in observation):
        raise PayloadError(f"{where}.observation must be keyed by names")
    timestep = _field(state, "timestep", (int, np.integer), where)
    if not -2**62 < int(timestep) < 2**62:
        raise PayloadError(f"{where}.timestep is out of range")
    timestamp = _field(state, "timestamp", (int, float, np.floating), where)
    if not math.isfinite(float(timestamp)):
        raise PayloadError(f"{where}.timestamp must be a finite number")
    return RobotObservation(timestamp=float(timestamp), timestep=int(timestep), observation=observation,
                            must_go=bool(_field(state, "must_go", (bool, np.bool_), where, False)))

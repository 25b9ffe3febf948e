"""LeRobot's `transport.AsyncInference` gRPC service, declared here rather than imported from lerobot.

lerobot's generated `services_pb2` would tie the server to all of lerobot's package and to protobuf >= 6.31
(its gencode checks the runtime version at import). The four messages are tiny, so they are declared from a
FileDescriptorProto in a private descriptor pool: the same wire format (package `transport`, the same message,
field and enum numbers; tests compare it with lerobot's own descriptor), any protobuf >= 4, no generated code,
and no clash with lerobot's classes when both are imported in one process.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "transport"
SERVICE = f"{PACKAGE}.AsyncInference"
# TransferState of an Observation chunk
TRANSFER_UNKNOWN, TRANSFER_BEGIN, TRANSFER_MIDDLE, TRANSFER_END = 0, 1, 2, 3

_BYTES = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
_ENUM = descriptor_pb2.FieldDescriptorProto.TYPE_ENUM
_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="openpi_triton/lerobot_transport.proto", package=PACKAGE,
                                               syntax="proto3")
    state = proto.enum_type.add(name="TransferState")
    for number, name in enumerate(("TRANSFER_UNKNOWN", "TRANSFER_BEGIN", "TRANSFER_MIDDLE", "TRANSFER_END")):
        state.value.add(name=name, number=number)
    observation = proto.message_type.add(name="Observation")
    observation.field.add(name="transfer_state", number=1, type=_ENUM, label=_OPTIONAL,
                          type_name=f".{PACKAGE}.TransferState")
    observation.field.add(name="data", number=2, type=_BYTES, label=_OPTIONAL)
    for name in ("Actions", "PolicySetup"):
        proto.message_type.add(name=name).field.add(name="data", number=1, type=_BYTES, label=_OPTIONAL)
    proto.message_type.add(name="Empty")
    service = proto.service.add(name="AsyncInference")
    for method, request, response, client_streaming in (
        ("SendObservations", "Observation", "Empty", True), ("GetActions", "Empty", "Actions", False),
        ("SendPolicyInstructions", "PolicySetup", "Empty", False), ("Ready", "Empty", "Empty", False),
    ):
        service.method.add(name=method, input_type=f".{PACKAGE}.{request}", output_type=f".{PACKAGE}.{response}",
                           client_streaming=client_streaming)
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.AddSerializedFile(_file().SerializeToString())
FILE = _POOL.FindFileByName("openpi_triton/lerobot_transport.proto")


def _message(name: str) -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


Observation = _message("Observation")
Actions = _message("Actions")
PolicySetup = _message("PolicySetup")
Empty = _message("Empty")

"""MindSpore's checkpoint schema as protobuf message classes, built at run time from a descriptor.

Schema: mindspore `ccsrc/utils/checkpoint.proto` (proto2, no package). `ms_ckpt` reads and writes the
same wire format by hand, streaming; these classes are the independent reference used to check it and
to build files the way any protobuf user would.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["Checkpoint", "MapTensorProto", "TensorProto"]

_F = descriptor_pb2.FieldDescriptorProto


def _field(name: str, number: int, kind: int, label: int, type_name: str = "", oneof: int | None = None):
    field = _F(name=name, number=number, type=kind, label=label)
    if type_name:
        field.type_name = type_name
    if oneof is not None:
        field.oneof_index = oneof
    return field


def _build():
    file = descriptor_pb2.FileDescriptorProto(name="torchformers_ms_checkpoint.proto", syntax="proto2")
    tensor = file.message_type.add(name="TensorProto")
    tensor.field.extend(
        [
            _field("dims", 1, _F.TYPE_INT64, _F.LABEL_REPEATED),
            _field("tensor_type", 2, _F.TYPE_STRING, _F.LABEL_REQUIRED),
            _field("tensor_content", 3, _F.TYPE_BYTES, _F.LABEL_REQUIRED),
        ]
    )
    map_tensor = file.message_type.add(name="MapTensorProto")
    map_tensor.field.append(_field("tensor", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".TensorProto"))
    checkpoint = file.message_type.add(name="Checkpoint")
    value = checkpoint.nested_type.add(name="Value")
    value.oneof_decl.add(name="value")
    value.field.extend(
        [
            _field("tag", 1, _F.TYPE_STRING, _F.LABEL_REQUIRED),
            _field("tensor", 2, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".TensorProto", oneof=0),
            _field("maptensor", 3, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".MapTensorProto", oneof=0),
        ]
    )
    checkpoint.field.append(_field("value", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".Checkpoint.Value"))
    pool = descriptor_pool.DescriptorPool()  # private pool: no clash with another copy of this schema
    pool.Add(file)
    get = message_factory.GetMessageClass
    return (
        get(pool.FindMessageTypeByName("Checkpoint")),
        get(pool.FindMessageTypeByName("TensorProto")),
        get(pool.FindMessageTypeByName("MapTensorProto")),
    )


Checkpoint, TensorProto, MapTensorProto = _build()

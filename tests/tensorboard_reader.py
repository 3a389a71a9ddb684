#!/usr/bin/env python3
"""The reader of tests/test_observability.cpp: a run's TensorBoard event files, read as TensorBoard does.

Usage: tensorboard_reader.py TB_DIR > EVENTS.json
Reads every events.out.tfevents.* file of TB_DIR in name order (TensorBoard's order). Each TFRecord's
two masked CRC32Cs (of the 8 length bytes, of the data) are checked with a pure-Python CRC32C, and the
data parsed as a tensorflow.Event by message classes built here from a FileDescriptorProto (the fields
of TensorFlow's event.proto / summary.proto / tensor.proto that matter, numbered as there; no .proto
file or protoc needed), with Debian's python3-protobuf. Prints
{"files": N, "file_versions": [...], "scalars": [[n, step, tag, value], ...], "texts": [[step, tag, text], ...],
 "session_starts": [[n, step], ...]} in file order, n counting the events of all files (so that a test can
replay TensorBoard's purge: a SessionLog START at step s drops the scalars before it at s and later). Exit status 3 when google.protobuf cannot be imported
(the C++ test then skips), 1 on a bad record.
"""
import json
import os
import struct
import sys

try:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
except ImportError as exc:  # the C++ test prints SKIPPED
    print(f"google.protobuf is not importable: {exc}", file=sys.stderr)
    sys.exit(3)

F = descriptor_pb2.FieldDescriptorProto


def message(fdp, name, fields):
    m = fdp.message_type.add(name=name)
    for number, fname, ftype, label, type_name in fields:
        f = m.field.add(name=fname, number=number, type=ftype, label=label)
        if type_name:
            f.type_name = ".tensorflow." + type_name


def build_classes():
    fdp = descriptor_pb2.FileDescriptorProto(name="linearnexus_test_event.proto", package="tensorflow", syntax="proto3")
    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message(fdp, "PluginData", [(1, "plugin_name", F.TYPE_STRING, opt, None)])
    message(fdp, "SummaryMetadata", [(1, "plugin_data", F.TYPE_MESSAGE, opt, "PluginData")])
    message(fdp, "TensorShapeProto", [])
    message(fdp, "TensorProto", [(1, "dtype", F.TYPE_INT32, opt, None),
                                 (2, "tensor_shape", F.TYPE_MESSAGE, opt, "TensorShapeProto"),
                                 (8, "string_val", F.TYPE_BYTES, rep, None)])
    message(fdp, "Value", [(1, "tag", F.TYPE_STRING, opt, None), (2, "simple_value", F.TYPE_FLOAT, opt, None),
                           (8, "tensor", F.TYPE_MESSAGE, opt, "TensorProto"),
                           (9, "metadata", F.TYPE_MESSAGE, opt, "SummaryMetadata")])
    message(fdp, "Summary", [(1, "value", F.TYPE_MESSAGE, rep, "Value")])
    message(fdp, "SessionLog", [(1, "status", F.TYPE_INT32, opt, None)])
    message(fdp, "Event", [(1, "wall_time", F.TYPE_DOUBLE, opt, None), (2, "step", F.TYPE_INT64, opt, None),
                           (3, "file_version", F.TYPE_STRING, opt, None),
                           (5, "summary", F.TYPE_MESSAGE, opt, "Summary"),
                           (6, "session_log", F.TYPE_MESSAGE, opt, "SessionLog")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    desc = pool.FindMessageTypeByName("tensorflow.Event")
    if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.22
        return message_factory.GetMessageClass(desc)
    return message_factory.MessageFactory(pool).GetPrototype(desc)


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def masked(data):
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def records(path):
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        if len(data) - pos < 12:
            sys.exit(f"{path}: a torn record header at byte {pos}")
        length_bytes = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", length_bytes)
        (length_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        if length_crc != masked(length_bytes):
            sys.exit(f"{path}: the length CRC of the record at byte {pos} is wrong")
        body = data[pos + 12:pos + 12 + length]
        if len(body) != length or len(data) < pos + 16 + length:
            sys.exit(f"{path}: a torn record at byte {pos}")
        (body_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        if body_crc != masked(body):
            sys.exit(f"{path}: the data CRC of the record at byte {pos} is wrong")
        yield body
        pos += 16 + length


def main():
    Event = build_classes()
    folder = sys.argv[1]
    n = 0
    out = {"files": 0, "file_versions": [], "scalars": [], "texts": [], "session_starts": []}
    for name in sorted(os.listdir(folder)):
        if not name.startswith("events.out.tfevents."):
            continue
        out["files"] += 1
        for body in records(os.path.join(folder, name)):
            e = Event()
            e.ParseFromString(body)
            n += 1
            if e.file_version:
                out["file_versions"].append(e.file_version)
            if e.HasField("session_log") and e.session_log.status == 1:
                out["session_starts"].append([n, e.step])
            for v in e.summary.value:
                if v.metadata.plugin_data.plugin_name == "text":
                    if v.tensor.dtype != 7:
                        sys.exit(f"{name}: text summary '{v.tag}' is not a DT_STRING tensor")
                    out["texts"].append([e.step, v.tag, b"".join(v.tensor.string_val).decode("utf-8")])
                else:
                    out["scalars"].append([n, e.step, v.tag, v.simple_value])
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()

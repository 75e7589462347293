"""A tiny safetensors reader and writer for the golden-file scripts (no safetensors package here).

Format: [u64 little-endian N][N bytes of JSON header][raw little-endian C-order data]. Header
entries "name": {"dtype", "shape", "data_offsets": [begin, end)} relative to the data start, plus
an optional "__metadata__" string map. The header is padded with spaces to a multiple of 8.
"""
import json
import struct

import torch

_TO_NAME = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_FROM_NAME = {v: k for k, v in _TO_NAME.items()}


def save(path, tensors, metadata=None):
    """tensors: dict name -> torch.Tensor (written in insertion order, as CPU contiguous data)."""
    header = {}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {
            "dtype": _TO_NAME[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def load(path):
    """Returns a dict name -> torch.Tensor (CPU) in file order."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    header.pop("__metadata__", None)
    start = 8 + n
    out = {}
    for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        b, end = e["data_offsets"]
        dtype = _FROM_NAME[e["dtype"]]
        buf = bytearray(data[start + b : start + end])
        t = torch.frombuffer(buf, dtype=torch.uint8) if buf else torch.empty(0, dtype=torch.uint8)
        out[name] = t.view(dtype).reshape(e["shape"]).clone()
    return out


# Aliases, so scripts written against safetensors.torch's names (or the obvious ones) work too.
save_file = write = write_safetensors = save
load_file = read = read_safetensors = load

"""Crafted bad input files for test_bad_input.py (and a before/after table in the issue-9 report):
broken checkpoints, model YAMLs, params files, bags and a PNG decompression bomb.

Every file is built from the real writers (torch.save, rosbags, PIL/zlib) and then damaged the way
the issue measured, so the tests exercise the same failure modes a user hits.
"""

from __future__ import annotations

import math
import shutil
import sqlite3
import struct
import zlib
from binascii import crc32
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "config/model/tiny.yaml"
TINY_TEXT = TINY.read_text()
TOPIC = "/cam/image_raw"


# -- checkpoints -----------------------------------------------------------------------------------
def tiny_checkpoint(path: Path) -> dict:
    import torch

    from mtl_perception.model import ModelConfig, build_model, save_model

    torch.manual_seed(0)
    model = build_model(ModelConfig.from_yaml(TINY))
    save_model(model, path, {"trained": True})
    return torch.load(path, weights_only=True)


def mismatch_checkpoint(path: Path) -> str:
    """Weights of the tiny model under a model_config with wider features: returns the first key
    whose shape differs (in state_dict order), which the error must name."""
    import torch

    ckpt = tiny_checkpoint(path)
    ckpt["model_config"]["feature_channels"] = 64
    torch.save(ckpt, path)
    from mtl_perception.model import ModelConfig, build_model

    ref = build_model(ModelConfig.from_dict(ckpt["model_config"])).state_dict()
    return next(k for k, v in ckpt["state_dict"].items() if k in ref and ref[k].shape != v.shape)


def nan_checkpoint(path: Path) -> str:
    """The tiny checkpoint with one NaN and one inf weight; returns the first poisoned key."""
    import torch

    ckpt = tiny_checkpoint(path)
    keys = [k for k, v in ckpt["state_dict"].items() if v.is_floating_point()]
    ckpt["state_dict"][keys[3]].view(-1)[0] = math.nan
    ckpt["state_dict"][keys[-1]].view(-1)[0] = math.inf
    torch.save(ckpt, path)
    return keys[3]


# -- model YAMLs and params files ------------------------------------------------------------------
def yaml_files(d: Path) -> dict[str, Path]:
    files = {
        "syntax.yaml": "model:\n  tasks: [semantic, depth\n  num_classes: 8\n",
        "unknown_top.yaml": TINY_TEXT + "bogus_key: 1\n",
        "empty.yaml": "# nothing here\n",
    }
    out = {}
    for name, text in files.items():
        (d / name).write_text(text)
        out[name] = d / name
    return out


def params_broken(d: Path) -> Path:
    p = d / "broken_params.yaml"
    p.write_text("/**:\n  ros__parameters:\n    model_config: [unclosed\n")
    return p


# -- bags ------------------------------------------------------------------------------------------
def frames(n: int, h: int = 48, w: int = 64):
    for i in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        img[:, :, 0] = (np.arange(w) * 3 + i * 20) % 256
        img[:, :, 1] = i * 17 % 256
        yield (i + 1) * 100_000_000, img


def image_bag(path: Path, n: int = 6, storage: str = "sqlite3", h: int = 48, w: int = 64) -> Path:
    from mtl_perception.tools.bagio import write_image_bag

    write_image_bag(path, frames(n, h, w), TOPIC, storage=storage)
    return path


def other_topics_bag(path: Path) -> Path:
    """A bag holding only a CameraInfo and a String topic."""
    from rosbags.rosbag2 import Writer

    from mtl_perception.tools.bagio import typestore

    ts = typestore()
    T = ts.types
    with Writer(path, version=9) as w:
        ci = w.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=ts)
        st = w.add_connection("/chatter", "std_msgs/msg/String", typestore=ts)
        header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=1, nanosec=0),
                                         frame_id="cam")
        roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                    do_rectify=False)
        info = T["sensor_msgs/msg/CameraInfo"](
            header=header, height=48, width=64, distortion_model="plumb_bob", d=np.zeros(5),
            k=np.eye(3).reshape(-1), r=np.eye(3).reshape(-1), p=np.zeros(12), binning_x=0, binning_y=0,
            roi=roi)
        for i in range(3):
            w.write(ci, (i + 1) * 10**8, ts.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))
            w.write(st, (i + 1) * 10**8, ts.serialize_cdr(T["std_msgs/msg/String"](data=f"hi {i}"),
                                                          "std_msgs/msg/String"))
    return path


def yuv_bag(path: Path, n: int = 3) -> Path:
    from mtl_perception.tools.bagio import write_image_bag

    write_image_bag(path, frames(n), TOPIC, encoding="bgr8")
    # rewrite the encoding in place: rosbags CDR keeps the string length, "yuv8" has the same 4 chars
    db = next(path.glob("*.db3"))
    con = sqlite3.connect(db)
    rows = con.execute("SELECT id, data FROM messages").fetchall()
    for mid, data in rows:
        con.execute("UPDATE messages SET data=? WHERE id=?", (bytes(data).replace(b"bgr8", b"yuv8", 1), mid))
    con.commit()
    con.close()
    return path


def truncated_sqlite(path: Path) -> Path:
    image_bag(path, n=24, h=96, w=128)
    db = next(path.glob("*.db3"))
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    return path


def malformed_sqlite(path: Path) -> Path:
    """Valid header and schema, garbage in the pages holding the later messages."""
    image_bag(path, n=24, h=96, w=128)
    db = next(path.glob("*.db3"))
    data = bytearray(db.read_bytes())
    page = struct.unpack(">H", data[16:18])[0] or 65536
    start = len(data) // 4 // page * page  # a few messages in: some frames come before the damage
    rng = np.random.default_rng(0)
    data[start: start + 3 * page] = rng.integers(0, 256, 3 * page, dtype=np.uint8).tobytes()
    db.write_bytes(bytes(data))
    return path


def empty_mcap(path: Path) -> Path:
    image_bag(path, n=2, storage="mcap")
    next(path.glob("*.mcap")).write_bytes(b"")
    return path


def bad_metadata(path: Path) -> Path:
    image_bag(path, n=2)
    (path / "metadata.yaml").write_text("rosbag2_bagfile_information:\n  version: [9\n  storage: x\n")
    return path


def _mcap_chunks(data: bytes) -> list[tuple[int, int, int]]:
    """(record start, crc field offset, records offset) of each chunk record of an mcap file."""
    out = []
    pos = 8  # magic
    while pos + 9 <= len(data):
        op = data[pos]
        (size,) = struct.unpack_from("<Q", data, pos + 1)
        body = pos + 9
        if op == 0x06:
            clen = struct.unpack_from("<I", data, body + 28)[0]
            out.append((pos, body + 24, body + 32 + clen + 8))
        if op == 0x02:  # footer
            break
        pos = body + size
    return out


def _records(data: bytes, start: int, end: int) -> list[int]:
    """Opcodes of the records laid out in data[start:end]."""
    ops, pos = [], start
    while pos < end:
        ops.append(data[pos])
        pos += 9 + struct.unpack_from("<Q", data, pos + 1)[0]
    return ops


def corrupt_mcap(path: Path, with_crc: bool = True) -> tuple[Path, list[int]]:
    """An uncompressed mcap bag of several chunks, the chunk CRCs filled in as rosbag2's writer does
    (rosbags writes 0 = none), then one byte flipped in the pixels of the second chunk.
    Returns (bag, number of messages in each chunk)."""
    image_bag(path, n=12, storage="mcap", h=240, w=320)
    f = next(path.glob("*.mcap"))
    data = bytearray(f.read_bytes())
    chunks = _mcap_chunks(bytes(data))
    assert len(chunks) >= 3, chunks
    counts = []
    for start, crc_at, rec_at in chunks:
        (usize,) = struct.unpack_from("<Q", data, start + 9 + 16)
        counts.append(_records(bytes(data), rec_at, rec_at + usize).count(0x05))
        if with_crc:
            struct.pack_into("<I", data, crc_at, crc32(bytes(data[rec_at: rec_at + usize])))
    _, _, rec_at = chunks[1]
    data[rec_at + 5000] ^= 0xFF  # inside the first message's pixels
    f.write_bytes(bytes(data))
    return path, counts


# -- compressed images -----------------------------------------------------------------------------
def png_bomb(side: int = 12000) -> bytes:
    """A real (decodable) grayscale PNG of side x side zeros: ~140 KB declaring side^2 pixels."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    comp = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte 0 + zeros
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst

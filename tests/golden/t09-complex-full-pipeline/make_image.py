#!/usr/bin/env python3
"""Writes input/triangle.raw: a 448x448 PNG (despite the extension, as Azure's t03 ships a JPEG
as bear.raw) of a filled orange triangle on blue, which the format module decodes and resizes to
224x224 and the snapshot module classifies. Python's standard library only."""

import os
import struct
import zlib

SIDE = 448
cx, cy, r = 230, 210, 120
rows = []
for y in range(SIDE):
    row = bytearray([0])  # filter type: none
    for x in range(SIDE):
        dx, dy = x - cx, y - cy
        inside = -r <= dy <= r and 2 * r * abs(dx) <= r * (dy + r)
        row += bytes((240, 140, 30) if inside else (30, 60, 160))
    rows.append(bytes(row))


def chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


png = b"\x89PNG\r\n\x1a\n"
png += chunk(b"IHDR", struct.pack(">IIBBBBB", SIDE, SIDE, 8, 2, 0, 0, 0))
png += chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
png += chunk(b"IEND", b"")
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "input", "triangle.raw")
with open(path, "wb") as f:
    f.write(png)
print(f"wrote {path} ({len(png)} bytes)")

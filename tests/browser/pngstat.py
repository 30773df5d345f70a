#!/usr/bin/python3
"""pngstat.py FILE.png WIDTH HEIGHT [NAME [--no-gate]]

Decodes a PNG (8-bit RGB or RGBA, non-interlaced: what Chromium writes)
with zlib alone and checks that the screenshot is WIDTH x HEIGHT and not
blank: pixel variance, distinct colours, and the report's colours present
(heatmap red and blue; the gate's green and pink cells unless --no-gate). Prints
"ok NAME" / "FAIL NAME" lines and a summary.
"""
import struct
import sys
import zlib

import numpy as np


def decode(path):
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if zlib.crc32(kind + body) != struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]:
            raise ValueError(f"chunk {kind!r}: bad CRC")
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = ihdr
    if depth != 8 or ctype not in (2, 6) or interlace:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {ctype}, interlace {interlace}")
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = w * bpp
    if len(raw) != h * (stride + 1):
        raise ValueError("image data has the wrong length")
    out = np.zeros((h, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=y * (stride + 1) + 1).astype(np.int32)
        if f == 0:
            cur = line
        elif f == 1:  # Sub: running sum per channel
            cur = (np.cumsum(line.reshape(w, bpp), axis=0) % 256).reshape(stride)
        elif f == 2:  # Up
            cur = (line + prev) % 256
        else:         # Average, Paeth: sequential along the row
            cur = line.copy()
            for x in range(stride):
                a = int(cur[x - bpp]) if x >= bpp else 0
                b = int(prev[x])
                if f == 3:
                    cur[x] = (cur[x] + (a + b) // 2) % 256
                elif f == 4:
                    c = int(prev[x - bpp]) if x >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pr = a if pa <= pb and pa <= pc else b if pb <= pc else c
                    cur[x] = (cur[x] + pr) % 256
                else:
                    raise ValueError(f"row {y}: unknown filter {f}")
        out[y] = cur
        prev = cur
    return out.reshape(h, w, bpp)[:, :, :3]


def near(px, rgb, tol=24):
    return int((np.abs(px.astype(np.int32) - np.array(rgb)).max(axis=2) <= tol).sum())


def main():
    path, want_w, want_h = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    name = sys.argv[4] if len(sys.argv) > 4 else "browser"
    try:
        px = decode(path)
    except (ValueError, OSError, zlib.error, TypeError, struct.error) as e:
        print(f"FAIL {name}_png: {path}: {e}")
        return 1
    h, w, _ = px.shape
    bad = 0
    if (w, h) == (want_w, want_h):
        print(f"ok {name}_size ({w} x {h})")
    else:
        print(f"FAIL {name}_size: {w} x {h}, want {want_w} x {want_h}")
        bad = 1
    var = float(px.astype(np.float64).var())
    colours = len(np.unique(px.reshape(-1, 3) @ np.array([65536, 256, 1])))
    white = near(px, (255, 255, 255), 4) / (w * h)
    print(f"# variance {var:.1f}, {colours} distinct colours, {100 * white:.1f} % white")
    if var > 500 and colours > 64 and white < 0.95:
        print(f"ok {name}_not_blank (variance {var:.0f}, {colours} colours)")
    else:
        print(f"FAIL {name}_not_blank: variance {var:.1f}, {colours} colours, {100 * white:.1f} % white")
        bad = 1
    # the report's own colours: heatmap red (lift above 2) and blue (lift
    # 1/8 or less), the gate's green (matching) and pink (differing) cells
    p = px.astype(np.int32)
    r, g, b = p[:, :, 0], p[:, :, 1], p[:, :, 2]
    counts = {
        "heatmap_red": int(((r - g > 80) & (r - b > 70)).sum()),
        "heatmap_blue": near(px, (33, 102, 172), 10),
        "match_cells": near(px, (230, 244, 234), 10),
        "differ_cells": near(px, (253, 232, 232), 10),
    }
    if "--no-gate" in sys.argv[5:]:
        del counts["match_cells"], counts["differ_cells"]
    for what, n in counts.items():
        if n >= 200:
            print(f"ok {name}_{what} ({n} pixels)")
        else:
            print(f"FAIL {name}_{what}: {n} pixels, want 200 or more")
            bad = 1
    return bad


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The content hash of .npz files (every array, by name), to check that a refactor left a run's
masks and trained parameters bit for bit the same:

    python scripts/npz_hash.py runs/demo/masks.npz runs/demo/model.npz

Prints ``<first 16 hex digits of sha256> <path>`` per file: it covers each array's name and
bytes (C order), not the zip container. Compare files of the same run made by two versions
of the code (same dtypes and shapes).
"""

import hashlib
import sys

import numpy as np


def npz_hash(path: str) -> str:
    h = hashlib.sha256()
    with np.load(path) as z:
        for name in sorted(z.files):
            a = np.ascontiguousarray(z[name])
            h.update(name.encode())
            h.update(a.tobytes())
    return h.hexdigest()[:16]


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(npz_hash(path), path)

"""Write scikit-learn's bundled digits images as an ``.npz`` for ``twinhpc ingest npz``.

``sklearn.datasets.load_digits()`` ships 1,797 8×8 grey images of handwritten digits with pixel
values 0–16 (no download). Output arrays:

    image  uint8 (1797, 8, 8, 1)   pixel values scaled from 0–16 to 0–255 (round(v * 255 / 16))
    label  int64 (1797,)           the digit 0–9

Usage::

    python jobs/digits_to_npz.py --out data/digits.npz
    twinhpc ingest npz data/digits.npz --out data/digits --label label --val-fraction 0.2 --test-fraction 0
    twinhpc preprocess jobs/digits.toml && twinhpc train jobs/digits.toml

The file is written to a temporary name and renamed, so a killed run leaves no partial file.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def digits() -> dict[str, np.ndarray]:
    """The digits as ``image`` uint8 (n, 8, 8, 1) and ``label`` int64 (n,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    image = np.rint(d.images * (255 / 16)).astype(np.uint8)[..., None]
    return {"image": image, "label": d.target.astype(np.int64)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output .npz file")
    a = p.parse_args(argv)
    data = digits()
    out = os.path.abspath(a.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".part.npz"
    np.savez(tmp, **data)
    os.replace(tmp, out)
    print(f"wrote {out}: {len(data['label'])} images 8x8x1", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

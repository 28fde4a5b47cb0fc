"""Stage `data`: read the source named by `data.source` into one uint8 array file.

Reads   params data.source, data.sha256, data.train_size, data.test_size, data.seed
Writes  data/dataset.npz  (x_train, y_train, x_test, y_test: uint8 NHWC images, int64 labels; classes)
"""
from __future__ import annotations

import numpy as np

from backdoorlab import params
from backdoorlab.sources import load_source
from backdoorlab.layout import DATASET
from backdoorlab.runner import phase, run_stage, stage_parser

PARAMS = ["data.source", "data.sha256", "data.train_size", "data.test_size", "data.seed"]


def main(args) -> None:
    p = params.load(PARAMS)
    with phase("data"):
        data = load_source(p["data.source"], p["data.sha256"], p["data.train_size"], p["data.test_size"],
                           p["data.seed"])
        data.save(DATASET)
    counts = np.bincount(data.y_train, minlength=data.num_classes)
    print(f"{p['data.source']}: {len(data.y_train)} train / {len(data.y_test)} test images of "
          f"{data.x_train.shape[1:]} in {data.num_classes} classes ({counts.min()}-{counts.max()} train per class)"
          f" -> {DATASET}")


if __name__ == "__main__":
    run_stage(main, stage_parser("data", __doc__))

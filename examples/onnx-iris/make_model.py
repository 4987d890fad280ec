"""Train a logistic regression on scikit-learn's bundled iris data and write it as model/model.onnx (no network).

    pip install scikit-learn skl2onnx
    python make_model.py [--out model/model.onnx]

The ONNX model has one input, `input` (float, shape [None, 4]), and two outputs: `label` (int64, the class id, which
predictor.py reads as prediction[0][0]) and `probabilities` (float, [None, 3]).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

HERE = Path(__file__).resolve().parent


def main() -> None:
    """Train, convert and write the model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "model" / "model.onnx", help="where to write the model")
    out = parser.parse_args().out

    features, labels = load_iris(return_X_y=True)  # ships inside scikit-learn
    model = LogisticRegression(max_iter=1000).fit(features, labels)
    # zipmap=False: probabilities as a plain [N, 3] tensor instead of a list of {class: probability} dicts.
    onnx_model = to_onnx(model, initial_types=[("input", FloatTensorType([None, 4]))],
                         options={"zipmap": False}, target_opset=13)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(onnx_model.SerializeToString())
    print(f"wrote {out} ({out.stat().st_size} bytes); training accuracy {model.score(features, labels):.3f}")


if __name__ == "__main__":
    main()

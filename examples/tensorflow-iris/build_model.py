"""Build a small iris SavedModel with the signature of Cortex's iris-classifier model; no network, no training.

    python examples/tensorflow-iris/build_model.py [OUTPUT_DIR]     # default: model/ next to this file

The classifier is linear discriminant analysis with a diagonal covariance, its weights fixed from Fisher's iris
statistics (per-class feature means, pooled within-class variances), which classifies the data set about as well
as Cortex's small DNN. Like the Estimator export Cortex served, it has the signatures "predict" and
"serving_default", float inputs of shape [None] and the outputs class_ids (int64), classes, logits, probabilities,
all_class_ids and all_classes.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
LABELS = ["setosa", "versicolor", "virginica"]
# Fisher's iris data (cm): per-class means of each feature, and the pooled within-class variance of each feature.
CLASS_MEANS = [[5.006, 3.428, 1.462, 0.246], [5.936, 2.770, 4.260, 1.326], [6.588, 2.974, 5.552, 2.026]]
POOLED_VARIANCES = [0.2650, 0.1154, 0.1852, 0.0420]
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "model"


def weights() -> tuple[list[list[float]], list[float]]:
    """Linear layer of the classifier: logit_k(x) = sum_j x_j * mean_kj / var_j - mean_kj**2 / (2 var_j)."""
    kernel = [[CLASS_MEANS[k][j] / POOLED_VARIANCES[j] for k in range(len(LABELS))] for j in range(len(FEATURES))]
    bias = [-sum(m * m / (2 * v) for m, v in zip(means, POOLED_VARIANCES, strict=True)) for means in CLASS_MEANS]
    return kernel, bias


def build(output: Path) -> Path:
    """Write the SavedModel to `output` (replacing what is there) and return it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    kernel, bias = weights()

    class IrisClassifier(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.kernel = tf.Variable(kernel, dtype=tf.float32, name="kernel")
            self.bias = tf.Variable(bias, dtype=tf.float32, name="bias")
            self.labels = tf.constant(LABELS)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name=name) for name in FEATURES])
        def predict(self, sepal_length, sepal_width, petal_length, petal_width):
            features = tf.stack([sepal_length, sepal_width, petal_length, petal_width], axis=1)
            logits = tf.matmul(features, self.kernel) + self.bias
            class_ids = tf.argmax(logits, axis=1, output_type=tf.int64)[:, tf.newaxis]
            batch = tf.shape(logits)[0]
            all_class_ids = tf.tile(tf.range(len(LABELS), dtype=tf.int32)[tf.newaxis], [batch, 1])
            return {
                "class_ids": class_ids,
                "classes": tf.gather(self.labels, class_ids),
                "logits": logits,
                "probabilities": tf.nn.softmax(logits),
                "all_class_ids": all_class_ids,
                "all_classes": tf.gather(self.labels, all_class_ids),
            }

    module = IrisClassifier()
    if output.exists():
        shutil.rmtree(output)
    signature = module.predict.get_concrete_function()
    tf.saved_model.save(module, str(output), signatures={"predict": signature, "serving_default": signature})
    return output


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT
    print(f"iris SavedModel written to {build(target)}")

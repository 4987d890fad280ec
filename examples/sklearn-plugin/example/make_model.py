"""Train a logistic regression on scikit-learn's own iris data and write it as model version 1."""
import os
import sys
from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "model" / "1"
out.mkdir(parents=True, exist_ok=True)
features, labels = load_iris(return_X_y=True)
joblib.dump(LogisticRegression(max_iter=1000).fit(features, labels), out / "model.joblib")
print(f"wrote {os.path.relpath(out / 'model.joblib')}")

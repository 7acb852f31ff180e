"""A scikit-learn model from your BentoML model store, served as a class deployment.

    pip install 'lowtide[bench]'        # scikit-learn
    lowtide up                          # in another terminal
    python examples/iris_sklearn.py

`save()` puts the classifier in the local BentoML model store (`bentoml models list` shows
it); `deploy(..., models=["iris_clf:latest"])` attaches it: it is uploaded once, and in each
replica `bentoml.sklearn.load_model` finds it, as in a Bento. The constructor runs once per
replica, before the replica takes a request.
"""

from __future__ import annotations

import bentoml

import lowtide

MODEL = "iris_clf"


def save() -> str:
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    data = load_iris()
    clf = RandomForestClassifier(n_estimators=50, random_state=0).fit(data.data, data.target)
    return str(bentoml.sklearn.save_model(MODEL, clf).tag)


class IrisClassifier:
    def __init__(self) -> None:  # once per replica
        self.model = bentoml.sklearn.load_model(f"{MODEL}:latest")

    def __call__(self, features: list[float]) -> int:  # POST /fn/iris-classifier
        return int(self.model.predict([features])[0])

    def proba(self, features: list[float]) -> list[float]:  # POST /fn/iris-classifier/proba
        return [float(p) for p in self.model.predict_proba([features])[0]]


if __name__ == "__main__":
    tag = save()
    ep = lowtide.deploy(IrisClassifier, models=[tag], memory="512Mi")
    print(ep.url)
    print("class:", ep([5.1, 3.5, 1.4, 0.2]))
    print("probabilities:", ep.proba([6.7, 3.0, 5.2, 2.3]))

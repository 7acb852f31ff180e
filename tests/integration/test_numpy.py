"""numpy arrays and scalars in arguments and results, through a real replica."""

from __future__ import annotations

import pytest

import lowtide
from lowtide import Client

pytestmark = pytest.mark.integration
np = pytest.importorskip("numpy")


def test_numpy_round_trip_and_client_side_bad_input(client: Client, unique_name: str) -> None:
    def scale(X, factor=1.0):
        import numpy

        arr = numpy.asarray(X) * factor
        return {"scaled": arr, "total": arr.sum(), "n": numpy.int64(arr.shape[0])}

    X = np.arange(12, dtype=np.float64).reshape(4, 3)
    ep = client.deploy(scale, name=unique_name)
    answer = ep(X[:3], factor=np.float32(2.0))
    assert answer == {"scaled": (X[:3] * 2).tolist(), "total": float((X[:3] * 2).sum()),
                      "n": 3}
    assert np.asarray(answer["scaled"]).shape == (3, 3)
    with pytest.raises(lowtide.BadInput, match="takes 2 positional"):
        ep(X, 2.0, "extra")
    with pytest.raises(lowtide.BadInput, match="not JSON"):
        ep({1, 2})

import json

import pytest

from lowtide._jsonable import jsonable
from lowtide.workers.runtime import encode_value

np = pytest.importorskip("numpy")


@pytest.mark.parametrize(("value", "expected"), [
    (np.arange(4).reshape(2, 2), [[0, 1], [2, 3]]),
    (np.float32(0.5), 0.5),
    (np.int64(7), 7),
    (np.bool_(False), False),
    (np.array([], dtype=np.float64), []),
    (np.array(["a", "b"]), ["a", "b"]),
])
def test_numpy_values_become_json(value: object, expected: object) -> None:
    assert json.loads(json.dumps(value, default=jsonable)) == expected


def test_results_with_arrays_are_answered_as_json() -> None:
    result = encode_value({"probs": np.array([0.25, 0.75]), "label": np.int32(1)})
    assert result.status == 200
    assert json.loads(result.body) == {"probs": [0.25, 0.75], "label": 1}


def test_a_nan_result_is_still_refused_with_what_to_do() -> None:
    result = encode_value(np.array([np.nan]))
    assert result.status == 500 and b"JSON-compatible" in result.body


def test_torch_tensors_become_lists() -> None:
    torch = pytest.importorskip("torch")
    result = encode_value(torch.arange(3))
    assert json.loads(result.body) == [0, 1, 2]


def test_other_objects_name_their_type() -> None:
    with pytest.raises(TypeError, match="a object is not JSON"):
        jsonable(object())

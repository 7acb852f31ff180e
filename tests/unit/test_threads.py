"""A replica's compute threads fit to its cores (workers/threads.py)."""

from __future__ import annotations

import pytest

from lowtide.workers.threads import THREAD_VARS, fit_threads, threads_for


@pytest.mark.parametrize(("cpu", "threads"), [(0.25, 1), (1.0, 1), (1.5, 1), (2.0, 2),
                                              (7.99, 7), (8, 8)])
def test_threads_are_the_whole_cores_given_at_least_one(cpu: float, threads: int) -> None:
    assert threads_for(cpu) == threads


def test_the_variables_are_set_for_libraries_loaded_later() -> None:
    env: dict[str, str] = {"MKL_NUM_THREADS": "3"}
    assert fit_threads(2.0, env) == 2
    assert env == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "3",
                   "OPENBLAS_NUM_THREADS": "2"}  # a variable already set is kept


@pytest.mark.parametrize("env", [{"OMP_NUM_THREADS": "4"}, {}])
def test_a_deployment_that_chose_or_unknown_cores_is_left_alone(env: dict[str, str]) -> None:
    before = dict(env)
    assert fit_threads(None if not env else 1.0, env) is None
    assert env == before


def test_torch_already_imported_is_capped() -> None:
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        env: dict[str, str] = {}
        assert fit_threads(1.0, env) == 1
        assert torch.get_num_threads() == 1
        assert set(env) == set(THREAD_VARS)
    finally:
        torch.set_num_threads(before)

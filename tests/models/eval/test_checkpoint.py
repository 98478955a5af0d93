"""The restricted loader rebuilds numpy arrays and refuses every other global before calling it."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from models.eval.checkpoint import load_numpy_pickle


class _RunsCommand:
    """Pickles as a call of os.system: what a tampered checkpoint would carry."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _CallsEval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def _tree() -> dict:
    rng = np.random.default_rng(0)
    return {
        "params": {"Conv_0": {"kernel": rng.standard_normal((3, 3, 3, 4, 8)).astype(np.float32)}},
        "batch_stats": {"mean": rng.standard_normal((1, 1, 1, 1, 8)), "count": np.arange(5)},
        "list": [np.zeros(2, dtype=np.float16), (np.ones(1, dtype=np.int8),)],
    }


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_numpy_array_tree_loads_back_identical(protocol: int, tmp_path: Path) -> None:
    path = tmp_path / "weights.ckpt"
    path.write_bytes(pickle.dumps(_tree(), protocol=protocol))
    loaded = load_numpy_pickle(path)
    expected = _tree()
    np.testing.assert_array_equal(
        loaded["params"]["Conv_0"]["kernel"], expected["params"]["Conv_0"]["kernel"]
    )
    assert loaded["params"]["Conv_0"]["kernel"].dtype == np.float32
    np.testing.assert_array_equal(loaded["batch_stats"]["mean"], expected["batch_stats"]["mean"])
    np.testing.assert_array_equal(loaded["batch_stats"]["count"], np.arange(5))
    assert loaded["list"][0].dtype == np.float16 and loaded["list"][1][0].dtype == np.int8


def test_pickle_calling_os_system_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    payload = pickle.dumps({"params": {"w": np.ones(3)}, "x": _RunsCommand(f"touch {marker}")})
    with pytest.raises(pickle.UnpicklingError, match=r"refused global (os|posix)\.system"):
        load_numpy_pickle(payload)
    assert not marker.exists()
    # Control: the same bytes are live, plain pickle would have run the command.
    pickle.loads(payload)
    assert marker.exists()


def test_pickle_referencing_builtins_is_refused() -> None:
    with pytest.raises(pickle.UnpicklingError, match=r"refused global builtins\.eval"):
        load_numpy_pickle(pickle.dumps([np.zeros(2), _CallsEval()]))


def test_pickle_of_other_classes_is_refused() -> None:
    from collections import OrderedDict

    with pytest.raises(pickle.UnpicklingError, match=r"refused global collections\.OrderedDict"):
        load_numpy_pickle(pickle.dumps(OrderedDict(w=np.zeros(2))))


def test_object_arrays_are_refused() -> None:
    with pytest.raises(pickle.UnpicklingError, match="object array refused"):
        load_numpy_pickle(pickle.dumps({"w": np.array([1, "a"], dtype=object)}))

"""Load a pickle of numpy arrays without running anything else it references.

`pickle.load` calls whatever global a file names, so a checkpoint downloaded from a package
index could run arbitrary code. The restricted unpickler below resolves only the few globals
numpy needs to rebuild arrays, and refuses everything else before it is called.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

try:  # numpy >= 2 keeps the implementation in numpy._core; old pickles name numpy.core.
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

# Every global an array pickle needs, under the module names numpy 1.x and 2.x write.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **{
        (mod, "_reconstruct"): _multiarray._reconstruct
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
    },
    **{
        (mod, "_frombuffer"): _numeric._frombuffer
        for mod in ("numpy.core.numeric", "numpy._core.numeric")
    },
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and plain containers, and refuses any other global."""

    def find_class(self, module: str, name: str) -> Any:
        """Resolve only numpy's array reconstruction helpers; refuse every other global."""
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: this loader only rebuilds numpy arrays "
                "(the file is not a plain numpy checkpoint, or it was tampered with)"
            ) from None


def load_numpy_pickle(source: str | Path | bytes) -> Any:
    """Unpickle a file (or bytes) that may hold only numpy arrays in dicts, lists and tuples."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    tree = RestrictedUnpickler(io.BytesIO(data)).load()
    _check_numeric(tree, "")
    return tree


def _check_numeric(node: Any, where: str) -> None:
    """Refuse object arrays and non-container leaves: a weight tree holds numbers only."""
    if isinstance(node, np.ndarray):
        if node.dtype.hasobject:
            raise pickle.UnpicklingError(
                f"{where or 'root'}: object array refused (weights are numeric)"
            )
    elif isinstance(node, Mapping):
        for key, value in node.items():
            if not isinstance(key, str):
                raise pickle.UnpicklingError(f"{where or 'root'}: non-string key {key!r} refused")
            _check_numeric(value, f"{where}/{key}")
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            _check_numeric(value, f"{where}/{i}")
    elif not isinstance(node, int | float | bool | str | type(None)):
        raise pickle.UnpicklingError(f"{where or 'root'}: unexpected {type(node).__name__} refused")

"""A preallocated key/value cache: one tensor per layer for keys and one for values.

Rows are appended in order and never rewritten: a decoding step writes the keys and values of the
group it predicts, whose *inputs* are already committed tokens (the previous group's), so those
entries are final the moment they are computed. (FAR's noisy frame is the one exception: its ODE
steps read the cache and are then rolled back with ``truncate``.) ``keep`` may evict rows
that no later query can see (bounded context); attention does not care where a row sits, since
positions come from RoPE coordinates, not from cache slots.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every committed position, (B, n_head, max_len, head_dim) per layer."""

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_head: int,
        max_len: int,
        head_dim: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0  # rows held (class token included), all committed

    def write(
        self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, H, g, D) keys/values at [start, start+g); return every key/value up to there."""
        if start != self.length:
            raise ValueError(
                f"cache holds {self.length} positions; a write at {start} would leave a gap"
            )
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"cache of {self.max_len} positions cannot take position {end - 1}")
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def commit(self, end: int) -> None:
        """Mark positions up to ``end`` as written by every layer."""
        self.length = end

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the held rows ``rows`` (ascending), moved to the front: evicts keys that no
        later query may see, so a bounded-context decoder needs a bounded cache."""
        n = rows.numel()
        # Advanced indexing copies before the write, so overlapping source/target rows are safe.
        self.keys[:, :, :, :n] = self.keys[:, :, :, rows]
        self.values[:, :, :, :n] = self.values[:, :, :, rows]
        self.length = n

    def truncate(self, length: int) -> None:
        """Forget the rows from ``length`` on: a chunk run only for its outputs is rolled back and
        the next write overwrites its rows."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache holding {self.length} rows to {length}")
        self.length = length

    def reset(self) -> None:
        """Forget every position (the buffers are reused)."""
        self.length = 0

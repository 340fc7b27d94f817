"""Random draws of one training step that do not depend on how many processes share the batch.

Why: with data parallelism each process holds a slice of the global batch. If every process drew
noise, timesteps and dropout for its own slice from a generator of its own, a 2-process run would
train on different noise than a 1-process run of the same global batch, and the number of GPUs would
change the result. ``BatchDraws`` draws every tensor for the *global* batch from one generator seeded
alike on every process and keeps this process's rows, so process ``r`` of ``w`` sees exactly rows
``[r*b, (r+1)*b)`` of what a single process with batch ``w*b`` would have drawn. With one process
it is a plain ``torch.Generator``: the same numbers, in the same order.
"""
from __future__ import annotations

import torch


class BatchDraws:
    """Batch-first random draws for rows ``[rank*b, (rank+1)*b)`` of a global batch of ``world*b``.

    Every draw's first dimension is the local batch ``b``; draws must come in the same order on every
    process (they do: each process runs the same loss code).
    """

    def __init__(self, seed: int, rank: int = 0, world: int = 1):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a world of {world} processes")
        self.seed, self.rank, self.world = int(seed), rank, world
        self.generator = torch.Generator().manual_seed(self.seed)

    def initial_seed(self) -> int:
        return self.seed

    def spawn(self, offset: int) -> "BatchDraws":
        """An independent stream (seed + ``offset``) for the same slice: e.g. CA-SP's t' and e'."""
        return BatchDraws(self.seed + offset, self.rank, self.world)

    def _slice(self, full: torch.Tensor, b: int) -> torch.Tensor:
        return full[self.rank * b: (self.rank + 1) * b]

    def randn(self, shape: tuple, dtype: torch.dtype | None = None) -> torch.Tensor:
        b = shape[0]
        return self._slice(torch.randn((b * self.world, *shape[1:]), generator=self.generator, dtype=dtype), b)

    def rand(self, shape: tuple) -> torch.Tensor:
        b = shape[0]
        return self._slice(torch.rand((b * self.world, *shape[1:]), generator=self.generator), b)

    def randint(self, high: int, shape: tuple) -> torch.Tensor:
        b = shape[0]
        return self._slice(torch.randint(0, high, (b * self.world, *shape[1:]), generator=self.generator), b)


def as_draws(g: "BatchDraws | torch.Generator | None") -> BatchDraws:
    """A ``BatchDraws`` for ``g``: itself, or a one-process stream continuing a ``torch.Generator``
    (tools and tests that call a loss directly), or a fresh seed-0 stream for ``None``."""
    if isinstance(g, BatchDraws):
        return g
    d = BatchDraws(0)
    if g is not None:
        d.generator, d.seed = g, g.initial_seed()
    return d

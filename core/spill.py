"""Disk spills for pools larger than memory: blobs addressed by item number.

``select-data`` reads its pool once (stdin cannot be read twice) and keeps only small
per-record arrays in memory; the records themselves (and the texts that are compared) go
to a ``BlobSpill``, a temporary file read back by memory map, either in order or at random
(for candidate pairs and chosen records).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any


class BlobSpill:
    """Append-only byte blobs in a temporary file; ``get(i)`` after ``freeze()``."""

    def __init__(self, directory: str | None = None, prefix: str = "xpkit-spill-") -> None:
        fd, self.path = tempfile.mkstemp(prefix=prefix, dir=directory)
        self._f = os.fdopen(fd, "wb", buffering=1 << 20)
        self._ends: list[int] = []
        self._size = 0
        self._mm: mmap.mmap | None = None
        self._starts: Any = None
        self._stops: Any = None

    def __len__(self) -> int:
        return len(self._ends)

    def extend(self, blobs: Iterable[bytes]) -> None:
        for blob in blobs:
            self._f.write(blob)
            self._size += len(blob)
            self._ends.append(self._size)

    def freeze(self) -> None:
        """Finish writing and map the file for reading."""
        import numpy as np

        if self._mm is not None:
            return
        self._f.close()
        stops = np.asarray(self._ends, np.int64)
        self._ends = []
        starts = np.zeros_like(stops)
        starts[1:] = stops[:-1]
        self._starts, self._stops = starts, stops
        if self._size:
            with open(self.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def get(self, i: int) -> bytes:
        if self._mm is None:
            return b""
        return self._mm[int(self._starts[i]):int(self._stops[i])]

    def many(self, indices: Iterable[int]) -> list[bytes]:
        return [self.get(i) for i in indices]

    def __iter__(self) -> Iterator[bytes]:
        for i in range(len(self._starts) if self._starts is not None else 0):
            yield self.get(i)

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if not self._f.closed:
            self._f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class ArraySpill:
    """Rows of a fixed-width numpy array appended in batches, read back by memory map."""

    def __init__(self, width: int, dtype: str, directory: str | None = None) -> None:
        fd, self.path = tempfile.mkstemp(prefix="xpkit-rows-", dir=directory)
        self._f = os.fdopen(fd, "wb", buffering=1 << 20)
        self.width = width
        self.dtype = dtype
        self.rows = 0
        self._array: Any = None

    def append(self, block: Any) -> None:
        import numpy as np

        block = np.ascontiguousarray(block, dtype=self.dtype)
        self._f.write(block.tobytes())
        self.rows += block.shape[0]

    def array(self) -> Any:
        """The rows written so far, as a read-only memory-mapped ``(rows, width)`` array."""
        import numpy as np

        if self._array is None:
            self._f.close()
            if self.rows == 0:
                self._array = np.zeros((0, self.width), self.dtype)
            else:
                self._array = np.memmap(self.path, dtype=self.dtype, mode="r",
                                        shape=(self.rows, self.width))
        return self._array

    def close(self) -> None:
        self._array = None
        if not self._f.closed:
            self._f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

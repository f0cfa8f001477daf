"""PCM frames the caller streams into ``analyse_stream``, as a :class:`BlockSource` like the file and the device.

The caller's frames come in whatever sizes it likes (a browser's 128-sample render quanta, a Membrane buffer, a
whole file); the analysers and the runner need blocks of ``block_size`` frames, the blocks a file source would
read. :class:`InputSource` re-blocks the frames, so the same samples give the same blocks, and so the same
chunks, as ``source='file'`` — whatever the caller's frame size. The last block may be short, as a file's is.

A frame is one input item: a 1-D float32 array (full scale ±1.0) or int16 array, or bytes of little-endian
int16 samples; with ``channels > 1`` the samples are interleaved (frame ``[l0, r0, l1, r1, ...]``), so a frame
holds a whole number of sample frames. int16 becomes float as a 16-bit WAV file does (``/ 32768``). Anything
else is refused with an :class:`ArgumentError` naming the item (``analyse_stream: input item 3: ...``): the call
ends INVALID_ARGUMENT, like an item the engine itself refuses.

The source is ``live``: the caller paces it, so the runner never waits for the wall clock, and a read blocks
until the caller sends the next frame (or ends its input).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from python_worker.sdk import ArgumentError

from .sources import BlockSource

INT16_SCALE = 32768.0


class FrameError(ArgumentError):
    """An input frame that is not PCM this tool reads (``INVALID_ARGUMENT``); the message names the item."""

    error_type = "FrameError"


def decode_frame(item: Any, channels: int) -> np.ndarray:
    """One frame as ``(frames, channels)`` float32; ValueError says what is wrong with it."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        size = len(item) if not isinstance(item, memoryview) else item.nbytes
        if size % (2 * channels):
            what = "int16 samples" if channels == 1 else f"int16 sample frames of {channels} channels"
            raise ValueError(f"{size} bytes is not a whole number of {what} ({2 * channels} bytes each)")
        samples = np.frombuffer(item, dtype="<i2").astype(np.float32) / np.float32(INT16_SCALE)
    elif isinstance(item, np.ndarray):
        if item.ndim != 1:
            raise ValueError(
                f"a {item.ndim}-D array (shape {tuple(item.shape)}): send 1-D frames"
                + (" (channels interleaved)" if channels > 1 else "")
            )
        if item.dtype.kind == "f" and item.dtype.itemsize == 4:
            samples = item.astype(np.float32, copy=False)  # any byte order
            if not np.isfinite(samples).all():
                raise ValueError("the float32 frame holds NaN or infinite samples")
        elif item.dtype.kind == "i" and item.dtype.itemsize == 2:
            samples = item.astype(np.float32) / np.float32(INT16_SCALE)
        else:
            raise ValueError(f"a {item.dtype} array: send float32 samples in [-1, 1] or int16 samples")
        if len(samples) % channels:
            raise ValueError(f"{len(samples)} samples is not a whole number of frames of {channels} channels")
    else:
        raise ValueError(f"a {type(item).__name__}: send a float32 array or int16 little-endian bytes")
    return samples.reshape(-1, channels)


class InputSource(BlockSource):
    """The caller's frames, re-blocked into ``block_size`` frames (the last block may be shorter)."""

    kind = "input"
    live = True  # paced by the caller: never by the wall clock

    def __init__(self, frames: Iterator[Any], tool: str, block_size: int, sample_rate: int, channels: int) -> None:
        super().__init__(block_size, sample_rate, channels)
        self.tool = tool
        self._frames = frames
        self._pending: list[np.ndarray] = []  # frames received and not yet read, in order
        self._pending_frames = 0
        self._exhausted = False
        self.items = 0  # input items taken so far

    def _open(self) -> None:
        pass

    def _take(self) -> bool:
        """Take the next item into the pending frames; False when the input has ended."""
        try:
            item = next(self._frames)
        except StopIteration:
            self._exhausted = True
            return False
        index, self.items = self.items, self.items + 1
        try:
            block = decode_frame(item, self.channels)
        except ValueError as exc:
            raise FrameError(f"{self.tool}: input item {index}: {exc}") from None
        if len(block):
            self._pending.append(block)
            self._pending_frames += len(block)
        return True

    def read(self, timeout: float) -> np.ndarray | None:
        # blocks until the caller has sent a block's worth (a live source's timeout is for devices)
        while self._pending_frames < self.block_size and not self._exhausted:
            self._take()
        if not self._pending_frames:
            self.ended = True
            return None
        pending = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        block, rest = pending[: self.block_size], pending[self.block_size :]
        self._pending = [rest] if len(rest) else []
        self._pending_frames = len(rest)
        return block

    def _close(self) -> None:
        self._pending = []
        self._pending_frames = 0

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "items": self.items}

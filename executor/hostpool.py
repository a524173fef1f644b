"""The host KV store: one pinned region, allocated once, carved into fixed-size blocks.

torch's caching host allocator rounds every pinned block up to a power of two (a 64 GiB + 1 token store would
take 128 GiB), so the pool takes ordinary memory of the exact size and registers it with `cudaHostRegister`.
Each block is one (layer, KV-head group) slot laid out token-major, `[tokens, batch, 2 (K, V), heads, head_dim]`,
so the first P tokens of a slot, or the C tokens appended at a step, are one contiguous run: one copy each.
"""

from __future__ import annotations

import math
import time

import torch

ALIGN = 4096  # bytes; every block starts on a page


class HostPool:
    """`reserve` blocks first, then `allocate` once; `close` unregisters (also done on garbage collection)."""

    def __init__(self, pinned: bool):
        self.pinned = pinned
        self._sizes: list[int] = []
        self._offsets: list[int] = []
        self.nbytes = 0
        self.buffer: torch.Tensor | None = None
        self.setup_s = 0.0
        self._registered_ptr: int | None = None

    def reserve(self, shape: tuple[int, ...], dtype: torch.dtype) -> int:
        """Reserve a block; returns its handle for `block`."""
        size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        self._offsets.append(self.nbytes)
        self._sizes.append(size)
        self.nbytes += -(-size // ALIGN) * ALIGN
        return len(self._sizes) - 1

    def allocate(self) -> None:
        t0 = time.perf_counter()
        self.buffer = torch.empty(max(self.nbytes, 1) + ALIGN, dtype=torch.uint8)
        # start on a page boundary
        shift = (-self.buffer.data_ptr()) % ALIGN
        self.buffer = self.buffer[shift : shift + max(self.nbytes, 1)]
        if self.pinned and self.nbytes:
            self.buffer.zero_()  # fault the pages in with all threads; registering then only pins them
            err = int(torch.cuda.cudart().cudaHostRegister(self.buffer.data_ptr(), self.nbytes, 0))
            if err != 0:
                raise RuntimeError(
                    f"cudaHostRegister of {self.nbytes / 2**30:.2f} GiB failed with cudaError {err}; "
                    "is the host short of lockable memory (ulimit -l)?"
                )
            self._registered_ptr = self.buffer.data_ptr()
        self.setup_s = time.perf_counter() - t0

    def block(self, handle: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        off, size = self._offsets[handle], self._sizes[handle]
        return self.buffer[off : off + size].view(dtype).view(shape)

    @property
    def pinned_bytes(self) -> int:
        return self.nbytes if self._registered_ptr is not None else 0

    def close(self) -> None:
        if self._registered_ptr is not None:
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaHostUnregister(self._registered_ptr)
            self._registered_ptr = None
        self.buffer = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def pinned_empty(shape: tuple[int, ...], dtype: torch.dtype, pinned: bool) -> torch.Tensor:
    """A small pinned staging buffer (q, partial outputs, gathered rows); sizes are small enough that the caching
    allocator's rounding does not matter, and the trace counts them."""
    return torch.empty(shape, dtype=dtype, pin_memory=pinned)


class _DeviceAlias:
    """A pinned host tensor's memory as the CUDA array interface describes it, as int16 (the interface has no
    bfloat16): pinned memory is mapped into the GPU's address space at the same address (unified addressing)."""

    def __init__(self, host: torch.Tensor):
        self.host = host  # kept alive by the CUDA tensor made from this object
        self.__cuda_array_interface__ = {
            "shape": (host.numel() * host.element_size() // 2,),
            "typestr": "<i2",
            "data": (host.data_ptr(), False),
            "version": 3,
        }


def device_alias(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The same memory as the pinned, contiguous `host`, as a tensor on `device` (itself on the CPU): a kernel that
    reads it reads host memory over the link, with no copy engine between (zero-copy). Used for reads of a few
    hundred bytes that must not queue behind the copy engine's long prefetches."""
    if device.type != "cuda":
        return host
    if not (host.is_contiguous() and host.is_pinned() and (host.numel() * host.element_size()) % 2 == 0):
        raise ValueError("device_alias needs a pinned, contiguous tensor of whole 16-bit words")
    alias = torch.as_tensor(_DeviceAlias(host), device=device)
    return alias.view(host.dtype).view(host.shape)

"""Philox4x32-10 in numpy, bit-identical to tensor/philox.h and tensor/random.cpp.

Lets golden scripts draw the same "random" tensors as the C++ Generator, so large seeded weights
(e.g. a full VGG16 backbone) need not be stored in a golden file: both sides regenerate them.

Stream layout (tensor/random.h): element i of a fill that starts at counter `offset` uses the
128-bit counter (offset + i // 4, 0) -- low 64 bits, high 64 bits zero --, the key
(seed low 32 bits, seed high 32 bits), and word i % 4 of the 4x32-bit output block.
  uniform: u = ((word >> 8) + 0.5) * 2^-24, in (0, 1), the same 24-bit value for every dtype;
           fill_uniform(lo, hi) writes float(lo + (hi - lo) * u), computed in f64, then rounded
           to the tensor's dtype.
A fill of n elements consumes ceil(n / 4) counters; Generator.uniform_ advances its offset by that.

mulhilo is exact in uint64: a 32x32-bit product fits in 64 bits.
"""
import numpy as np

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)  # round multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
_MASK32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)


def philox4x32_10(ctr, k0, k1):
    """ctr: (n, 4) array of 32-bit values (any int dtype); k0, k1: Python ints -> (n, 4) uint32."""
    c = [np.asarray(ctr[:, j], dtype=np.uint64) for j in range(4)]
    k0, k1 = int(k0) & 0xFFFFFFFF, int(k1) & 0xFFFFFFFF
    for r in range(10):
        if r > 0:
            k0 = (k0 + _W0) & 0xFFFFFFFF
            k1 = (k1 + _W1) & 0xFFFFFFFF
        p0 = _M0 * c[0]
        p1 = _M1 * c[2]
        hi0, lo0 = p0 >> _S32, p0 & _MASK32
        hi1, lo1 = p1 >> _S32, p1 & _MASK32
        c = [hi1 ^ c[1] ^ np.uint64(k0), lo1, hi0 ^ c[3] ^ np.uint64(k1), lo0]
    return np.stack(c, axis=1).astype(np.uint32)


def uniform_words(seed, offset, n):
    """The n 32-bit words (uint32, (n,)) of a fill of n elements at `offset` under `seed`."""
    nblocks = (n + 3) // 4
    c = np.arange(nblocks, dtype=np.uint64) + np.uint64(offset)
    ctr = np.zeros((nblocks, 4), dtype=np.uint64)
    ctr[:, 0] = c & _MASK32
    ctr[:, 1] = c >> _S32
    seed = int(seed)
    return philox4x32_10(ctr, seed & 0xFFFFFFFF, seed >> 32).reshape(-1)[:n]


def uniform_at(seed, offset, n):
    """u in (0, 1) as float64, exactly philox::uniform_at for i = 0..n-1."""
    w = uniform_words(seed, offset, n)
    return ((w >> np.uint32(8)).astype(np.float64) + 0.5) * (1.0 / 16777216.0)


def fill_uniform(shape, seed, offset, lo=0.0, hi=1.0, dtype=np.float32):
    """fill_uniform(t, seed, offset, lo, hi) for a tensor of `shape`: lo + (hi - lo) * u in f64,
    then rounded to `dtype` (round to nearest, as static_cast<float>)."""
    n = int(np.prod(shape, dtype=np.int64))
    v = float(lo) + (float(hi) - float(lo)) * uniform_at(seed, offset, n)
    return v.astype(dtype).reshape(shape)


def counters(n):
    """Counters a fill of n elements consumes (philox_counters)."""
    return (int(n) + 3) // 4


class Generator:
    """tensor/random.h Generator: a seed plus a running counter offset."""

    def __init__(self, seed=0, offset=0):
        self.seed, self.offset = int(seed), int(offset)

    def uniform(self, shape, lo=0.0, hi=1.0, dtype=np.float32):
        n = int(np.prod(shape, dtype=np.int64))
        out = fill_uniform(shape, self.seed, self.offset, lo, hi, dtype)
        self.offset += counters(n)
        return out


def self_test():
    """The Random123 known-answer vectors (as tests/tensor/test_philox.cpp); raises on mismatch."""
    kats = [
        ((0, 0, 0, 0), 0, 0, (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        (
            (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF),
            0xFFFFFFFF,
            0xFFFFFFFF,
            (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD),
        ),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            0xA4093822,
            0x299F31D0,
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    ctr = np.array([k[0] for k in kats], dtype=np.uint64)
    for i, (c, k0, k1, expect) in enumerate(kats):
        got = philox4x32_10(ctr[i : i + 1], k0, k1)[0]
        if [int(x) for x in got] != list(expect):
            raise AssertionError(f"philox KAT {i}: got {[hex(int(x)) for x in got]}")


self_test()  # on import: nothing generated from a broken port is ever written

if __name__ == "__main__":
    print("philox KATs ok; first uniforms (seed 42, offset 7):", uniform_at(42, 7, 4))

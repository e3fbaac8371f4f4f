"""The random numbers of a trajectory, from an unrolled threefry-2x32 hash.

Every random number the sampler draws per trajectory (the per-iteration key, its
split, the momentum, the jitter and the Metropolis uniform) comes from the
threefry-2x32 counter-based hash with 20 rounds (Salmon, Moraes, Dror, Shaw, "Parallel
random numbers: as easy as 1, 2, 3", SC'11), the generator behind ``jax.random``.

Why not ``jax.random`` itself: on CPU, JAX lowers threefry as a *rolled* loop (five
passes of four rounds, to keep compile times down), so every key derivation is a
small loop of its own and the momentum hash makes five round trips through memory.
Written here as straight-line array code, XLA fuses the hash with the uniform and
normal transforms into one pass. The values are those of ``jax.random`` wherever
that is defined the same way (``fold_in``, ``split``, ``uniform`` with the default
partitionable threefry: ``tests/test_rng.py`` checks them bit for bit, and the hash
itself against ``jax.extend.random.threefry_2x32``).

The momentum is the one stream that differs: ``jax.random.normal`` spends one 64-bit
block per 32-bit draw (it keeps the XOR of the two words); :func:`normal` uses both
words of every block, half the hashing.

Keys are typed threefry keys (``jax.random.key``) or their raw ``uint32[2]`` data;
keys of another implementation (``impl="rbg"``) go through ``jax.random``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

_ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)
_PARITY = np.uint32(0x1BD11BDA)


def _rotl(x: Array, r: int) -> Array:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(key: Array, x0: Array, x1: Array) -> tuple[Array, Array]:
    """The 20-round threefry-2x32 block function of the counter ``(x0, x1)`` under
    the raw key ``key`` (``uint32[2]``); both counters broadcast together."""
    k0, k1 = key[0], key[1]
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0 = jnp.asarray(x0, jnp.uint32) + ks[0]
    x1 = jnp.asarray(x1, jnp.uint32) + ks[1]
    for group in range(5):
        for r in _ROTATIONS[4 * (group % 2): 4 * (group % 2) + 4]:
            x0 = x0 + x1
            x1 = _rotl(x1, r) ^ x0
        x0 = x0 + ks[(group + 1) % 3]
        x1 = x1 + ks[(group + 2) % 3] + np.uint32(group + 1)
    return x0, x1


def is_threefry(key: Array) -> bool:
    """A typed threefry key, or raw ``uint32[2]`` key data."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return str(jax.random.key_impl(key)) == "threefry2x32"
    return key.dtype == jnp.uint32 and key.shape[-1:] == (2,)


def _data(key: Array) -> Array:
    return jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key


def _like(key: Array, data: Array) -> Array:
    """``data`` as a key of the same kind as ``key`` (typed or raw)."""
    return jax.random.wrap_key_data(data) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else data


def fold_in(key: Array, data: Array | int) -> Array:
    """``jax.random.fold_in`` for one threefry key."""
    if not is_threefry(key):
        return jax.random.fold_in(key, data)
    y0, y1 = threefry2x32(_data(key), 0, jnp.asarray(data).astype(jnp.uint32))
    return _like(key, jnp.stack([y0, y1]))


def split(key: Array, num: int) -> Array:
    """``jax.random.split`` for one threefry key (partitionable threefry)."""
    if not is_threefry(key):
        return jax.random.split(key, num)
    y0, y1 = threefry2x32(_data(key), 0, jnp.arange(num, dtype=jnp.uint32))
    return _like(key, jnp.stack([y0, y1], axis=-1))


def _unit_interval(bits: Array, dtype: Any) -> Array:
    """Uniform on [0, 1) from the high mantissa-many bits: a float in [1, 2), minus 1."""
    if dtype == jnp.float32:
        one_two = jax.lax.bitcast_convert_type((bits >> np.uint32(9)) | np.uint32(0x3F800000), jnp.float32)
    else:
        exponent_of_one = np.uint64(0x3FF0000000000000)
        one_two = jax.lax.bitcast_convert_type((bits >> np.uint64(12)) | exponent_of_one, jnp.float64)
    return one_two - 1.0


def uniform(key: Array, dtype: Any, minval: float = 0.0, maxval: float = 1.0) -> Array:
    """``jax.random.uniform(key, (), dtype, minval, maxval)`` (partitionable threefry)."""
    dtype = jnp.dtype(dtype)
    if not is_threefry(key) or dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        return jax.random.uniform(key, (), dtype, minval, maxval)
    y0, y1 = threefry2x32(_data(key), 0, 0)
    if dtype == jnp.float32:
        bits = y0 ^ y1
    else:
        bits = (y0.astype(jnp.uint64) << np.uint64(32)) | y1.astype(jnp.uint64)
    lo, hi = jnp.asarray(minval, dtype), jnp.asarray(maxval, dtype)
    return jnp.maximum(lo, _unit_interval(bits, dtype) * (hi - lo) + lo)


def _lattice_split() -> bool:
    """Whether a program is traced under a mesh that splits lattices (``jax.set_mesh`` of
    :func:`hmc.devices.place`'s mesh, around the lattice-mesh chunk programs)."""
    mesh = jax.sharding.get_abstract_mesh()
    return not mesh.empty and dict(mesh.shape).get("lattice", 1) > 1


def _local_words(key: Array, size: int, dtype: Any) -> Array:
    """The random words of :func:`normal`, one per element, computed elementwise (a float32
    block twice): no element needs another element's block, so a lattice split over devices
    draws its momentum without gathering (the concatenation of :func:`normal` would)."""
    if dtype == jnp.float64:  # element i: words i and size + i, both of block i
        y0, y1 = threefry2x32(_data(key), 0, jnp.arange(size, dtype=jnp.uint32))
        return (y0.astype(jnp.uint64) << np.uint64(32)) | y1.astype(jnp.uint64)
    half = (size + 1) // 2
    i = jnp.arange(size, dtype=jnp.uint32)
    y0, y1 = threefry2x32(_data(key), 0, jnp.where(i < half, i, i - half))
    return jnp.where(i < half, y0, y1)


def normal(key: Array, shape: tuple[int, ...], dtype: Any) -> Array:
    """Standard normal draws ``sqrt(2) erfinv(u)``, ``u`` uniform on (-1, 1) (the
    transform of ``jax.random.normal``), with both words of every threefry block used.

    Element ``i`` of a float32 draw of ``n`` elements is word ``i // m`` of the block
    at counter ``(0, i % m)``, ``m = ceil(n / 2)``; a float64 element takes two words.
    The stream depends on the key and the element index only: the same under ``vmap``
    and on any device layout.
    """
    dtype = jnp.dtype(dtype)
    size = math.prod(shape)
    if not is_threefry(key) or dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)) or size == 0:
        return jax.random.normal(key, shape, dtype)
    words = size if dtype == jnp.float32 else 2 * size
    if words >= 2**32:
        raise ValueError(f"a momentum leaf of {size} elements is too large for one key")
    bits = _local_words(key, size, dtype) if _lattice_split() else None
    if bits is None:
        half = (words + 1) // 2
        y0, y1 = threefry2x32(_data(key), 0, jnp.arange(half, dtype=jnp.uint32))
        bits = jnp.concatenate([y0, y1])[:words]
        if dtype == jnp.float64:
            bits = (bits[:size].astype(jnp.uint64) << np.uint64(32)) | bits[size:].astype(jnp.uint64)
    # [0, 1) -> [-1, 1), then off the pole at -1
    above_minus_one = jnp.nextafter(jnp.asarray(-1.0, dtype), jnp.asarray(0.0, dtype))
    u = jnp.maximum(2.0 * _unit_interval(bits, dtype) - 1.0, above_minus_one)
    return (np.sqrt(2.0).astype(dtype) * jax.lax.erf_inv(u)).reshape(shape)

"""The unrolled threefry of hmc.rng: bit-equal to jax.random where defined alike, and
a normal stream with the right distribution, independent of layout."""

import jax
import jax.extend.random as jr
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from hmc import rng


def test_hash_is_threefry_2x32():
    data = jax.random.key_data(jax.random.key(42))
    x0 = jnp.arange(9, dtype=jnp.uint32) * np.uint32(0x9E3779B9)
    x1 = jnp.arange(9, dtype=jnp.uint32) + np.uint32(2**31 - 4)
    y0, y1 = rng.threefry2x32(data, x0, x1)
    np.testing.assert_array_equal(np.concatenate([y0, y1]), jr.threefry_2x32(data, jnp.concatenate([x0, x1])))
    # Random123's known-answer vector: key 0, counter 0 (20 rounds)
    z0, z1 = rng.threefry2x32(jnp.zeros(2, jnp.uint32), 0, 0)
    assert (int(z0), int(z1)) == (0x6B200159, 0x99BA4EFE)


@pytest.mark.parametrize("typed", [True, False])
def test_key_functions_match_jax_random(typed):
    key = jax.random.key(7)
    k = key if typed else jax.random.key_data(key)
    data = jax.random.key_data
    unwrap = (lambda x: data(x)) if typed else (lambda x: x)
    np.testing.assert_array_equal(unwrap(rng.fold_in(k, 123)), data(jax.random.fold_in(key, 123)))
    np.testing.assert_array_equal(unwrap(rng.split(k, 3)), data(jax.random.split(key, 3)))
    folded = jax.jit(jax.vmap(rng.fold_in, in_axes=(None, 0)))(k, jnp.arange(4))
    np.testing.assert_array_equal(unwrap(folded), data(jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(4))))
    assert rng.uniform(k, jnp.float32) == jax.random.uniform(key, (), jnp.float32)
    assert rng.uniform(k, jnp.float32, -1.0, 1.0) == jax.random.uniform(key, (), jnp.float32, -1.0, 1.0)
    with jax.enable_x64(True):
        assert rng.uniform(k, jnp.float64) == jax.random.uniform(key, (), jnp.float64)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_normal_distribution(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        z = rng.normal(jax.random.key(11), (400, 501), dtype)
        assert z.dtype == dtype and z.shape == (400, 501)
        x = np.asarray(z, np.float64).ravel()
    n = x.size
    assert abs(x.mean()) < 5 / np.sqrt(n)
    assert abs(x.var() - 1) < 5 * np.sqrt(2 / n)
    assert abs(stats.skew(x)) < 5 * np.sqrt(6 / n)
    assert abs(stats.kurtosis(x)) < 5 * np.sqrt(24 / n)
    assert stats.kstest(x, "norm").pvalue > 1e-4
    # neighbours, and the two words of one block (half an array apart), are uncorrelated
    assert abs(np.corrcoef(x[:-1], x[1:])[0, 1]) < 5 / np.sqrt(n)
    assert abs(np.corrcoef(x[: n // 2], x[n // 2: 2 * (n // 2)])[0, 1]) < 5 / np.sqrt(n / 2)


def test_normal_streams_of_different_keys_are_uncorrelated():
    keys = rng.split(jax.random.key(3), 2000)
    z = np.asarray(jax.vmap(lambda k: rng.normal(k, (2,), jnp.float32))(keys))
    # the same element under consecutive keys, and the two elements of one key
    n = len(z)
    assert abs(np.corrcoef(z[:-1, 0], z[1:, 0])[0, 1]) < 5 / np.sqrt(n)
    assert abs(np.corrcoef(z[:, 0], z[:, 1])[0, 1]) < 5 / np.sqrt(n)
    assert stats.kstest(z.ravel(), "norm").pvalue > 1e-4


def test_normal_is_layout_invariant():
    keys = jax.random.split(jax.random.key(5), 4)
    batched = jax.jit(jax.vmap(lambda k: rng.normal(k, (3, 5), jnp.float32)))(keys)
    for k, row in zip(keys, batched):
        np.testing.assert_array_equal(row, rng.normal(k, (3, 5), jnp.float32))
        np.testing.assert_array_equal(row, rng.normal(jax.random.key_data(k), (3, 5), jnp.float32))
    assert len({np.asarray(r).tobytes() for r in batched}) == 4
    odd = rng.normal(keys[0], (7,), jnp.float32)  # the last block's second word unused
    assert odd.shape == (7,) and np.all(np.isfinite(odd))


def test_other_key_implementations_use_jax_random():
    key = jax.random.key(0, impl="rbg")
    np.testing.assert_array_equal(rng.normal(key, (6,), jnp.float32), jax.random.normal(key, (6,), jnp.float32))
    np.testing.assert_array_equal(jax.random.key_data(rng.split(key, 2)), jax.random.key_data(jax.random.split(key, 2)))
    assert rng.uniform(key, jnp.float32) == jax.random.uniform(key, (), jnp.float32)

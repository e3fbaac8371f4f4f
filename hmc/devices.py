"""Where the chains live: the devices the chain axis is sharded over, placing arrays
there, reading them back on the host, and a mean over chains that rounds the same on
any number of devices."""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

logger = logging.getLogger("hmc")


def ordered_sum(x: jax.Array, axis: int = 0) -> jax.Array:
    """Sum over ``axis`` with a fixed pairwise order of additions (halves added
    elementwise, log2(n) vectorised steps): the same rounding whatever the other axes'
    sizes, so whether the chains live on one device or are sharded over several. XLA's
    own reductions round differently at another batch size, and adaptation would amplify
    the difference."""
    x = jnp.moveaxis(x, axis, 0)
    # A product feeding this sum would be contracted into fused multiply-adds where the
    # addition runs in the same loop (one device), not where it crosses devices. Times
    # a 1 the compiler cannot see, a contraction is ``fma(x, 1, y)``: exactly ``x + y``.
    one = jnp.where(jnp.isnan(jnp.ravel(x)[:1]), 2.0, 1.0).astype(x.dtype)[0] if x.size else 1.0
    x = x * one
    n = x.shape[0]
    pad = [(0, (1 << max(n - 1, 0).bit_length()) - n)] + [(0, 0)] * (x.ndim - 1)
    x = jnp.pad(x, pad)  # zeros add exactly
    while x.shape[0] > 1:
        half = x.shape[0] // 2
        x = x[:half] + x[half:]
    return x[0]


def ordered_mean(x: jax.Array) -> jax.Array:
    """Mean over the chain axis, summed in the fixed order of :func:`ordered_sum`."""
    return ordered_sum(x, 0) / x.shape[0]


def host(tree: Any) -> Any:
    """Device arrays as numpy on this host; with several processes every process gets
    every chain (an all-gather), so the host loop runs identically everywhere."""
    if jax.process_count() == 1:
        return jax.tree_util.tree_map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return jax.tree_util.tree_map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def resolve_devices(devices: int | str | None, num_chains: int) -> list[Any]:
    """The devices the chain axis is sharded over (see ``sample(devices=...)``); with
    several processes (``jax.distributed``), all devices of all processes."""
    if jax.process_count() > 1:
        everywhere = jax.devices()
        if devices not in ("auto", None, len(everywhere)):
            raise ValueError(f"with {jax.process_count()} processes the chains are sharded over all "
                             f"{len(everywhere)} devices: use devices='auto', not {devices!r}")
        if num_chains % len(everywhere):
            raise ValueError(f"num_chains={num_chains} is not a multiple of the {len(everywhere)} devices of "
                             f"{jax.process_count()} processes (use num_chains="
                             f"{len(everywhere) * -(-num_chains // len(everywhere))})")
        return everywhere
    local = jax.local_devices()
    if devices is None:
        return local[:1]
    if devices == "auto":
        n = max(k for k in range(1, len(local) + 1) if num_chains % k == 0)
        if n < len(local):
            logger.warning("num_chains=%d is not a multiple of the %d local devices: sampling on %d of them "
                           "(choose a multiple of %d to use all)", num_chains, len(local), n, len(local))
        return local[:n]
    if isinstance(devices, str) or int(devices) != devices or devices < 1:
        raise ValueError(f"devices must be 'auto' or a positive integer, got {devices!r}")
    if devices > len(local):
        raise ValueError(f"devices={devices}, but this process sees {len(local)} device(s): {local}")
    if num_chains % devices:
        raise ValueError(f"num_chains={num_chains} is not a multiple of devices={devices}: the chain axis "
                         f"is split evenly (use num_chains={devices * -(-num_chains // devices)})")
    return local[:devices]


def shard(devices: list[Any], states: Any, chain_keys: Any, adapt_state: Any, pooled: bool) -> tuple:
    """Chain-axis arrays split over ``devices``; a pooled adaptation state replicated."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(devices), ("chain",))
    by_chain = NamedSharding(mesh, PartitionSpec("chain"))
    replicated = NamedSharding(mesh, PartitionSpec())

    def put_one(x: Any, sharding: Any) -> Any:
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        # every process holds the same full value; each places the shards its devices own
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = np.asarray(jax.random.key_data(x))
            global_data = jax.make_array_from_callback(data.shape, sharding, lambda idx: data[idx])
            return jax.jit(jax.random.wrap_key_data, out_shardings=sharding)(global_data)
        value = np.asarray(x)
        return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])

    def put(tree: Any, sharding: Any) -> Any:
        return jax.tree_util.tree_map(lambda x: put_one(x, sharding), tree)

    return put(states, by_chain), put(chain_keys, by_chain), put(adapt_state, replicated if pooled else by_chain)

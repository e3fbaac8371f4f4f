"""Where the chains live: the devices the chain axis is sharded over (and, with a
lattice mesh, the devices that share one lattice), placing arrays there, reading them
back on the host, and a mean over chains that rounds the same on any number of devices."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

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

    def put(tree: Any, sharding: Any) -> Any:
        return jax.tree_util.tree_map(lambda x: _put(x, sharding), tree)

    return put(states, by_chain), put(chain_keys, by_chain), put(adapt_state, replicated if pooled else by_chain)


def _put(x: Any, sharding: Any) -> Any:
    """``x`` placed by ``sharding``; with several processes every process holds the same
    full value, and each places the shards its devices own."""
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = np.asarray(jax.random.key_data(x))
        global_data = jax.make_array_from_callback(data.shape, sharding, lambda idx: data[idx])
        return jax.jit(jax.random.wrap_key_data, out_shardings=sharding)(global_data)
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


# -- one lattice over several devices (``sample(mesh={"chain": c, "lattice": k})``) -------
MESH_AXES = ("chain", "lattice")


class Layout(NamedTuple):
    """Where a run lives: its devices, ``lattice`` of them sharing each chain's lattice
    (a ``(len(devices) // lattice, lattice)`` mesh, devices in order along ``lattice``
    first, so the devices of one lattice are neighbours: one node's, where they fit)."""

    devices: list[Any]
    lattice: int = 1

    @property
    def chain(self) -> int:
        return len(self.devices) // self.lattice

    def mesh(self) -> Any:
        """The ``("chain", "lattice")`` mesh."""
        from jax.sharding import Mesh

        return Mesh(np.array(self.devices).reshape(self.chain, self.lattice), MESH_AXES)

    def context(self) -> Any:
        """Where the chunk programs run and are traced: under ``jax.set_mesh`` of :meth:`mesh`
        with a lattice split (:func:`hmc.rng.normal` then draws elementwise), else nothing."""
        return jax.set_mesh(self.mesh()) if self.lattice > 1 else contextlib.nullcontext()


def check_mesh(mesh: Mapping[str, Any]) -> dict[str, int]:
    """``mesh`` as ``{"chain": c, "lattice": k}`` (an absent axis is 1), or a ValueError."""
    if not isinstance(mesh, Mapping):
        raise ValueError(f"mesh must be a mapping like {{'chain': 2, 'lattice': 4}}, got {mesh!r}")
    unknown = sorted(set(mesh) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh axes are {list(MESH_AXES)}, got unknown {unknown}")
    sizes = {axis: mesh.get(axis, 1) for axis in MESH_AXES}
    for axis, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"mesh {axis} must be a positive integer, got {size!r}")
    return {axis: int(size) for axis, size in sizes.items()}


def resolve_layout(mesh: Mapping[str, Any] | None, devices: int | str | None, num_chains: int) -> Layout:
    """The devices of ``sample(devices=..., mesh=...)``. Without a mesh, or with
    ``{"chain": n}``: the chain axis alone, exactly as :func:`resolve_devices`. With
    ``{"chain": c, "lattice": k}``: ``c * k`` devices (all of them with several processes);
    ``devices`` may be ``None``, ``"auto"`` or ``c * k``, and ``num_chains`` a multiple of ``c``."""
    if mesh is None:
        return Layout(resolve_devices(devices, num_chains))
    sizes = check_mesh(mesh)
    total = sizes["chain"] * sizes["lattice"]
    if devices not in (None, "auto", total):
        raise ValueError(f"mesh {sizes} spans {total} device(s), but devices={devices!r}")
    if sizes["lattice"] == 1:
        return Layout(resolve_devices(total, num_chains))
    if num_chains % sizes["chain"]:
        raise ValueError(f"num_chains={num_chains} is not a multiple of mesh chain={sizes['chain']}")
    everywhere = jax.devices() if jax.process_count() > 1 else jax.local_devices()
    if (jax.process_count() > 1 and total != len(everywhere)) or total > len(everywhere):
        raise ValueError(f"mesh {sizes} needs {total} devices, and {jax.process_count()} process(es) see "
                         f"{len(everywhere)}")
    return Layout(list(everywhere[:total]), sizes["lattice"])


def place(layout: Layout, potential: Any, states: Any, chain_keys: Any, adapt_state: Any, pooled: bool) -> tuple:
    """Chain states on a ``(chain, lattice)`` mesh: a leaf of a lattice field (a position,
    momentum, gradient or auxiliary leaf named in ``potential.lattice_axes``) split along
    the chain axis and its lattice axis (:func:`hmc.lattice.split_axes`), any other leaf
    along the chain axis only; keys by chain; a pooled adaptation state replicated."""
    from jax.sharding import NamedSharding, PartitionSpec

    from hmc import lattice as _lattice

    mesh = layout.mesh()
    shapes = _lattice.field_shapes(states)
    split = _lattice.split_axes(potential.lattice_axes, shapes, layout.lattice)
    ranks = {name: len(shape) for name, shape in shapes.items()}

    def sharding(path: Any, x: Any) -> Any:
        return NamedSharding(mesh, _lattice.partition_spec(path, np.ndim(x), split, ranks))

    by_chain, replicated = NamedSharding(mesh, PartitionSpec("chain")), NamedSharding(mesh, PartitionSpec())
    states = jax.tree_util.tree_map_with_path(lambda path, x: _put(x, sharding(path, x)), states)
    put = lambda tree, where: jax.tree_util.tree_map(lambda x: _put(x, where), tree)  # noqa: E731
    return states, put(chain_keys, by_chain), put(adapt_state, replicated if pooled else by_chain)

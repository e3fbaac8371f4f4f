"""Bytes exchanged per force evaluation of one lattice split over devices, measured from the
compiled program, against flops per site; and a scaling model (a model, not a measurement)
of strong and weak scaling on a GPU cluster from stated link bandwidths and latencies.

    python scripts/lattice_scaling.py            # 8 forced host CPU devices (the default)

The byte counts are read from the partitioned HLO (``hmc.lattice.traffic``) of
``vmap(value_and_grad(potential.energy))`` on one chain, its lattice split over ``k``
devices along the first lattice axis; flops and bytes per site from XLA's cost analysis of
the one-device program. Collectives in a loop body (the CG solver) count once per iteration.
"""

from __future__ import annotations

import argparse
import os
import sys

if "jax" not in sys.modules and "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import math  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402

import physics_models as pm  # noqa: E402
from hmc import lattice  # noqa: E402

# stated hardware (not measured here): NVIDIA H100 SXM, NVLink 4 within a node, NDR InfiniBand between nodes
HARDWARE = {
    "nvlink": {"bandwidth": 450e9, "latency": 3e-6},  # B/s per direction per GPU, s per collective (NCCL, small)
    "infiniband": {"bandwidth": 50e9, "latency": 8e-6},  # one 400 Gb/s NIC per GPU
    "hbm_bandwidth": 3.35e12 * 0.6,  # B/s, 60% of peak: lattice kernels are bandwidth-bound
    "flops": 60e12 * 0.3,  # fp32 FLOP/s, 30% of the non-tensor peak
    "gpus_per_node": 8,
}


def models() -> dict[str, tuple]:
    """name -> (potential, the lattice leaf, the split axis's extent, lattice volume)."""
    phi4 = pm.phi4(shape=(16, 16, 16, 16))
    ym = pm.yang_mills(group="SU(3)", shape=(8, 8, 8, 8))
    wilson = pm.schwinger(L=32, fermions="pseudofermion")
    qcd = pm.qcd(group="SU(3)", shape=(8, 8, 8, 8), beta=5.6, mass=0.1, measure=())
    return {"phi4 (4D, 16^4)": (phi4, "phi", 16, 16**4),
            "SU(3) Yang-Mills (Wilson, 8^4)": (ym, "U", 8, 8**4),
            "Wilson fermions (Schwinger 2D, 32^2, CG)": (wilson, "theta", 32, 32**2),
            "Wilson fermions (SU(3) 4D, 8^4, even-odd CG; time split)": (qcd, "U", 8, 8**4)}


def force_program(potential, k: int):
    """The compiled force of one chain, its lattice split over ``k`` devices (k = 1: one device)."""
    position = jax.tree_util.tree_map(lambda x: x[None], potential.init(jax.random.key(0)))
    if potential.auxiliary:
        position = {**position, **jax.vmap(lambda q: potential.refresh(jax.random.key(1), q))(position)}
    force = jax.jit(jax.vmap(jax.value_and_grad(potential.energy)))
    if k == 1:
        return force.lower(position).compile()
    mesh = Mesh(np.array(jax.devices()[:k]).reshape(1, k), ("chain", "lattice"))
    shapes = {name: tuple(np.shape(x))[1:] for name, x in position.items()}
    split = lattice.split_axes(potential.lattice_axes, shapes, k)
    placed = jax.tree_util.tree_map_with_path(
        lambda path, x: jax.device_put(x, NamedSharding(mesh, lattice.partition_spec(path, np.ndim(x), split))),
        position)
    with jax.set_mesh(mesh):
        return force.lower(placed).compile()


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    return cost[0] if isinstance(cost, (list, tuple)) else cost


def measure(devices: list[int]) -> list[dict]:
    rows = []
    for name, (potential, leaf, extent, volume) in models().items():
        cost = _cost(force_program(potential, 1))
        elements = math.prod(np.shape(potential.init(jax.random.key(0))[leaf]))  # one chain's field
        row = {"model": name, "volume": volume, "extent": extent,
               "flops_per_site": cost.get("flops", 0.0) / volume,
               "bytes_per_site": cost.get("bytes accessed", 0.0) / volume, "split": {}}
        for k in devices:
            text = force_program(potential, k).as_text()
            found = lattice.collectives(text)
            halo = sum(c.bytes for c in found if c.op == "collective-permute")
            rows_per_boundary = volume // extent  # sites in one layer of the split axis
            row["split"][k] = {"traffic": lattice.traffic(text), "halo_bytes": halo,
                               "halo_bytes_per_boundary_site": halo / rows_per_boundary,
                               "collectives": len(found),
                               "gathers": len(lattice.gathers_of_fields(text, elements))}
        rows.append(row)
    return rows


def predicted(row: dict, k: int, local_volume: float, link: str) -> float:
    """Efficiency ``T_compute / (T_compute + T_exchange)`` of one force evaluation on ``k``
    devices, ``local_volume`` sites each, 1D split: the halo is a fixed cross-section
    (bytes per boundary site times the lattice's layer), no overlap of compute and exchange."""
    if k == 1:
        return 1.0
    hw, measured = HARDWARE, row["split"][max(row["split"])]
    compute = max(row["flops_per_site"] / hw["flops"], row["bytes_per_site"] / hw["hbm_bandwidth"]) * local_volume
    layer = (local_volume * k) / row["extent_model"]
    exchange = measured["collectives"] * hw[link]["latency"] + \
        measured["halo_bytes_per_boundary_site"] * layer / hw[link]["bandwidth"]
    return compute / (compute + exchange)


def report(rows: list[dict]) -> str:
    lines = ["measured (per force evaluation, per device; compiled partitioned HLO):"]
    for row in rows:
        lines.append(f"  {row['model']}: {row['flops_per_site']:.0f} flop/site, "
                     f"{row['bytes_per_site']:.0f} B/site memory traffic (one device)")
        for k, s in row["split"].items():
            ops = ", ".join(f"{op} x{v['count']} {v['bytes']} B" for op, v in sorted(s["traffic"].items()))
            lines.append(f"    k={k}: {ops}; halo {s['halo_bytes']} B = {s['halo_bytes_per_boundary_site']:.1f} B per "
                         f"boundary-layer site; field gathers: {s['gathers']}")
    lines.append("")
    lines.append("MODEL (not measured): efficiency of one force evaluation, 1D split, no overlap; "
                 f"stated hardware {HARDWARE}")
    for row in rows:
        lines.append(f"  {row['model']}")
        # strong scaling: a 64^3 x 128-like volume held fixed (L = 64 along the split axis)
        row["extent_model"] = 64
        for total, label in ((64**3 * 128, "strong, V = 64^3 x 128"),):
            cells = []
            for k in (1, 2, 4, 8, 16, 32, 64):
                link = "nvlink" if k <= HARDWARE["gpus_per_node"] else "infiniband"
                cells.append(f"k={k}: {predicted(row, k, total / k, link):.2f}")
            lines.append(f"    {label}: " + ", ".join(cells))
        cells = []
        for k in (2, 8, 16, 64):
            link = "nvlink" if k <= HARDWARE["gpus_per_node"] else "infiniband"
            row["extent_model"] = 16 * k  # 16 layers per device along the split axis
            cells.append(f"k={k}: {predicted(row, k, 16 * 64**3, link):.2f}")
        lines.append("    weak, 16 x 64^3 sites per device: " + ", ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[2, 4, 8], help="lattice splits to compile")
    args = parser.parse_args(argv)
    devices = [k for k in args.devices if k <= len(jax.devices())]
    print(report(measure(devices)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

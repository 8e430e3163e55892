"""Vectorised graph helpers of the oversegmentation (PyTorch, CPU or GPU).

Connected components use hooking and pointer jumping (each root is hooked onto the smallest root it
touches, then every pointer jumps to its root), so the number of Python-level rounds grows with the
logarithm of the component diameters, not with the number of voxels.
"""

from __future__ import annotations

import torch


def union_components(n: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Root (the smallest member index) of every node 0..n-1 of the graph with edges (u, v)."""
    parent = torch.arange(n, device=u.device)
    if u.numel() == 0:
        return parent
    while True:
        pu, pv = parent[u], parent[v]
        lo, hi = torch.minimum(pu, pv), torch.maximum(pu, pv)
        differ = lo != hi
        if not bool(differ.any()):
            return parent
        # pu, pv are roots (pointers are fully compressed below): hook the larger onto the smaller.
        parent.scatter_reduce_(0, hi[differ], lo[differ], reduce="amin")
        while True:
            jumped = parent[parent]
            if torch.equal(jumped, parent):
                break
            parent = jumped


def neighbour_pairs(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Face-adjacent voxel pairs (6-connectivity) inside the set, as flat indices into its voxels.

    ``index`` is a 3D volume holding each voxel's position in the voxel list, -1 outside the set.
    """
    us, vs = [], []
    for axis in range(3):
        n = index.shape[axis]
        a = index.narrow(axis, 0, n - 1).reshape(-1)
        b = index.narrow(axis, 1, n - 1).reshape(-1)
        both = (a >= 0) & (b >= 0)
        us.append(a[both])
        vs.append(b[both])
    return torch.cat(us), torch.cat(vs)


def relabel_consecutive(roots: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Map arbitrary ids to 0..k-1 (in increasing order of id); returns (ids, k)."""
    values, inverse = torch.unique(roots, return_inverse=True)
    return inverse, int(values.numel())

"""Connected components of a small graph, for duplicate groups (dataset splits, cleaning).

Why a module of its own: splitting a dataset and cleaning it both group copies and near copies
of one photo, and must agree on what a group is; a leaf module lets both import it one way.
"""

from __future__ import annotations

from collections.abc import Iterable


def union_find(n: int, edges: Iterable[tuple[int, int]]) -> list[int]:
    """A component id per node ``0..n-1``: nodes joined by any chain of ``edges`` share one.

    The id is one member of the component (its root), so ids are stable for a given edge order.
    """
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the trees flat
            i = parent[i]
        return i

    for a, b in edges:
        parent[find(a)] = find(b)
    return [find(i) for i in range(n)]

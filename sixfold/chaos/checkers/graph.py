"""A small directed graph with typed edges: Tarjan's SCCs and shortest cycles by BFS."""

from __future__ import annotations

from collections import defaultdict, deque


class Graph:
    def __init__(self) -> None:
        self._out: dict = defaultdict(dict)   # a -> b -> set of edge kinds

    def add(self, a, b, kind: str) -> None:
        self._out[a].setdefault(b, set()).add(kind)
        self._out.setdefault(b, {})

    def nodes(self):
        return list(self._out)

    def successors(self, a):
        return self._out.get(a, {}).keys()

    def kinds(self, a, b) -> set:
        return self._out.get(a, {}).get(b, set())

    def edge_count(self) -> int:
        return sum(len(bs) for bs in self._out.values())

    def path(self, src, dst, within: set, allowed: set) -> list | None:
        """Shortest path src ->* dst (both included) over edges of the allowed kinds, inside `within`."""
        prev = {src: None}
        queue = deque([src])
        while queue:
            a = queue.popleft()
            for b, kinds in self._out.get(a, {}).items():
                if b not in within or not (kinds & allowed):
                    continue
                if b == dst:
                    out = [b, a]
                    while prev[out[-1]] is not None:
                        out.append(prev[out[-1]])
                    return out[::-1]
                if b not in prev:
                    prev[b] = a
                    queue.append(b)
        return None


def strongly_connected(g: Graph) -> list[list]:
    """Tarjan's algorithm, iterative; only components that hold a cycle (size > 1 or a self-loop)."""
    index: dict = {}
    low: dict = {}
    on_stack: set = set()
    stack: list = []
    out: list[list] = []
    counter = 0
    for root in g.nodes():
        if root in index:
            continue
        work = [(root, iter(g.successors(root)))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(g.successors(child))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    n = stack.pop()
                    on_stack.discard(n)
                    component.append(n)
                    if n == node:
                        break
                if len(component) > 1 or node in g.successors(node):
                    out.append(component)
    return out


def restricted(g: Graph, within: set, allowed: set) -> Graph:
    sub = Graph()
    for a in within:
        for b, kinds in g._out.get(a, {}).items():
            if b in within:
                for k in kinds & allowed:
                    sub.add(a, b, k)
    return sub


def cycle_in(g: Graph, within: set, allowed: set) -> list | None:
    """A cycle (first node repeated at the end) using only allowed edge kinds, or None.

    Inside a strongly connected component every edge lies on a cycle, so one BFS suffices."""
    sub = restricted(g, within, allowed)
    for component in strongly_connected(sub):
        members = set(component)
        a = component[0]
        for b in sub.successors(a):
            if b in members:
                return [a, a] if a == b else [a] + sub.path(b, a, members, allowed)
    return None

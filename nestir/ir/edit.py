"""Atomic edit primitives: each checks and stages every change first, then commits, so a failed
edit leaves the graph exactly as it was."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from nestir.ir.errors import EditError
from nestir.ir.graph import Graph
from nestir.ir.groups import Group, GroupInfo, Tie, analyze
from nestir.ir.kinds import Op
from nestir.ir.opdefs import opdef

# For each node kind, which params carry a neuron on which dim, as a producer and as an index
# (per-neuron or consumer) node; and the fill value of a new entry.
_PRODUCER = {"weight": 0, "mask": 0, "bias": 0, "area": 1}
_CONSUMER = {"weight": 1, "mask": 1, "area": 0}


@dataclass
class _Staged:
    params: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    journal: list[tuple[str, str, tuple]] = field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    attrs: dict[str, dict] = field(default_factory=dict)

    def get(self, graph: Graph, node: str, key: str) -> torch.Tensor:
        return self.params.get(node, {}).get(key, graph[node].params[key])

    def put(self, node: str, key: str, t: torch.Tensor, how: tuple = ()) -> None:
        self.params.setdefault(node, {})[key] = t
        if how:
            self.journal.append((node, key, how))

    def commit(self, graph: Graph) -> None:
        for name, ps in self.params.items():
            graph[name].params.update(ps)
        for name, shape in self.shapes.items():
            graph[name].shape = shape
        for name, at in self.attrs.items():
            graph[name].attrs.update(at)
        graph.journal.extend(self.journal)
        graph.touch()


def _insert(t: torch.Tensor, dim: int, pos: int, new: torch.Tensor) -> torch.Tensor:
    return torch.cat([t.narrow(dim, 0, pos), new.to(t.dtype), t.narrow(dim, pos, t.shape[dim] - pos)], dim)


def _filler(t: torch.Tensor, dim: int, n: int, value: float | bool) -> torch.Tensor:
    shape = list(t.shape)
    shape[dim] = n
    return torch.full(shape, value, dtype=t.dtype, device=t.device)


def _group(graph: Graph, gid: int, info: GroupInfo | None) -> tuple[GroupInfo, Group]:
    info = info or analyze(graph)
    if gid not in info.groups:
        raise EditError(f"no neuron group {gid}")
    grp = info.groups[gid]
    if not grp.resizable:
        raise EditError(f"neuron group {gid} ({', '.join(grp.values[:3])}) cannot be resized: "
                        f"{grp.reason or 'it has no parametric producer'}")
    return info, grp


def _shapes(graph: Graph, info: GroupInfo, gid: int, delta_per_repeat: int, st: _Staged) -> None:
    for name in info.groups[gid].values:
        node = graph[name]
        lay = info.layouts[name] or []
        grow = sum(r for g, r in lay if g == gid) * delta_per_repeat
        shape = list(node.shape or ())
        shape[node.axis] += grow  # type: ignore[index]
        st.shapes[name] = tuple(shape)
    for node in graph:  # attributes that follow the widths (a reshape's target, a channel range)
        at = opdef(node.op).follow(node, graph, info, gid, delta_per_repeat, st.shapes.get(node.name))
        if at:
            st.attrs.setdefault(node.name, {}).update(at)


def add_neurons(
    graph: Graph,
    gid: int,
    count: int,
    *,
    rows: dict[str, dict[str, torch.Tensor]] | None = None,
    cols: dict[str, dict[str, torch.Tensor]] | None = None,
    info: GroupInfo | None = None,
) -> list[int]:
    """Append ``count`` neurons to group ``gid``; returns their indices in the group.

    ``rows[producer]`` may give the new ``weight``/``bias``/``mask`` rows (default: zero weight,
    zero bias, live mask) and ``rows[per_neuron_node]`` its entries (default: identity BN/LN, zero
    depthwise kernels). ``cols[consumer]`` may give the new ``weight``/``mask`` columns, shape
    (out, count*repeat, *kernel) (default zero weight, live mask: the function is unchanged).
    A layer that both produces and consumes the group (``x + f(layer(x))``) gains rows and
    columns: its ``cols`` may count ``out`` before or after the new rows; given before, the
    entries joining new neurons to new neurons are filled like the default (zero weight, live).
    """
    if count <= 0:
        raise EditError(f"add_neurons needs a positive count, got {count}")
    info, grp = _group(graph, gid, info)
    st = _Staged()
    _stage_add(graph, info, grp, count, rows or {}, cols or {}, st)
    st.commit(graph)
    return list(range(grp.width, grp.width + count))


def _stage_add(graph: Graph, info: GroupInfo, grp: Group, count: int, rows: dict, cols: dict, st: _Staged) -> None:
    gid = grp.id
    for name in grp.producers:
        node = graph[name]
        given = rows.get(name, {})
        for key, dim in _PRODUCER.items():
            if key not in node.params:
                continue
            t = st.get(graph, name, key)
            fill = True if t.dtype == torch.bool else 0.0
            new = given.get(key, _filler(t, dim, count, fill))
            _check(name, key, new, t, dim, count)
            st.put(name, key, _insert(t, dim, t.shape[dim], new), ("insert", dim, t.shape[dim], count))
    for name in grp.per_neuron:
        node = graph[name]
        given = rows.get(name, {})
        for g, off, _r, w in reversed(_segs(info, name)):
            if g != gid:
                continue
            for key in node.params:
                cur = st.get(graph, name, key)
                fill = opdef(node.op).fill(node, key)  # what a new neuron holds: it changes nothing
                new = given.get(key, _filler(cur, 0, count, fill))
                _check(name, key, new, cur, 0, count)
                st.put(name, key, _insert(cur, 0, off + w, new), ("insert", 0, off + w, count))
        # a node reading the group in several places (cat([x, dw(x)]) into a depthwise conv) gains each
        at = opdef(node.op).resized(node, count * sum(s[0] == gid for s in _segs(info, name)))
        if at:
            st.attrs[name] = at
    for name in grp.consumers:
        node = graph[name]
        given = cols.get(name, {})
        segs = [s for s in _segs(info, name) if s[0] == gid]
        for i, (_g, off, r, w) in reversed(list(enumerate(segs))):
            for key, dim in _CONSUMER.items():
                if key not in node.params:
                    continue
                cur = st.get(graph, name, key)
                fill = True if cur.dtype == torch.bool else 0.0
                new = given.get(key)
                if new is not None and len(segs) > 1 and new.shape[dim] == count * sum(s[2] for s in segs):
                    # the group read in several places (cat([x, x])): the given columns, segment by segment
                    start = count * sum(s[2] for s in segs[:i])
                    new = new.narrow(dim, start, count * r)
                if new is None:
                    new = _filler(cur, dim, count * r, fill)
                elif name in grp.producers:
                    new = _pad_own_rows(new, cur, _PRODUCER[key], count, fill)
                _check(name, key, new, cur, dim, count * r)
                st.put(name, key, _insert(cur, dim, off + w * r, new), ("insert", dim, off + w * r, count * r))
    _shapes(graph, info, gid, count, st)


def _pad_own_rows(new: torch.Tensor, cur: torch.Tensor, dim: int, count: int, fill: float | bool) -> torch.Tensor:
    """Columns given for a layer that also produces the group, counted before its ``count`` new
    rows (appended last along ``dim``): extended with those rows' entries."""
    if new.dim() == cur.dim() and new.shape[dim] == cur.shape[dim] - count:
        return torch.cat([new.to(cur.device), _filler(new.to(cur.device), dim, count, fill)], dim)
    return new


def remove_neurons(graph: Graph, gid: int, indices: Sequence[int], *, info: GroupInfo | None = None) -> None:
    """Remove the neurons ``indices`` of group ``gid`` from every producer, per-neuron node and
    consumer. Refuses to remove every neuron of a group."""
    info, grp = _group(graph, gid, info)
    drop = _drop_list(grp, indices)
    if not drop:
        return
    st = _Staged()
    _stage_remove(graph, info, grp, drop, st)
    st.commit(graph)


def remove_units(graph: Graph, conv: str, units: Sequence[int], *, info: GroupInfo | None = None) -> None:
    """Remove whole conv groups ``units`` of the grouped conv ``conv``: their input channels from
    the group it reads and their output channels from the group it writes (one edit; see
    :class:`nestir.ir.groups.Tie`). Refuses to remove every unit."""
    info = info or analyze(graph)
    tie = next((t for t in info.ties() if conv in t.convs), None)
    if tie is None:
        grp = info.of(conv)
        why = grp.reason if grp is not None and grp.frozen else "it does not tie two resizable groups"
        raise EditError(f"grouped conv '{conv}' cannot lose whole groups: {why}")
    drop = sorted(set(int(u) for u in units))
    if not drop:
        return
    if drop[0] < 0 or drop[-1] >= tie.groups:
        raise EditError(f"unit index out of range for '{conv}' with {tie.groups} groups: {drop}")
    if len(drop) >= tie.groups:
        raise EditError(f"refusing to remove all {tie.groups} groups of '{conv}': the network would be disconnected")
    _disjoint(info, tie, conv)
    st = _Staged()
    for gid, unit in tie.sides:
        _stage_remove(graph, info, info.groups[gid], [u * unit + j for u in drop for j in range(unit)], st)
    _unit_attrs(graph, tie, -len(drop), st)
    _unit_entries(graph, tie, st, drop=drop)
    _head_shapes(graph, info, tie, -len(drop), st, drop)
    st.commit(graph)


def _head_shapes(graph: Graph, info: GroupInfo, tie: Tie, delta: int, st: _Staged, drop: Sequence[int] = ()) -> None:
    """Values in head space (:mod:`nestir.ir.opdefs.heads`) of the tie's groups gain or lose
    ``delta`` units of heads on their head dim (units ``drop`` when removing), and what follows
    their shape (a reshape's target) follows; a constant with one entry per head (a relative
    position bias) keeps the entries of the heads kept and gets zeros for new ones."""
    sides = {gid for gid, _ in tie.sides}
    for name, (gid, h) in info.heads.items():
        if gid not in sides:
            continue
        node = graph[name]
        shape = list(st.shapes.get(name, node.shape or ()))
        per = shape[h] // tie.groups
        shape[h] += delta * per
        st.shapes[name] = tuple(shape)
        if node.op == Op.CONST:
            t = st.get(graph, name, "value")
            if drop:
                gone = {u * per + j for u in drop for j in range(per)}
                keep = torch.tensor([i for i in range(t.shape[h]) if i not in gone], dtype=torch.long)
                st.put(name, "value", t.index_select(h, keep.to(t.device)), ("select", h, keep))
            else:
                st.put(name, "value", _insert(t, h, t.shape[h], _filler(t, h, delta * per, 0.0)),
                       ("insert", h, t.shape[h], delta * per))
        at = opdef(node.op).follow(node, graph, info, gid, 0, tuple(shape))
        if at:
            st.attrs.setdefault(name, {}).update(at)


def _disjoint(info: GroupInfo, tie: Tie, conv: str) -> None:
    """No node holds or reads two of the groups a tie connects (their edits would collide)."""
    for members in (lambda g: g.values, lambda g: g.consumers + g.per_neuron):
        seen: dict[str, int] = {}
        for gid, _ in tie.sides:
            for name in set(members(info.groups[gid])):
                if seen.setdefault(name, gid) != gid:
                    raise EditError(f"grouped conv '{conv}': node '{name}' holds or reads two of the groups it "
                                    "ties; remove their neurons separately")


def _unit_entries(graph: Graph, tie: Tie, st: _Staged, *, drop: Sequence[int] = (), count: int = 0) -> None:
    """The params of a tie's nodes that hold one entry per unit (an attention head's logit
    bias): the entries of ``drop`` removed, or ``count`` units of new entries appended."""
    for c, m in zip(tie.convs, tie.multiples(), strict=True):
        d = opdef(graph[c].op)
        for key in d.unit_entries:
            if key not in graph[c].params:
                continue
            t = st.get(graph, c, key)
            if drop:
                gone = {u * m + j for u in drop for j in range(m)}
                keep = torch.tensor([i for i in range(t.shape[0]) if i not in gone], dtype=torch.long)
                st.put(c, key, t.index_select(0, keep.to(t.device)), ("select", 0, keep))
            elif count:
                st.put(c, key, _insert(t, 0, t.shape[0], _filler(t, 0, count * m, d.fill(graph[c], key))),
                       ("insert", 0, t.shape[0], count * m))


def _unit_attrs(graph: Graph, tie: Tie, delta: int, st: _Staged) -> None:
    """Each conv of a tie (attention node) counts its conv groups (heads) in its unit attribute."""
    for c, m in zip(tie.convs, tie.multiples(), strict=True):
        attr = opdef(graph[c].op).unit_attr
        if attr:  # (a matmul in head space counts nothing)
            st.attrs.setdefault(c, {})[attr] = graph[c].attrs[attr] + delta * m


def add_units(
    graph: Graph,
    node: str,
    count: int,
    *,
    rows: dict[str, dict[str, torch.Tensor]] | None = None,
    cols: dict[str, dict[str, torch.Tensor]] | None = None,
    info: GroupInfo | None = None,
) -> None:
    """Append ``count`` whole units to the tie of ``node`` (a grouped conv: conv groups; an
    attention node: heads), in both groups it ties, in one edit. ``rows``/``cols`` as for
    :func:`add_neurons`, each covering ``count`` units of its group (default zero weights: the
    function is unchanged, but a new head with zero v rows and zero projection columns never
    learns; give v rows)."""
    if count <= 0:
        raise EditError(f"add_units needs a positive count, got {count}")
    info = info or analyze(graph)
    tie = next((t for t in info.ties() if node in t.convs), None)
    if tie is None:
        raise EditError(f"'{node}' cannot gain whole units: it does not tie two prunable groups")
    st = _Staged()
    for gid, unit in tie.sides:
        _stage_add(graph, info, info.groups[gid], count * unit, rows or {}, cols or {}, st)
    _unit_attrs(graph, tie, count, st)
    _unit_entries(graph, tie, st, count=count)
    _head_shapes(graph, info, tie, count, st)
    st.commit(graph)


def _drop_list(grp: Group, indices: Sequence[int]) -> list[int]:
    drop = sorted(set(int(i) for i in indices))
    if drop and (drop[0] < 0 or drop[-1] >= grp.width):
        raise EditError(f"neuron index out of range for group {grp.id} of width {grp.width}: {drop}")
    if len(drop) >= grp.width:
        raise EditError(f"refusing to remove all {grp.width} neurons of group {grp.id} "
                        f"({', '.join(grp.values[:3])}): the network would be disconnected")
    return drop


def _stage_remove(graph: Graph, info: GroupInfo, grp: Group, drop: list[int], st: _Staged) -> None:
    gid = grp.id
    keep = torch.tensor([i for i in range(grp.width) if i not in set(drop)])
    for name in grp.producers:
        for key, dim in _PRODUCER.items():
            if key in graph[name].params:
                t = st.get(graph, name, key)
                st.put(name, key, t.index_select(dim, keep.to(t.device)), ("select", dim, keep))
    for name in grp.per_neuron + grp.consumers:
        node = graph[name]
        dims = _CONSUMER if name in grp.consumers else {k: 0 for k in node.params}
        for key, dim in dims.items():
            if key not in node.params:
                continue
            t = st.get(graph, name, key)  # a layer may both produce and consume the group
            idx = _keep_index(_segs(info, name), gid, keep, t.shape[dim])
            st.put(name, key, t.index_select(dim, idx.to(t.device)), ("select", dim, idx))
        places = sum(s[0] == gid for s in _segs(info, name))  # GhostNet: cat([x, dw(x)]) into a depthwise conv
        at = opdef(node.op).resized(node, -len(drop) * places) if name in grp.per_neuron else None
        if at:
            st.attrs[name] = at
    _shapes(graph, info, gid, -len(drop), st)


def _segs(info: GroupInfo, name: str) -> list[tuple[int, int, int, int]]:
    out, off = [], 0
    for g, r in info.consumer_layouts[name]:
        w = info.groups[g].width
        out.append((g, off, r, w))
        off += w * r
    return out


def _keep_index(segs: list[tuple[int, int, int, int]], gid: int, keep: torch.Tensor, total: int) -> torch.Tensor:
    parts, off = [], 0
    for g, o, r, w in segs:
        if o > off:
            parts.append(torch.arange(off, o))
        if g == gid:
            parts.append((o + keep[:, None] * r + torch.arange(r)[None, :]).reshape(-1))
        else:
            parts.append(torch.arange(o, o + w * r))
        off = o + w * r
    if off < total:
        parts.append(torch.arange(off, total))
    return torch.cat(parts) if parts else torch.arange(total)


def replay(t: torch.Tensor, how: tuple, fill: float = 0.0) -> torch.Tensor:
    """Apply a journaled edit to a tensor shaped like the edited one (e.g. optimizer state)."""
    if how[0] == "insert":
        _, dim, pos, n = how
        return _insert(t, dim, pos, _filler(t, dim, n, fill))
    _, dim, idx = how
    return t.index_select(dim, idx.to(t.device))


def follow(t: torch.Tensor, node: str, key: str, journal: list[tuple[str, str, tuple]]) -> torch.Tensor:
    """Replay on ``t`` every journaled edit of ``node``'s tensor ``key``: planned rows or columns
    computed before other edits of the same pass keep fitting the layer."""
    for n, k, how in journal:
        if n == node and k == key:
            t = replay(t, how)
    return t


def _check(node: str, key: str, new: torch.Tensor, ref: torch.Tensor, dim: int, n: int) -> None:
    want = list(ref.shape)
    want[dim] = n
    if list(new.shape) != want:
        raise EditError(f"node '{node}': new {key} entries have shape {tuple(new.shape)}, expected {tuple(want)}")


def connect_all(graph: Graph) -> None:
    """Every connection of every parametric layer live (a dense network)."""
    for n in graph.parametric():
        set_mask(graph, n.name, torch.ones_like(n.params["mask"]))


def set_mask(graph: Graph, node: str, mask: torch.Tensor, key: str = "mask") -> None:
    """Replace the connectivity mask (or partial-area mask ``key='area'``) of a parametric node;
    weights of connections the new mask makes dormant are zeroed (a dormant weight is zero)."""
    n = graph[node]
    if not n.is_parametric:
        raise EditError(f"node '{node}' ({n.op}) has no connectivity mask")
    ref = n.params.get(key)
    expected = tuple(ref.shape) if ref is not None else _area_shape(n)
    if tuple(mask.shape) != expected:
        raise EditError(f"node '{node}': {key} of shape {tuple(mask.shape)}, expected {expected}")
    if mask.dtype != torch.bool:
        raise EditError(f"node '{node}': {key} must be boolean, got {mask.dtype}")
    n.params[key] = mask.to(n.params["weight"].device)
    if key == "mask":
        with torch.no_grad():
            n.params["weight"].mul_(n.params["mask"])


def activate(graph: Graph, node: str, flat: torch.Tensor, values: torch.Tensor | float = 0.0) -> None:
    """Make the dormant connections at flat indices ``flat`` of a parametric node live, with
    initial weights ``values`` (grow-connection)."""
    n = graph[node]
    if not n.is_parametric:
        raise EditError(f"node '{node}' ({n.op}) has no connectivity mask")
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= n.params["mask"].numel()):
        raise EditError(f"node '{node}': connection index out of range for {n.params['mask'].numel()} entries")
    with torch.no_grad():
        n.params["mask"].view(-1)[flat] = True
        n.params["weight"].view(-1)[flat] = values if isinstance(values, float) else values.to(n.params["weight"].dtype)


def _area_shape(n) -> tuple[int, ...]:  # type: ignore[no-untyped-def]
    if not n.is_plain_conv:
        raise EditError(f"node '{n.name}': partial-area masks need a conv with groups=1")
    w = n.params["weight"]
    return (w.shape[1], w.shape[0], *n.shape[2:])

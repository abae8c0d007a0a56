"""What the small inputs' quick path checks, as code both backends print: the block sizes and the shapes of the
parameters and statistics in terms of x.shape, and what the full checks of x alone would refuse."""

from __future__ import annotations

from symbn.codegen.plan import Plan


def checks(p: Plan) -> dict:
    n = len(p.blocks)
    kept = [i for i in range(n) if not p.blocks[i].reduced]
    return dict(
        sizes=[f"n{i} = {_size(b)}" for i, b in enumerate(p.blocks)],
        # the sizes the statistics' shape reads (kept blocks), and M (reduced blocks)
        stat_sizes=[f"n{i} = {_size(b)}" for i, b in enumerate(p.blocks) if not b.reduced],
        count_sizes=[f"n{i} = {_size(b)}" for i, b in enumerate(p.blocks) if b.reduced],
        blocks=", ".join(f"n{i}" for i in range(n)) + "," * (n == 1),
        stat_shape="(" + "".join(f"n{i}, " for i in kept) + ")",
        param_shape="(" + "".join(f"x.shape[{a}], " for a in p.spec.param_axes) + ")",
        count=" * ".join(f"n{i}" for i in range(n) if p.blocks[i].reduced),
        stat_ndim=len(kept), param_ndim=len(p.spec.param_axes),
        # what the full path's checks of x alone refuse: an empty x, channels that do not divide into the groups
        valid="x.size > 0" + (f" and x.shape[{p.spec.channel_axis}] % GROUPS == 0" if p.spec.groups else ""),
    )


def _size(b) -> str:
    if b.split == "groups":
        return "GROUPS"
    if b.split == "within":
        return f"x.shape[{b.axes[0]}] // GROUPS"
    return " * ".join(f"x.shape[{a}]" for a in b.axes)

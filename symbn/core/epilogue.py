"""Epilogues: what a forward does to the normalized value after the normalization, element by element.

A normalization is almost always followed by an activation, often after a residual add:
``relu(gamma*(x - mean(x))/sqrt(mean((x - mean(x))**2) + eps) + beta + r)``. Such an expression splits into a
*core*, the normalization z(x) that the rest of the engine derives as it derives any other (its statistics, its
coordinate change, its compact backward), and an *epilogue*, y = f(z, r), elementwise in z and the residual r. The
chain rule joins them: the core's backward runs on dz = dy*df/dz, and dr = dy*df/dr. Splitting keeps the kink of
relu() out of the core's simplification, and keeps the compact backward in the normalized coordinate.

This module splits a parsed tree (symbn.core.expr, no SymPy): the residual r and the functions relu() and max() may
appear only in the epilogue, which takes the normalized value once, and holds nothing else of the normalization
(no statistics, no gamma, beta or eps).
"""

from __future__ import annotations

from symbn.core.expr import EPILOGUE, REDUCTIONS, ExpressionError, contains, excerpt

Z = ("z",)  # the normalized value in an epilogue tree; not a name the grammar lets anyone write

# The epilogues presets take (symbn.core.spec.preset(..., epilogue=)): the core's expression goes into the braces.
PRESET_EPILOGUES = {"relu": "relu({})", "add_relu": "relu({} + r)"}

EXAMPLE = "relu(gamma*(x - mean(x))/sqrt(mean((x - mean(x))**2) + eps) + beta + r)"


def uses(tree: tuple, names: tuple[str, ...]) -> bool:
    """Whether the tree holds any of *names*, as a leaf or as a called function."""
    if tree[0] in names or (tree[0] == "call" and tree[1] in names):
        return True
    return any(isinstance(t, tuple) and uses(t, names) for t in tree[1:])


def has_epilogue(tree: tuple) -> bool:
    return uses(tree, EPILOGUE)


def split(tree: tuple, text: str) -> tuple[tuple, tuple | None]:
    """(core, epilogue): the normalization's tree and the epilogue's, in which Z stands for the core; (tree, None)
    where the expression has no epilogue. Raises ExpressionError where r, relu() or max() appear anywhere but in
    an epilogue of that form."""
    if not has_epilogue(tree):
        return tree, None
    _outside_statistics(tree, text)
    return _peel(tree, text)[::-1]


def _outside_statistics(tree: tuple, text: str) -> None:
    if tree[0] == "call" and tree[1] in REDUCTIONS and has_epilogue(tree):
        raise ExpressionError(text, f"r, relu() and max() may not appear inside {tree[1]}() ({excerpt(tree)}): "
                                    f"statistics depend on x only, and an epilogue acts on the normalized value, as "
                                    f"in {EXAMPLE}")
    for t in tree[1:]:
        if isinstance(t, tuple):
            _outside_statistics(t, text)


def _operands(tree: tuple) -> range:
    """The positions of a node's operands in its tuple."""
    return range(2, len(tree)) if tree[0] == "call" else range(1, len(tree))


def _peel(tree: tuple, text: str) -> tuple[tuple, tuple]:
    """(epilogue, core) of a subtree that holds part of the epilogue."""
    if not has_epilogue(tree):
        return Z, tree
    where = excerpt(tree)
    with_x = [i for i in _operands(tree) if contains(tree[i], "x")]
    if not with_x:
        raise ExpressionError(text, f"{where} does not hold the normalized value: an epilogue (r, relu(), max()) acts "
                                    f"on it, as in {EXAMPLE}")
    if len(with_x) > 1:
        raise ExpressionError(text, f"{where} uses x in more than one operand: an epilogue (r, relu(), max()) takes "
                                    f"the normalized value once, as in {EXAMPLE}")
    (inner,) = with_x
    for i in _operands(tree):
        if i == inner:
            continue
        for names, what in ((REDUCTIONS, "statistics (mean(), sum())"), (("gamma", "beta"), "gamma or beta"),
                            (("eps",), "eps")):
            if uses(tree[i], names):
                raise ExpressionError(text, f"the epilogue {where} uses {what} in {excerpt(tree[i])}: those belong "
                                            f"to the normalization inside it, as in {EXAMPLE}")
    epilogue, core = _peel(tree[inner], text)
    return tree[:inner] + (epilogue,) + tree[inner + 1:], core

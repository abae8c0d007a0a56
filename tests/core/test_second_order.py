"""The second order: the double backward derived by reverse mode over the backward graph, proved exactly against the
brute-force Jacobian of the compact backward, and checked numerically against the generated first-order kernels."""

import dataclasses

import numpy as np
import pytest
import sympy

from symbn import derive, load, make, preset
from symbn.codegen import catalogue as catalog
from symbn.core.derive import DBETA, DGAMMA, DX
from symbn.core.graph import ELEM, REDUCE, STAT
from symbn.core.second import (GDY, GGAMMA, GX, PSUM, SecondOrder, derive_second, prove_second,
                               prove_second_all)
from symbn.core.symbols import DY, EPS, GAMMA, GGBETA, GGGAMMA, GGX, M, X, psum, rsum
from symbn.core.verify import ProofError, index_sets, proof_shape

PRESETS = catalog.preset_specs()
CUSTOM = catalog.custom_specs()


def _outputs(spec) -> set[str]:
    return {"gdy", "gx"} | ({"ggamma"} if spec.scale else set())


# --- proofs ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", PRESETS, ids=lambda s: s.name)
def test_presets_are_proven_in_training(spec):
    for proof in prove_second_all(derive_second(spec, "train")):
        assert {c.split()[1] for c in proof.checked} == _outputs(spec)
        assert {c.split()[0] for c in proof.checked} == {"staged", "compact"}


def modes(spec) -> tuple[str, ...]:
    """Eval mode holds running statistics constant: only specs that keep them (statistics over the batch axis) have
    one of their own."""
    return ("train", "eval") if spec.tracks_running else ("train",)


@pytest.mark.parametrize("spec", [s for s in PRESETS if s.tracks_running], ids=lambda s: s.name)
def test_presets_are_proven_in_eval_mode(spec):
    for proof in prove_second_all(derive_second(spec, "eval")):
        assert {c.split()[1] for c in proof.checked} == _outputs(spec)


@pytest.mark.parametrize("key", ["transformer_ln", "rms_axes02", "mad", "batch_axes02"])
def test_custom_expressions_are_proven(key):
    for mode in modes(CUSTOM[key]):
        prove_second_all(derive_second(CUSTOM[key], mode), seed=10)


def test_primal_custom_expression_is_proven():
    # exp() makes exact arithmetic slow: sizes 2 and 3 (set size 4 takes seconds more and proves nothing new).
    for mode in modes(CUSTOM["softmax"]):
        prove_second_all(derive_second(CUSTOM["softmax"], mode), sizes=(2, 3), seed=3)


@pytest.mark.parametrize("options", [dict(ddof=1), dict(center=False), dict(scale=False),
                                     dict(center=False, scale=False), dict(running="keras", momentum=0.99)])
def test_options_are_proven(options):
    spec = preset("batch", "NHWC", **options)
    for mode in ("train", "eval"):
        proofs = prove_second_all(derive_second(spec, mode), sizes=(2, 3))
        assert {c.split()[1] for c in proofs[0].checked} == _outputs(spec)


@pytest.mark.parametrize("text, options", [
    # the inverse scale is 2*istd, not a node: a coordinate of its own (a) carries it
    ("gamma*2*(x - mean(x))/sqrt(mean((x - mean(x))**2) + eps) + beta", dict(axes=(0,), param_axes=(1,))),
    # sign(xhat/inv) in dx, whose derivative SymPy cannot tell is 0
    ("gamma*x/mean(abs(x)) + beta", dict(axes=(1,), param_axes=(1,))),
    # no parameters at all
    ("x/sqrt(mean(x**2) + eps)", dict(axes=(1,), param_axes=())),
    # layer norm over two axes of a rank-3 input
    ("layer", dict(axes=(1, 2), param_axes=(1, 2), ndim=3)),
])
def test_more_expressions_are_proven(text, options):
    spec = make(text, **options)
    for mode in modes(spec):
        prove_second_all(derive_second(spec, mode), sizes=(2, 3))


def test_specs_without_running_statistics_have_no_eval_mode_of_their_own():
    with pytest.raises(ValueError, match="mode: got 'eval'; expected 'train': layer_nc keeps no running statistics"):
        derive_second(preset("layer", "NC"), "eval")


def test_group_norm_with_many_groups_is_proven_on_two_blocks():
    proof = prove_second(derive_second(preset("group", "NCHW", groups=32)), 4, seed=1)
    assert proof.blocks == (2, 32)


# --- wrong double backwards fail the proof ---------------------------------------------------------------------


def _tampered(so: SecondOrder, program: str, symbol, change) -> SecondOrder:
    return dataclasses.replace(so, **{program: tuple((s, change(e) if s == symbol else e)
                                                     for s, e in getattr(so, program))})


def _terms(e):
    return sympy.Add.make_args(sympy.expand(e))


def _drop_one(e, k=0):
    terms = sorted(_terms(e), key=sympy.default_sort_key)
    return sympy.Add(*(t for i, t in enumerate(terms) if i != k))


def _scale_one(e, k=0):
    terms = sorted(_terms(e), key=sympy.default_sort_key)
    return sympy.Add(*(2 * t if i == k else t for i, t in enumerate(terms)))


@pytest.mark.parametrize("change", [
    lambda e: _drop_one(e, 0),
    lambda e: _drop_one(e, 3),
    lambda e: _scale_one(e, 5),
    lambda e: e + sympy.Rational(1, 10**6) * GGX * DY,  # a tiny wrong term is still caught: the check is exact
    lambda e: e.subs(M, 3),
])
@pytest.mark.parametrize("spec", [preset("batch", "NCHW"), preset("layer", "NC"), preset("group", "NCHW", groups=4)],
                         ids=lambda s: s.name)
def test_a_wrong_compact_gx_fails_the_proof(spec, change):
    so = derive_second(spec)
    with pytest.raises(ProofError, match="gx"):
        prove_second(_tampered(so, "compact", GX, change), 2)


@pytest.mark.parametrize("symbol, change", [
    (GDY, lambda e: e.subs(GGGAMMA, 0)),  # the term dgamma's upstream gradient puts into gdy
    (GDY, lambda e: e - GGBETA),
    (GGAMMA, lambda e: psum(2 * e.args[0])),
    (GGAMMA, lambda e: psum(_drop_one(e.args[0]))),
])
def test_a_wrong_gdy_or_ggamma_fails_the_proof(symbol, change):
    so = derive_second(preset("batch", "NC"))
    with pytest.raises(ProofError, match=symbol.name):
        prove_second(_tampered(so, "compact", symbol, change), 3)


def test_a_wrong_named_sum_fails_the_proof():
    so = derive_second(preset("layer", "NC"))
    (named,) = [s for s, e in so.reductions if e == rsum(GGX * so.derivation.coordinate_change.symbol)]
    with pytest.raises(ProofError):
        prove_second(_tampered(so, "reductions", named, lambda e: rsum(e.args[0] * GAMMA)), 2)


@pytest.mark.parametrize("name", ["gistd", "gsum_dy_xhat", "gmu"])
def test_a_wrong_staged_step_fails_the_proof(name):
    so = derive_second(preset("batch", "NC"))
    (symbol,) = [s for s, _ in so.staged if s.name == name]
    with pytest.raises(ProofError, match="staged"):
        prove_second(_tampered(so, "staged", symbol, lambda e: 2 * e), 2)


def test_a_wrong_eval_mode_double_backward_fails_the_proof():
    so = derive_second(preset("batch", "NCHW"), "eval")
    with pytest.raises(ProofError):
        prove_second(_tampered(so, "compact", GX, lambda e: 2 * e), 2)
    with pytest.raises(ProofError):
        prove_second(_tampered(so, "compact", GDY, lambda e: e + GGX), 2)


# --- what the derivation records -------------------------------------------------------------------------------


def test_batch_norm_double_backward_in_full():
    so = derive_second(preset("batch", "NC"))
    xhat, istd = so.derivation.coordinate_change.symbol, next(s for s in so.statistics if s.name == "istd")
    sums = {str(e): s for s, e in so.reductions}
    s_ggx, s_ggx_xhat = sums["sum(ggx)"], sums["sum(ggx*xhat)"]
    s_dy, s_dy_xhat, s_dy_ggx = sums["sum(dy)"], sums["sum(dy*xhat)"], sums["sum(dy*ggx)"]
    gdy = GGBETA + GGGAMMA * xhat + GAMMA * istd * (GGX - s_ggx / M - xhat * s_ggx_xhat / M)
    gx = (GGGAMMA * istd * (DY - s_dy / M - xhat * s_dy_xhat / M)
          - GAMMA * istd**2 / M * (DY * s_ggx_xhat + xhat * s_dy_ggx + GGX * s_dy_xhat
                                   - s_dy * (s_ggx * xhat + s_ggx_xhat) / M
                                   - s_dy_xhat * (s_ggx + 3 * xhat * s_ggx_xhat) / M))
    assert sympy.expand(so.gdy - gdy) == 0
    assert sympy.expand(so.gx - gx) == 0
    assert sympy.expand(so.ggamma.args[0] - GGX * istd * (DY - s_dy / M - xhat * s_dy_xhat / M)) == 0


@pytest.mark.parametrize("spec", PRESETS + list(CUSTOM.values()), ids=lambda s: s.name)
def test_compact_form_reads_named_sums_over_the_same_sets(spec):
    so = derive_second(spec)
    d = so.derivation
    assert so.upstream == (GGX,) + ((GGGAMMA,) if spec.scale else ()) + ((GGBETA,) if spec.center else ())
    assert [s.name for s in so.outputs] == sorted(_outputs(spec), key=["gdy", "gx", "ggamma"].index)
    for s, e in so.compact:
        if s == GGAMMA:
            assert isinstance(e, psum) and not e.args[0].atoms(rsum, psum)
        else:
            assert not e.atoms(rsum, psum)  # every set sum is named
    for s, e in so.reductions:
        assert isinstance(e, rsum) and not e.args[0].atoms(rsum, psum)
    first = dict(d.reductions)
    for s, e in so.reductions:  # a sum the first order names keeps its name
        if s in first:
            assert first[s] == e
    names = {s for s, _ in so.reductions}
    assert [r.output for r in so.reads] == list(so.outputs)
    for r in so.reads:
        free = so.output(so.compact, r.output).free_symbols - {EPS, M}
        assert set(r.sums) == free & names and set(r.statistics) <= set(so.statistics)
        assert set(r.sums + r.elements) | (free & set(so.statistics)) == free
        assert set(r.elements) <= {DY, GAMMA, GGX, GGGAMMA, GGBETA, X} | {s for s, _ in d.coordinates}
    assert not any(e in (rsum(d.coordinate_change.symbol), rsum(d.coordinate_change.symbol**2))
                   for _, e in so.reductions if d.coordinate_change)  # the identities took them
    if not d.primal:  # in the coordinate: x itself is gone
        assert all(X not in e.free_symbols for _, e in so.compact + so.reductions)


@pytest.mark.parametrize("spec", [preset("batch", "NCHW"), preset("rms", "NC"), CUSTOM["softmax"]],
                         ids=lambda s: s.name)
def test_staged_form_has_one_step_per_backward_node(spec):
    so = derive_second(spec)
    d = so.derivation
    assert len(so.steps) == len(so.nodes)
    assert [step.node for step in so.steps] == list(reversed(so.nodes))
    kinds = {n.symbol: n.kind for n in so.nodes}
    assert kinds[DX] == ELEM and all(kinds[s] == REDUCE for s, _ in d.reductions)
    if DGAMMA in kinds:
        assert kinds[DGAMMA] == PSUM
    adjoints = [s for s, _ in so.staged]
    assert adjoints[-len(so.outputs):] == list(so.outputs)
    assert all(step.value is None for step in so.steps if step.node.symbol in (DX, DGAMMA, DBETA))


def test_eval_mode_holds_the_statistics_constant():
    so = derive_second(preset("batch", "NCHW"), "eval")
    assert so.reductions == () and so.first_order == ()
    assert all(n.kind != STAT and n.kind != REDUCE for n in so.nodes)
    xhat, istd = so.derivation.coordinate_change.symbol, so.statistics[0]
    assert sympy.expand(so.gdy - (GAMMA * GGX * istd + GGGAMMA * xhat + GGBETA)) == 0
    assert sympy.expand(so.gx - GGGAMMA * DY * istd) == 0
    assert so.ggamma == psum(DY * GGX * istd)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="mode"):
        derive_second(preset("batch", "NC"), "inference")
    with pytest.raises(TypeError):
        derive_second("batch")
    d = derive(preset("batch", "NC"))
    assert derive_second(d).compact == derive_second(preset("batch", "NC")).compact


# --- numerically, against the generated first-order kernels ----------------------------------------------------


def _evaluate(so: SecondOrder, spec, shape, data: dict, programs) -> dict:
    """Run programs of the second order with NumPy on arrays of *shape* (a small evaluator: each rsum/psum is a
    bincount over the proof's index sets, everything else lambdify)."""
    stat_ids, param_ids = index_sets(spec, shape)
    n = len(stat_ids)
    env = {M: np.bincount(stat_ids)[stat_ids].astype(float), EPS: spec.eps}
    env |= {X: data["x"].reshape(-1), DY: data["dy"].reshape(-1), GGX: data["ggx"].reshape(-1)}
    for symbol, key in ((GAMMA, "gamma"), (GGGAMMA, "gggamma"), (GGBETA, "ggbeta")):
        if key in data:
            env[symbol] = data[key].reshape(-1)[param_ids]
    for symbol, values in data.get("running", {}).items():
        env[symbol] = values.reshape(-1)[stat_ids]

    def value(e):
        sums = {}
        for s in e.atoms(rsum, psum):
            ids = stat_ids if isinstance(s, rsum) else param_ids
            sums[s] = np.bincount(ids, np.broadcast_to(value(s.args[0]), (n,)))[ids]
        holes = {s: sympy.Dummy() for s in sums}
        e = e.xreplace(holes)
        args = sorted(e.free_symbols, key=sympy.default_sort_key)
        lookup = {h: sums[s] for s, h in holes.items()}
        return np.broadcast_to(sympy.lambdify(args, e, "numpy")(*(lookup.get(a, env.get(a)) for a in args)),
                               (n,)).astype(float)

    for program in programs:
        for symbol, e in program:
            env[symbol] = value(e)
    out = {"dy": env[GDY].reshape(shape), "x": env[GX].reshape(shape)}
    if GGAMMA in env:
        pshape = tuple(shape[a] for a in spec.param_axes)
        first = {p: e for e, p in reversed(list(enumerate(param_ids.tolist())))}
        out["gamma"] = env[GGAMMA][[first[p] for p in range(len(first))]].reshape(pshape)
    return out


def _central(f, point: dict, keys) -> dict:
    """df/d(each entry of point[key]) by the fourth-order central difference (error ~h^4)."""
    out = {}
    for key in keys:
        base = point[key]
        grad = np.zeros(base.shape)
        for i in np.ndindex(base.shape):
            h = 1e-3 * max(1.0, abs(base[i]))
            values = []
            for step in (2, 1, -1, -2):
                moved = base.copy()
                moved[i] += step * h
                values.append(f({**point, key: moved}))
            grad[i] = (-values[0] + 8 * values[1] - 8 * values[2] + values[3]) / (12 * h)
        out[key] = grad
    return out


def _relative(a, b) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _inputs(spec, shape, seed):
    rng = np.random.default_rng(seed)
    pshape = tuple(shape[a] for a in spec.param_axes)
    data = dict(x=rng.normal(size=shape), dy=rng.normal(size=shape), ggx=rng.normal(size=shape))
    if spec.scale:
        data |= dict(gamma=rng.normal(1.0, 0.5, size=pshape), gggamma=rng.normal(size=pshape))
    if spec.center:
        data |= dict(beta=rng.normal(size=pshape), ggbeta=rng.normal(size=pshape))
    return data


def _loss(module, spec, training: bool):
    """L2(dy, x, gamma) = sum(ggx*dx) + sum(gggamma*dgamma) + sum(ggbeta*dbeta) from the generated kernels."""

    def f(p):
        gamma = [p["gamma"]] if spec.scale else []
        if training:
            params = gamma + ([p["beta"]] if spec.center else [])
            _, *saved = module.forward_train(p["x"], *params)
            grads = module.backward(p["dy"], p["x"], *gamma, *saved)
        else:
            grads = module.backward_eval(p["dy"], p["x"], *gamma, *p["running"].values())
        grads = (grads,) if isinstance(grads, np.ndarray) else grads
        total = float(np.sum(p["ggx"] * grads[0]))
        for grad, up in zip(grads[1:], [k for k in ("gggamma", "ggbeta") if k in p]):
            total += float(np.sum(p[up] * grad))
        return total

    return f


NUMERIC = [preset("batch", "NC"), preset("batch", "NHWC"), preset("layer", "NCHW"), preset("instance", "NCHW"),
           preset("group", "NCHW", groups=4), preset("rms", "NC"), CUSTOM["transformer_ln"], CUSTOM["mad"],
           CUSTOM["softmax"]]


@pytest.mark.parametrize("spec", NUMERIC, ids=lambda s: s.name)
def test_double_backward_matches_central_differences_of_the_backward_kernel(spec):
    so = derive_second(spec, "train")
    module = load(spec, "numpy")
    shape = proof_shape(spec, 3)
    data = _inputs(spec, shape, seed=1)
    keys = ["dy", "x"] + (["gamma"] if spec.scale else [])
    numeric = _central(_loss(module, spec, training=True), data, keys)
    forward = tuple((n.symbol, n.expr) for n in so.derivation.graph.nodes[:-1])
    d = so.derivation
    for programs in ((forward, d.coordinates, d.reductions, so.staged),
                     (forward, d.coordinates, so.reductions, so.compact)):
        ours = _evaluate(so, spec, shape, data, programs)
        for key in keys:
            assert _relative(ours[key], numeric[key]) <= 1e-7, key


@pytest.mark.parametrize("spec", [preset("batch", "NCHW"), preset("batch", "NC"), CUSTOM["mad"]],
                         ids=lambda s: s.name)
def test_eval_double_backward_matches_central_differences_of_backward_eval(spec):
    so = derive_second(spec, "eval")
    module = load(spec, "numpy")
    shape = proof_shape(spec, 3)
    data = _inputs(spec, shape, seed=2)
    g = so.derivation.graph
    stat_shape = module._stat_shape(module._sizes(np.empty(shape)))  # one value per statistic, as the module takes
    rng = np.random.default_rng(3)
    data["running"] = {r.symbol: (rng.uniform(0.5, 2.0, size=stat_shape) if r.symbol.is_nonnegative
                                  else rng.normal(size=stat_shape)) for r in g.reductions}
    keys = ["dy", "x"] + (["gamma"] if spec.scale else [])
    numeric = _central(_loss(module, spec, training=False), data, keys)
    stats = tuple((n.symbol, n.expr) for n in g.nodes if n.kind == STAT)
    ours = _evaluate(so, spec, shape, data, (stats, so.derivation.coordinates, so.compact))
    for key in keys:
        assert _relative(ours[key], numeric[key]) <= 1e-7, key

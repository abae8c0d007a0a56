"""The proof outcomes symbn docs records and symbn docs --check recalls: recalled only under exactly the same inputs,
never outside a session; progress as proofs and checks complete; and the cheaper proof those outcomes come from
(only the first blocks of a tensor of independent blocks, each derivative of only the terms that hold its symbol)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sympy

from helpers import GENERATED
from symbn import cli, preset
from symbn.core.derive import DX, derive
from symbn.core.verify import PROOF_BLOCKS, ProofError, brute_gradient, independent_blocks, index_sets, \
    proof_shape, prove
from symbn.docgen import evidence

SPEC = preset("rms", "NC")  # three quick proofs


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """An empty symbn cache of the test's own."""
    monkeypatch.setenv("SYMBN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _prove(recall=False, record=False, specs=(SPEC,)):
    with evidence.session(recall=recall, record=record) as tally:
        outcomes = evidence.prove_many(list(specs), jobs=1)
    return outcomes, tally


def test_recorded_outcomes_are_recalled_under_the_same_inputs(cache):
    proved, tally = _prove(record=True)
    assert (tally.proved, tally.recalled) == (3, 0)
    data = json.loads((cache / evidence.PROOF_CACHE).read_text())
    assert data["inputs"] == evidence.proof_inputs() and len(data["outcomes"]) == 3
    recalled, tally = _prove(recall=True)
    assert (tally.proved, tally.recalled) == (0, 3)
    for a, b in zip(proved[SPEC], recalled[SPEC]):
        assert (a.set_size, a.shape, a.checked, a.error, a.blocks) == (b.set_size, b.shape, b.checked, b.error,
                                                                       b.blocks)
        assert b.recalled and not a.recalled


def test_other_inputs_miss(monkeypatch):
    _prove(record=True)
    monkeypatch.setattr(evidence, "proof_inputs", lambda: "another version of symbn, SymPy or the sources")
    _, tally = _prove(recall=True)
    assert (tally.proved, tally.recalled) == (3, 0)


def test_a_new_sympy_misses(monkeypatch):
    _prove(record=True)
    monkeypatch.setattr(sympy, "__version__", sympy.__version__ + ".post1")
    _, tally = _prove(recall=True)
    assert (tally.proved, tally.recalled) == (3, 0)


def test_any_change_to_the_source_of_the_mathematics_changes_the_inputs(tmp_path, monkeypatch):
    sources = evidence._proof_sources()
    assert {p.name for p in sources} >= {"derive.py", "graph.py", "verify.py", "spec.py", "evidence.py"}
    copies = []
    for path in sources:
        copy = tmp_path / "src" / path.parent.name / path.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(path.read_bytes())
        copies.append(copy)
    monkeypatch.setattr(evidence, "_proof_sources", lambda: copies)
    before = evidence.proof_inputs()
    derive_py = next(c for c in copies if c.name == "derive.py")
    derive_py.write_text(derive_py.read_text() + "\n# a comment is a change too\n")
    assert evidence.proof_inputs() != before


def test_another_spec_or_size_misses():
    _prove(record=True)
    other = SPEC.with_options(eps=1e-3)  # only eps differs: the spec's digest does too
    assert evidence.proof_key(other, 2) != evidence.proof_key(SPEC, 2)
    assert evidence.proof_key(SPEC, 2) != evidence.proof_key(SPEC, 3)
    _, tally = _prove(recall=True, specs=(SPEC, other))
    assert (tally.proved, tally.recalled) == (3, 3)


def test_no_session_neither_recalls_nor_records(cache):
    _prove(record=True)
    data = (cache / evidence.PROOF_CACHE).read_text()
    _, tally = _prove()  # as the tests and symbn derive --format run them
    assert tally.recalled == 0
    with evidence.session() as tally:
        evidence.prove_many([SPEC], jobs=1)
    assert (tally.proved, tally.recalled) == (3, 0)
    assert (cache / evidence.PROOF_CACHE).read_text() == data


def test_a_damaged_cache_is_ignored(cache):
    cache.mkdir(parents=True)
    (cache / evidence.PROOF_CACHE).write_text("{not json")
    _, tally = _prove(recall=True, record=True)
    assert (tally.proved, tally.recalled) == (3, 0)
    data = json.loads((cache / evidence.PROOF_CACHE).read_text())  # written anew
    key = evidence.proof_key(SPEC, 2)
    data["outcomes"][key]["checked"] = 12  # not a list of outputs: that entry proves again
    (cache / evidence.PROOF_CACHE).write_text(json.dumps(data))
    _, tally = _prove(recall=True)
    assert (tally.proved, tally.recalled) == (1, 2)


def test_a_failed_proof_is_not_recorded(cache, monkeypatch):
    def failing(spec, size, order=1):
        return evidence.ProofOutcome(size, None, (), f"order {order} failed")

    monkeypatch.setattr(evidence, "_prove_one", failing)
    outcomes, _ = _prove(record=True)
    assert all(o.error for o in outcomes[SPEC])
    assert json.loads((cache / evidence.PROOF_CACHE).read_text())["outcomes"] == {}


def test_an_unwritable_cache_only_costs_time(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SYMBN_CACHE", str(blocker / "cache"))
    outcomes, tally = _prove(record=True, recall=True)
    assert tally.proved == 3 and all(o.error is None for o in outcomes[SPEC])


def test_the_session_reports_each_proof_and_each_check():
    heard = []
    with evidence.session(progress=heard.append):
        evidence.prove_many([SPEC], jobs=1)
        evidence.measure(SPEC, GENERATED)
    assert heard == ["proved rms_nc, M=2", "proved rms_nc, M=3", "proved rms_nc, M=4", "checked rms_nc"]


def test_the_pool_reports_as_proofs_complete():
    heard = []
    with evidence.session(progress=heard.append):
        outcomes = evidence.prove_many([SPEC, preset("batch", "NC")], jobs=2)
    assert sorted(heard) == sorted(f"proved {name}, M={m}" for name in ("rms_nc", "batch_nc") for m in (2, 3, 4))
    assert [o.set_size for o in outcomes[SPEC]] == [2, 3, 4]  # in order, whatever order they completed in


def test_symbn_cache_counts_and_clears_the_recorded_outcomes(cache, capsys):
    _prove(record=True)
    assert cli.main(["cache"]) == 0
    assert "proofs   3 proof outcomes symbn docs recorded" in capsys.readouterr().out
    assert cli.main(["cache", "clear"]) == 0
    assert "the proof outcomes symbn docs recorded" in capsys.readouterr().out
    assert not (cache / evidence.PROOF_CACHE).exists()


# --- the proof the outcomes come from ---------------------------------------------------------------------------


def test_group_norm_with_many_groups_proves_its_first_blocks_whole():
    spec = preset("group", "NCHW", groups=32)
    shape = proof_shape(spec, 2)
    stat_ids, param_ids = index_sets(spec, shape)
    keep, total = independent_blocks(stat_ids, param_ids)
    assert total == 32  # one block per group: both samples of its channels
    kept = set(keep.tolist())
    for ids in (stat_ids, param_ids):  # every set and every parameter the kept elements touch is kept whole
        for i in set(ids[keep].tolist()):
            assert set(np.flatnonzero(ids == i).tolist()) <= kept
    assert len(set(stat_ids[keep].tolist())) == PROOF_BLOCKS * shape[0]  # two sets or more, as before
    proof = prove(derive(spec), 2, seed=2)
    assert proof.shape == shape and proof.blocks == (PROOF_BLOCKS, 32) and "first 4 of 32" in str(proof)


@pytest.mark.parametrize("spec", [preset("batch", "NCHW"), preset("layer", "NC"), preset("group", "NCHW", groups=4),
                                  preset("instance", "NCHW")], ids=lambda s: s.name)
def test_every_other_catalogue_shape_is_proved_whole(spec):
    for m in (2, 3, 4):
        stat_ids, param_ids = index_sets(spec, proof_shape(spec, m))
        keep, total = independent_blocks(stat_ids, param_ids)
        assert total <= PROOF_BLOCKS and len(keep) == len(stat_ids)
    assert prove(derive(spec), 2, seed=2).blocks is None


def test_a_wrong_backward_still_fails_the_proof_of_the_first_blocks():
    d = derive(preset("group", "NCHW", groups=32))
    wrong = tuple((s, e * sympy.Rational(1001, 1000) if s == DX else e) for s, e in d.compact)
    with pytest.raises(ProofError, match="compact dx at element 0 of shape"):
        prove(type(d)(**{**d.__dict__, "compact": wrong}), 2)


def test_the_gradient_of_the_terms_holding_a_symbol_is_the_gradient_of_the_loss():
    xs = sympy.symbols("x_0:4", real=True)
    g = sympy.Symbol("g", real=True)
    ys = [g * xs[0] / sympy.sqrt(xs[0] ** 2 + xs[1] ** 2 + 1), g * xs[1] ** 3, xs[2] * xs[3], sympy.exp(xs[3])]
    dys = [sympy.Rational(k + 1, 3) for k in range(4)]
    point = {s: sympy.Rational(k + 2, 5) for k, s in enumerate(xs + (g,))}
    loss = sympy.Add(*(dy * y for dy, y in zip(dys, ys)))
    gradient = brute_gradient(dys, ys, point)
    for s in xs + (g, sympy.Symbol("unused")):
        assert sympy.simplify(gradient(s) - sympy.diff(loss, s).xreplace(point)) == 0

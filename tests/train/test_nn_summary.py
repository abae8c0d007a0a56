"""Sequential.summary(): Keras' counts for the seed model, shapes and counts of a small CNN worked out by hand, the
printed table, no side effects on the model, and the refusals."""

import numpy as np
import pytest

from symbn import nn
from symbn.layers import BatchNorm, LayerNorm


def seed_model():
    """The Keras example: Dense(64) -> BN -> ReLU -> Dense(32) -> BN -> ReLU -> Dense(1, sigmoid) on 20 features."""
    return nn.mlp([20, 64, 32, 1], nn.ReLU, norm=lambda n: BatchNorm.keras(n), out_activation=nn.Sigmoid, rng=0)


def test_seed_model_counts_as_keras_reports_them(capsys):
    summary = seed_model().summary()
    # Keras: "Total params: 3,841 / Trainable params: 3,649 / Non-trainable params: 192" (moving mean and variance)
    assert (summary.trainable, summary.non_trainable, summary.total) == (3649, 192, 3841)
    assert [(row.output_shape, row.trainable, row.non_trainable) for row in summary.layers] == [
        ((None, 64), 20 * 64 + 64, 0), ((None, 64), 128, 128), ((None, 64), 0, 0),
        ((None, 32), 64 * 32 + 32, 0), ((None, 32), 64, 64), ((None, 32), 0, 0),
        ((None, 1), 33, 0), ((None, 1), 0, 0)]
    assert summary.layers[1].name == "1 (BatchNorm)" and summary.layers[1].params == 256
    printed = capsys.readouterr().out
    assert printed == str(summary) + "\n"
    lines = printed.splitlines()
    assert lines[-4:-1] == ["Total params: 3,841", "Trainable params: 3,649", "Non-trainable params: 192"]
    assert lines[0] == "Sequential, input shape (None, 20)"
    assert lines[4].split() == ["0", "(Dense)", "(None,", "64)", "1,344"]


def test_small_cnn_shapes_and_counts_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False, rng=0), BatchNorm(4, "NCHW"), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Dense(4 * 4 * 2, 5, rng=1), LayerNorm(5))
    summary = model.summary((3, 15, 9), print_fn=None)
    # conv: (15 + 2 - 3) // 2 + 1 = 8 by (9 + 2 - 3) // 2 + 1 = 5; pool 2: 4 by 2
    assert [row.output_shape for row in summary.layers] == [
        (None, 4, 8, 5), (None, 4, 8, 5), (None, 4, 8, 5), (None, 4, 4, 2), (None, 32), (None, 5), (None, 5)]
    assert [row.trainable for row in summary.layers] == [4 * 3 * 3 * 3, 8, 0, 0, 0, 32 * 5 + 5, 10]
    assert [row.non_trainable for row in summary.layers] == [0, 8, 0, 0, 0, 0, 0]
    assert (summary.trainable, summary.non_trainable, summary.total) == (291, 8, 299)
    assert summary.input_shape == (None, 3, 15, 9)


def test_nested_sequential_is_one_row_with_its_totals():
    inner = nn.Sequential(nn.Dense(3, 4, rng=0), BatchNorm(4))
    summary = nn.Sequential(inner, nn.ReLU(), nn.Dense(4, 2, rng=1)).summary(print_fn=None)
    assert summary.layers[0].name == "0 (Sequential)"
    assert (summary.layers[0].trainable, summary.layers[0].non_trainable) == (16 + 8, 8)
    assert summary.layers[0].output_shape == (None, 4)


def test_summary_leaves_the_model_as_it_was():
    model = seed_model()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 20))
    y = model.forward(x)  # training mode: a cached forward, waiting for its backward
    state = model.state_dict()
    model.summary(print_fn=None)
    assert model.training and all(layer.training for layer in model.layers)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)
    dx = model.backward(np.ones_like(y))  # the cache is still that of x, not of the summary's zeros
    fresh = seed_model()
    fresh.forward(x)
    np.testing.assert_array_equal(dx, fresh.backward(np.ones_like(y)))


@pytest.mark.parametrize("model, shape, error, message", [
    (nn.Sequential(nn.Conv2d(1, 2, 3)), None, ValueError,
     r"input_shape: expected the shape of one example .*which the first layer does not fix \(Conv2d\(1, 2, .*\)\); "
     "got None"),
    (nn.Sequential(), None, ValueError, r"input_shape: .*which the first layer does not fix \(Sequential\(\n\)\)"),
    (seed_model(), (0,), ValueError, r"input_shape: expected a non-empty sequence of positive integers.*got \(0,\)"),
    (seed_model(), 20, ValueError, "input_shape: expected a non-empty sequence of positive integers.*got 20"),
    (seed_model(), (), ValueError, r"input_shape: .*got \(\)"),
    (seed_model(), (21,), ValueError, r"x: Dense expects shape \(N, 20\); got \(2, 21\)"),
])
def test_bad_input_shapes_are_refused(model, shape, error, message):
    with pytest.raises(error, match=message) as info:
        model.summary(shape, print_fn=None)
    if shape == (21,):  # the layer's own refusal, with where it happened
        assert "in Sequential.summary, layer 0: Dense(20, 64, bias=True), for input_shape (21,)" in info.value.__notes__

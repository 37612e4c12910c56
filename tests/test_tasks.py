"""Tasks (batches that are what the papers describe) and their losses (gradients checked
against finite differences, stable in the face of diverged logits)."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradlab import config as C
from gradlab.gradcheck import check_gradients
from gradlab.losses import accuracy, mse, softmax_cross_entropy
from gradlab.tasks import build_task

CONFIGS = {
    "teacher": C.TeacherTask(kind="teacher", batch_size=8, input_dim=5, output_dim=3, noise=0.1),
    "spirals": C.SpiralsTask(kind="spirals", batch_size=8),
    "adding": C.AddingTask(kind="adding", batch_size=8, seq_len=12),
    "copy": C.CopyTask(kind="copy", batch_size=8, seq_len=13, copy_len=4, n_symbols=5),
    "temporal_order": C.TemporalOrderTask(kind="temporal_order", batch_size=8, seq_len=20),
    "associative_recall": C.AssociativeRecallTask(kind="associative_recall", batch_size=8, n_pairs=3, n_keys=5,
                                                  n_values=4),
    "dyck": C.DyckTask(kind="dyck", batch_size=8, seq_len=12, n_types=2, depth=3),
    "lm": C.LMTask(kind="lm", batch_size=8, seq_len=16),  # gradlab's own source
}
DISCRETE = ("copy", "temporal_order", "associative_recall", "dyck", "lm")
KINDS = sorted(CONFIGS)


def make(kind, dtype="float64", task_seed=0, **over):
    cfg = CONFIGS[kind].model_copy(update=over)
    return build_task(cfg, dtype, np.random.default_rng(task_seed))


def draw(task, seed=1):
    return task.batch(np.random.default_rng(seed))


def rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- the interface

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", KINDS)
def test_shapes_dtypes_and_dims(kind, dtype):
    task = make(kind, dtype)
    cfg = CONFIGS[kind]
    assert task.kind == kind
    assert (task.input_dim, task.output_dim) == C.task_dims(cfg)
    assert task.sequence == (kind in C.SEQUENCE_TASKS)
    assert task.batch_size == cfg.batch_size
    x, y = draw(task)
    B, O = cfg.batch_size, task.output_dim
    lead = (cfg.seq_len,) if task.sequence else ()
    assert x.shape == lead + (B, task.input_dim) and x.dtype == dtype
    if task.classification:
        assert y.dtype == np.int64
        assert y.shape == ((cfg.seq_len, B) if task.per_step else (B,))
        assert y.min() >= 0 and y.max() < O
    else:
        assert y.shape == (B, O) and y.dtype == dtype

    V = 3
    out = rng(2).standard_normal((V,) + y.shape[: 1 + task.per_step] + (O,)).astype(dtype)
    if task.per_step:
        assert out.shape == (V, cfg.seq_len, B, O)
    before = out.copy()
    loss, dout = task.loss(out, y)
    assert np.array_equal(out, before)  # accuracy is computed from out afterwards
    assert loss.shape == (V,) and loss.dtype == dtype and np.isfinite(loss).all()
    assert dout.shape == out.shape and dout.dtype == dtype
    acc = task.accuracy(out, y)
    if task.classification:
        assert acc.shape == (V,) and acc.dtype == np.float64 and ((0 <= acc) & (acc <= 1)).all()
    else:
        assert acc is None


@pytest.mark.parametrize("kind", KINDS)
def test_batches_are_deterministic_and_come_from_the_data_stream(kind):
    task = make(kind)
    x1, y1 = draw(task, 5)
    x2, y2 = draw(make(kind), 5)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    x3, y3 = draw(task, 6)
    assert not (np.array_equal(x1, x3) and np.array_equal(y1, y3))
    # The task stream draws fixed parts only: it changes the teacher, nobody else's data.
    x4, y4 = draw(make(kind, task_seed=9), 5)
    assert np.array_equal(x1, x4)
    assert np.array_equal(y1, y4) == (kind != "teacher")


def test_symbolic_batches_do_not_depend_on_the_dtype():
    """The discrete tasks draw only integers: the dtype changes the encoding, not the data."""
    for kind in DISCRETE:
        x32, y32 = draw(make(kind, "float32"))
        x64, y64 = draw(make(kind, "float64"))
        assert np.array_equal(x32, x64) and np.array_equal(y32, y64)


def test_unknown_kind_is_refused():
    class Fake:
        kind = "bogus"

    with pytest.raises(ValueError, match="bogus"):
        build_task(Fake(), "float64", rng())


# ----------------------------------------------------------------------------- the generators

def test_adding_two_markers_one_per_half_and_target_is_their_sum():
    T = 11  # odd: the first half is t < 5
    task = make("adding", seq_len=T, batch_size=500)
    x, y = draw(task)
    values, markers = x[..., 0], x[..., 1]
    assert set(np.unique(markers)) == {0.0, 1.0}
    assert ((values >= 0) & (values < 1)).all()
    assert (markers[: T // 2].sum(0) == 1).all() and (markers[T // 2:].sum(0) == 1).all()
    np.testing.assert_array_equal(y[:, 0], (values * markers).sum(0))
    first = markers[: T // 2].argmax(0)
    assert set(first) == set(range(T // 2))  # uniform over the half: every position occurs


def test_adding_shortest_sequence():
    x, y = draw(make("adding", seq_len=2))
    assert (x[:, :, 1] == 1).all()
    np.testing.assert_array_equal(y[:, 0], x[0, :, 0] + x[1, :, 0])


def test_adding_constant_one_baseline_is_one_sixth():
    _, y = draw(make("adding", batch_size=20_000))
    loss, _ = mse(np.ones((1,) + y.shape), y)
    assert abs(loss[0] - 1 / 6) < 0.01


def test_copy_layout_and_targets():
    T, K, S = 13, 4, 5
    task = make("copy", batch_size=64)
    x, y = draw(task)
    assert np.array_equal(x.sum(-1), np.ones((T, 64)))  # one-hot
    seq = x.argmax(-1)
    delim = S + 1
    assert (seq[T - K - 1] == delim).all() and (seq == delim).sum() == 64
    assert ((seq[:K] >= 1) & (seq[:K] <= S)).all()
    assert (seq[K:T - K - 1] == 0).all() and (seq[T - K:] == 0).all()
    assert np.array_equal(y[T - K:], seq[:K])
    assert (y[: T - K] == 0).all()
    assert set(np.unique(seq[:K])) == set(range(1, S + 1))


def test_copy_tightest_layout():
    K = 3
    x, y = draw(make("copy", seq_len=2 * K + 1, copy_len=K))
    seq = x.argmax(-1)
    assert (seq[K] == 6).all() and np.array_equal(y[K + 1:], seq[:K])


def test_copy_baseline_and_recall_accuracy():
    """Sure blanks, then uniform symbols: the loss is copy_len log(n_symbols) / T, and the
    recall accuracy ignores the (trivially right) blanks."""
    T, K, S = 13, 4, 5
    task = make("copy")
    _, y = draw(task)
    logits = np.full((1, T, 8, S + 1), -1e4)
    logits[0, : T - K, :, 0] = 0.0
    logits[0, T - K:, :, 1:] = 0.0
    loss, _ = task.loss(logits, y)
    np.testing.assert_allclose(loss[0], K * math.log(S) / T, rtol=1e-12)
    perfect = np.where(np.arange(S + 1) == y[..., None], 1.0, 0.0)[None]
    blanks = np.zeros_like(perfect)
    blanks[..., 0] = 1.0
    np.testing.assert_array_equal(task.accuracy(np.concatenate([perfect, blanks]), y), [1.0, 0.0])


@pytest.mark.parametrize("T", [10, 11, 20, 30, 37, 100])
def test_temporal_order_layout_and_labels(T):
    task = make("temporal_order", seq_len=T, batch_size=400)
    x, y = draw(task)
    assert np.array_equal(x.sum(-1), np.ones((T, 400)))
    seq = x.argmax(-1)
    assert (seq[0] == 6).all() and (seq[-1] == 7).all()
    assert ((seq[1:-1] >= 0) & (seq[1:-1] <= 5)).all()
    relevant = (seq == 4) | (seq == 5)
    assert (relevant.sum(0) == 2).all()
    t = np.arange(T)[:, None]
    in1 = (10 * t >= T) & (10 * t < 2 * T)  # exact [0.1 T, 0.2 T) in integers
    in2 = (10 * t >= 5 * T) & (10 * t < 6 * T)
    assert ((relevant & in1).sum(0) == 1).all() and ((relevant & in2).sum(0) == 1).all()
    cols = np.arange(400)
    first = seq[(relevant & in1).argmax(0), cols] - 4  # 0 = X, 1 = Y
    second = seq[(relevant & in2).argmax(0), cols] - 4
    assert np.array_equal(y, 2 * first + second)
    assert set(y) == {0, 1, 2, 3}
    assert set(np.unique(seq[1:-1][~relevant[1:-1]])) == {0, 1, 2, 3}


def test_spirals_geometry_without_noise():
    turns = 1.5
    task = make("spirals", batch_size=2000, noise=0.0, turns=turns)
    x, y = draw(task)
    r = np.hypot(x[:, 0], x[:, 1])
    assert ((r >= 0) & (r <= 1)).all()
    assert 800 < (y == 1).sum() < 1200
    # Rotating each point back by its class's half turn must land on one spiral.
    phase = np.angle((x[:, 0] + 1j * x[:, 1]) * np.exp(-1j * (turns * 2 * np.pi * r + np.pi * y)))
    assert np.abs(phase[r > 1e-3]).max() < 1e-6


def test_spirals_with_noise_stay_near_the_unit_disc():
    noise = 0.05
    x, y = draw(make("spirals", batch_size=2000, noise=noise))
    r = np.hypot(x[:, 0], x[:, 1])
    assert r.max() <= 1 + 6 * noise  # isotropic Gaussian, std `noise` per coordinate
    assert r.max() > 1  # the noise is there
    assert set(y) == {0, 1}


# ----------------------------------------------------------------------------- losses

def weighted(fn, out, y, w):
    """A scalar that weighs each variant differently, so that each variant's gradient is
    checked on its own."""
    loss, dout = fn(out, y)
    return float(w @ loss), dout * w.reshape((-1,) + (1,) * (out.ndim - 1))


@pytest.mark.parametrize("V", [1, 3])
@pytest.mark.parametrize("lead", [(6,), (4, 5)])  # (B,) or per step (T, B)
def test_cross_entropy_gradient(V, lead):
    r = rng(V)
    arrays = {"logits": 3 * r.standard_normal((V,) + lead + (4,))}
    labels = r.integers(0, 4, lead)
    w = r.standard_normal(V)
    _, grad = weighted(softmax_cross_entropy, arrays["logits"], labels, w)
    check_gradients(lambda: weighted(softmax_cross_entropy, arrays["logits"], labels, w)[0],
                    arrays, {"logits": grad}, samples=40)


@pytest.mark.parametrize("V", [1, 3])
@pytest.mark.parametrize("lead", [(6,), (4, 5)])
def test_mse_gradient(V, lead):
    r = rng(V)
    arrays = {"out": r.standard_normal((V,) + lead + (2,))}
    y = r.standard_normal(lead + (2,))
    w = r.standard_normal(V)
    _, grad = weighted(mse, arrays["out"], y, w)
    check_gradients(lambda: weighted(mse, arrays["out"], y, w)[0], arrays, {"out": grad}, samples=40)


def test_cross_entropy_value_is_the_textbook_one():
    r = rng(3)
    logits = r.standard_normal((2, 5, 3))
    labels = r.integers(0, 3, 5)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = -np.log(p[:, np.arange(5), labels]).mean(1)
    loss, grad = softmax_cross_entropy(logits, labels)
    np.testing.assert_allclose(loss, expected, rtol=1e-12)
    np.testing.assert_allclose(grad, (p - np.eye(3)[labels]) / 5, rtol=1e-12)


def no_warnings(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_entropy_is_stable_and_keeps_the_dtype(dtype):
    logits = np.array([[[1e30, 0.0, -1e30], [1e30, 1e30, 0.0]]], dtype=dtype)
    labels = np.array([0, 2])
    loss, grad = no_warnings(softmax_cross_entropy, logits, labels)
    assert loss.dtype == dtype and grad.dtype == dtype
    assert np.isfinite(loss).all() and np.isfinite(grad).all()
    # position 0 is certain and right (0), position 1 is certainly wrong (1e30 nats)
    np.testing.assert_allclose(loss[0], 1e30 / 2, rtol=1e-6)
    np.testing.assert_allclose(grad[0, 0], [0, 0, 0], atol=1e-12)
    np.testing.assert_allclose(grad[0, 1], [0.25, 0.25, -0.5], rtol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 1])  # the label's logit, or another one
def test_cross_entropy_of_nonfinite_logits_is_nonfinite(bad, where):
    logits = np.zeros((3, 4, 3), dtype=np.float32)
    logits[1, 2, where] = bad
    labels = np.zeros(4, dtype=np.int64)
    loss, grad = no_warnings(softmax_cross_entropy, logits, labels)
    assert np.isfinite(loss[[0, 2]]).all() and not np.isfinite(loss[1])  # only that variant
    assert np.isfinite(grad[[0, 2]]).all()


def test_cross_entropy_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="labels"):
        softmax_cross_entropy(np.zeros((1, 4, 3)), np.zeros(5, dtype=np.int64))
    with pytest.raises(TypeError, match="integers"):
        softmax_cross_entropy(np.zeros((1, 4, 3)), np.zeros(4))


def test_accuracy_on_hand_made_logits():
    labels = np.array([0, 2, 1, 1])
    logits = np.array([
        [[5, 0, 0], [0, 0, 5], [0, 5, 0], [0, 5, 0]],  # all right
        [[5, 0, 0], [0, 0, 5], [5, 0, 0], [0, 0, 5]],  # half
        [[0, 5, 0], [5, 0, 0], [5, 0, 0], [0, 0, 5]],  # none
    ], dtype=np.float32)
    acc = accuracy(logits, labels)
    assert acc.dtype == np.float64
    np.testing.assert_array_equal(acc, [1.0, 0.5, 0.0])
    per_step = np.stack([logits[0], logits[1]])[None]  # (V=1, T=2, B=4, C=3)
    np.testing.assert_array_equal(accuracy(per_step, np.stack([labels, labels])), [0.75])


# ----------------------------------------------------------------------------- token mode, new tasks

def tokens_of(kind, seed=1, **over):
    cfg = CONFIGS[kind].model_copy(update=over)
    return build_task(cfg, "float32", rng(0), tokens=True).batch(rng(seed))


@pytest.mark.parametrize("kind", DISCRETE)
def test_token_ids_are_the_one_hot_inputs_drawn_by_the_same_calls(kind):
    """A token model reads the ids a one-hot model reads as vectors: same sequences, same
    targets, and the stream left in the same state (variants of either see the same batches)."""
    one_hot_task = make(kind, "float32")
    a, b = rng(1), rng(1)
    x, y = one_hot_task.batch(a)
    ids, y_ids = build_task(CONFIGS[kind], "float32", rng(0), tokens=True).batch(b)
    assert ids.dtype == np.int64 and ids.shape == x.shape[:2]
    assert ((0 <= ids) & (ids < one_hot_task.input_dim)).all()
    np.testing.assert_array_equal(x, np.eye(one_hot_task.input_dim, dtype="float32")[ids])
    np.testing.assert_array_equal(y, y_ids)
    assert a.random() == b.random()


@pytest.mark.parametrize("kind", ["adding", "teacher", "spirals"])
def test_continuous_inputs_stay_vectors_in_token_mode(kind):
    task = build_task(CONFIGS[kind], "float32", rng(0), tokens=True)
    x, _ = task.batch(rng(1))
    assert x.dtype == np.float32 and not task.tokens
    np.testing.assert_array_equal(x, draw(make(kind, "float32"))[0])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(0, 6), st.integers(2, 7), st.integers(1, 9), st.integers(0, 2**32 - 1))
def test_associative_recall_answer_is_the_queried_keys_value(n_pairs, extra_keys, n_values, B, seed):
    cfg = C.AssociativeRecallTask(kind="associative_recall", batch_size=B, n_pairs=n_pairs,
                                  n_keys=n_pairs + extra_keys, n_values=n_values)
    task = build_task(cfg, "float64", rng(0), tokens=True)
    assert cfg.seq_len == task.seq_len == 2 * n_pairs + 2
    seq, y = task.batch(rng(seed))
    n_keys = cfg.n_keys
    assert seq.shape == (cfg.seq_len, B) and y.shape == (B,)
    keys, values = seq[0:2 * n_pairs:2], seq[1:2 * n_pairs:2]
    assert ((0 <= keys) & (keys < n_keys)).all()
    assert ((n_keys <= values) & (values < n_keys + n_values)).all()
    assert (seq[-2] == n_keys + n_values).all()  # the query marker
    for b in range(B):
        assert len(set(keys[:, b])) == n_pairs  # distinct: one answer
        (i,) = np.flatnonzero(keys[:, b] == seq[-1, b])  # the query is one of the keys
        assert y[b] == values[i, b] - n_keys


def test_associative_recall_queries_every_pair_and_value_uniformly():
    task = make("associative_recall", batch_size=4000)
    seq, y = tokens_of("associative_recall", batch_size=4000)
    where = (seq[0:6:2] == seq[-1]).argmax(0)
    assert np.bincount(where, minlength=3).min() > 1200  # each of 3 pairs ~1333
    assert np.bincount(y, minlength=task.output_dim).min() > 900  # each of 4 values ~1000


def is_balanced(s, k, depth):
    stack = []
    for t in s:
        if t < k:
            stack.append(t)
            if len(stack) > depth:
                return False
        elif not stack or stack.pop() != t - k:
            return False
    return not stack


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 20), st.integers(1, 4), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_dyck_strings_are_balanced_within_depth_and_targets_are_the_next_token(half, k, depth, seed):
    cfg = C.DyckTask(kind="dyck", batch_size=16, seq_len=2 * half, n_types=k, depth=depth)
    task = build_task(cfg, "float64", rng(0), tokens=True)
    assert (task.input_dim, task.output_dim) == (2 * k + 1, 2 * k + 1)
    seq, y = task.batch(rng(seed))
    for b in range(16):
        assert is_balanced(seq[:, b].tolist(), k, depth), seq[:, b]
    np.testing.assert_array_equal(y[:-1], seq[1:])
    assert (y[-1] == 2 * k).all() and (seq < 2 * k).all()  # END is a target only


def test_dyck_reaches_its_depth_and_uses_every_type():
    seq, _ = tokens_of("dyck", batch_size=500)
    depth = np.cumsum(np.where(seq < 2, 1, -1), axis=0)
    assert depth.max() == 3 and depth.min() == 0
    assert set(np.unique(seq)) == {0, 1, 2, 3}


def test_dyck_seq_len_must_be_even():
    with pytest.raises(ValueError, match="even"):
        C.DyckTask(kind="dyck", seq_len=11)


def test_lm_windows_of_a_given_file_and_the_held_out_tail(tmp_path):
    text = "".join(chr(ord("a") + i % 7) for i in range(300)) + "XYZ" * 10  # the tail has characters of its own
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    cfg = C.LMTask(kind="lm", batch_size=50, seq_len=8, path=str(tmp_path / "t.txt"))
    task = build_task(cfg, "float64", rng(0), tokens=True)
    vocab = sorted(set(text))
    assert task.input_dim == task.output_dim == len(vocab) == 10
    x, y = task.batch(rng(1))
    assert x.shape == y.shape == (8, 50)
    np.testing.assert_array_equal(x[1:], y[:-1])  # the target is the next character
    train = text[: len(text) - len(text) // 10]
    for b in range(50):
        window = "".join(vocab[i] for i in x[:, b]) + vocab[y[-1, b]]
        assert window in train
    held = task.heldout(rng(2), 3)
    tail = text[len(text) - len(text) // 10:]
    for hx, hy in held:
        for b in range(50):
            assert "".join(vocab[i] for i in hx[:, b]) + vocab[hy[-1, b]] in tail


def test_lm_default_text_is_gradlabs_sorted_source():
    from pathlib import Path

    import gradlab
    from gradlab.texts import default_text

    root = Path(gradlab.__file__).parent
    text = default_text()
    assert text.startswith((root / "__init__.py").read_text())
    assert (root / "texts.py").read_text() in text and len(text) > 100_000
    task = make("lm")
    assert task.input_dim == len(set(text))


def test_training_builds_the_task_in_the_encoding_its_model_kind_reads(monkeypatch):
    """train.py asks the model kind (ModelKind.tokens) how the task should encode its inputs."""
    import dataclasses

    import gradlab.train
    from gradlab.kinds import MODEL_KINDS

    assert not any(MODEL_KINDS[k].tokens for k in ("mlp", "rnn", "lstm", "gru"))  # they read vectors
    seen = []
    real = gradlab.train.build_task

    def build(cfg, dtype, task_rng, tokens=False):
        seen.append(tokens)
        return real(cfg, dtype, task_rng, tokens=False)  # the gru still reads vectors

    monkeypatch.setattr(gradlab.train, "build_task", build)
    cfg = C.ExperimentConfig.model_validate(dict(name="t", model=dict(kind="gru", depth=1, width=4),
                                                 task=dict(kind="dyck", seq_len=6, batch_size=2),
                                                 train=dict(steps=2), clipping=[dict(method="none")]))
    gradlab.train.train_seed(cfg, 0)
    monkeypatch.setitem(MODEL_KINDS, "gru", dataclasses.replace(MODEL_KINDS["gru"], tokens=True))
    gradlab.train.train_seed(cfg, 0)
    assert seen == [False, True]

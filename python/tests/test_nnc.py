"""The Python package `nnc`: compile, run, grad, train, params, save and
load, diagnostics as `nnc.Error`, and the same numbers as the `nnc` command
line on the same files.

The command line is the repository's `target/debug/nnc` (`cargo build`), or
the binary named by the environment variable NNC_BIN.
"""

import json
import os
import re
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

import nnc

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def cli(*args):
    """Runs the `nnc` binary; returns its standard output."""
    binary = os.environ.get("NNC_BIN", str(ROOT / "target" / "debug" / "nnc"))
    if not Path(binary).exists():
        pytest.fail(f"{binary} is missing: run `cargo build` at the repository root first")
    done = subprocess.run(
        [binary, "--color", "never", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def digits_rows(n):
    """The first `n` rows of the digits data, raw pixel values 0..16."""
    text = (EXAMPLES / "data" / "digits.csv").read_text().splitlines()
    header = text[0].split(",")
    label = header.index("label")
    rows = [[float(v) for v in line.split(",")] for line in text[1 : n + 1]]
    x = np.array([[v for i, v in enumerate(r) if i != label] for r in rows], np.float32)
    y = np.array([int(r[label]) for r in rows])
    return x, y


# compile and run


def test_run_gives_the_outputs_of_nnc_run():
    m = nnc.compile(EXAMPLES / "neuron.nn")
    out = m.run()
    want = json.loads(cli("run", "examples/neuron.nn", "--format", "json"))["outputs"]
    assert sorted(out) == sorted(want)
    for name, t in want.items():
        got = out[name]
        assert got.dtype == np.float32
        assert list(got.shape) == t["shape"]
        np.testing.assert_array_equal(got.ravel(), np.array(t["data"], np.float32))


def test_run_binds_symbolic_dimensions_from_the_arrays():
    m = nnc.compile(EXAMPLES / "digits_mlp.nn")
    for rows in (1, 5, 32):
        out = m.run(x=np.zeros((rows, 64), np.float32))
        assert list(out) == ["predict"]
        assert out["predict"].shape == (rows, 10)


def test_run_takes_any_array_like_as_float32():
    m = nnc.compile(EXAMPLES / "digits_mlp.nn")
    x, _ = digits_rows(4)
    want = m.run(x=x)["predict"]
    np.testing.assert_array_equal(m.run(x=x.astype(np.float64))["predict"], want)
    np.testing.assert_array_equal(m.run(x=x.tolist())["predict"], want)
    # A view that is not C-contiguous is read in row-major order.
    wide = np.zeros((4, 128), np.float32)
    wide[:, ::2] = x
    np.testing.assert_array_equal(m.run(x=wide[:, ::2])["predict"], want)


def test_compile_from_a_string():
    m = nnc.compile(source="input x: [N]\noutput y = 2.0 * x + 1.0\n", name="affine.nn")
    out = m.run(x=np.arange(3, dtype=np.float32))
    np.testing.assert_array_equal(out["y"], [1.0, 3.0, 5.0])
    assert m.inputs == [("x", "[N]")]


def test_the_interpreter_agrees_with_the_jit():
    x, _ = digits_rows(8)
    jit = nnc.compile(EXAMPLES / "digits_mlp.nn").run(x=x)["predict"]
    interp = nnc.compile(EXAMPLES / "digits_mlp.nn", backend="interp").run(x=x)["predict"]
    np.testing.assert_allclose(jit, interp, rtol=1e-5, atol=1e-5)


# grad


def test_grad_gives_the_values_of_nnc_grad():
    m = nnc.compile(EXAMPLES / "neuron_train.nn")
    got = m.grad()
    want = json.loads(cli("grad", "examples/neuron_train.nn", "--format", "json"))
    assert np.float32(got["loss"]) == np.float32(want["loss"])
    assert sorted(got) == sorted(["loss"] + [f"grad.{n}" for n in want["grads"]])
    for name, t in want["grads"].items():
        g = got[f"grad.{name}"]
        assert list(g.shape) == t["shape"]
        np.testing.assert_array_equal(g.ravel(), np.array(t["data"], np.float32))


def test_grad_on_inputs_given_by_name():
    m = nnc.compile(EXAMPLES / "xor.nn")
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    t = np.array([0, 1, 1, 0], np.float32)
    got = m.grad(x=x, t=t)
    assert got["loss"] > 0
    for name, value in m.params.items():
        assert got[f"grad.{name}"].shape == value.shape
    # A step against the gradient lowers the loss.
    for name in m.params.keys():
        m.params[name] = m.params[name] - 0.1 * got[f"grad.{name}"]
    assert m.grad(x=x, t=t)["loss"] < got["loss"]


# train


def test_one_epoch_of_training_matches_nnc_train():
    m = nnc.compile(EXAMPLES / "digits_mlp.nn")
    seen = []
    losses = m.train(epochs=1, callback=seen.append)
    assert len(losses) == 1
    assert [s["epoch"] for s in seen] == [1]
    assert seen[0]["train_loss"] == pytest.approx(losses[0])
    printed = cli("train", "examples/digits_mlp.nn", "--epochs", "1")
    line = re.search(r"epoch 1/1  train_loss (\S+)  val_loss (\S+)  val_accuracy (\S+)", printed)
    assert line, printed
    assert f"{losses[0]:.4f}" == line.group(1)
    assert f"{seen[0]['val_loss']:.4f}" == line.group(2)
    assert f"{seen[0]['val_accuracy']:.4f}" == line.group(3)


def test_training_continues_from_the_current_values_and_learns_xor():
    m = nnc.compile(EXAMPLES / "xor.nn")
    first = m.train(epochs=150)
    second = m.train(epochs=150)
    assert len(first) == len(second) == 150
    assert second[-1] < first[-1] < first[0]
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    p = m.run(x=x)["predict"]
    np.testing.assert_array_equal(p > 0.5, [False, True, True, False])


def test_training_on_another_csv_file(tmp_path):
    rows = (EXAMPLES / "data" / "xor.csv").read_text()
    (tmp_path / "same.csv").write_text(rows)
    on_file = nnc.compile(EXAMPLES / "xor.nn").train(epochs=5)
    on_copy = nnc.compile(EXAMPLES / "xor.nn").train(epochs=5, data=tmp_path / "same.csv")
    assert on_copy == on_file
    with pytest.raises(nnc.Error, match="missing.csv"):
        nnc.compile(EXAMPLES / "xor.nn").train(epochs=1, data=tmp_path / "missing.csv")


def test_an_exception_in_the_callback_stops_training():
    m = nnc.compile(EXAMPLES / "xor.nn")
    before = m.params["w1"]

    def stop(figures):
        raise KeyError(f"stop at {figures['epoch']}")

    with pytest.raises(KeyError, match="stop at 1"):
        m.train(epochs=100, callback=stop)
    # What it trained before stopping is kept.
    assert not np.array_equal(m.params["w1"], before)


def test_training_releases_the_gil():
    m = nnc.compile(EXAMPLES / "digits_mlp.nn")
    ticks = 0
    done = threading.Event()
    worker = threading.Thread(target=lambda: (m.train(epochs=2), done.set()))
    worker.start()
    while not done.is_set():
        ticks += 1
    worker.join()
    # Held for the whole run, the GIL would leave this loop a handful of
    # turns at most.
    assert ticks > 10_000


# params, save and load


def test_params_read_and_assign():
    m = nnc.compile(EXAMPLES / "neuron.nn")
    assert sorted(m.params.keys()) == ["b", "w"]
    assert "w" in m.params and "nope" not in m.params
    assert len(m.params) == 2
    np.testing.assert_array_equal(m.params["w"], np.array([0.2, -0.5, 1.0], np.float32))
    # A copy: changing it changes nothing.
    m.params["w"][0] = 100
    assert m.params["w"][0] == np.float32(0.2)
    m.params["w"] = np.array([1.0, 1.0, 1.0])
    m.params["b"] = np.float32(0.5)
    assert m.run()["z"] == pytest.approx(0.5 + 0.8 + 0.2 + 0.5)


def test_assigning_a_parameter_of_another_shape_is_an_error():
    m = nnc.compile(EXAMPLES / "digits_mlp.nn")
    with pytest.raises(ValueError, match=r"`Mlp.w1` is declared \[64, 128\], and the array assigned has shape \[3, 4\]"):
        m.params["w1"] = np.zeros((3, 4))
    with pytest.raises(KeyError, match="names no parameter"):
        m.params["w9"]


def test_save_and_load(tmp_path):
    m = nnc.compile(EXAMPLES / "xor.nn")
    m.train(epochs=20)
    saved = {k: v for k, v in m.params.items()}
    path = tmp_path / "xor.safetensors"
    m.save(path)
    fresh = nnc.compile(EXAMPLES / "xor.nn")
    assert not np.array_equal(fresh.params["w1"], saved["Xor.w1"])
    fresh.load(path)
    for k, v in saved.items():
        np.testing.assert_array_equal(fresh.params[k], v)
    # The command line reads what Python saved, and gives the same numbers.
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    np.save(tmp_path / "x.npy", x)
    out = json.loads(
        cli("run", "examples/xor.nn", "--params", path, "--input", f"x={tmp_path / 'x.npy'}", "--format", "json")
    )["outputs"]["predict"]
    np.testing.assert_array_equal(fresh.run(x=x)["predict"].ravel(), np.array(out["data"], np.float32))


def test_loading_weights_of_another_model_is_an_error(tmp_path):
    path = tmp_path / "neuron.safetensors"
    nnc.compile(EXAMPLES / "neuron.nn").save(path)
    m = nnc.compile(EXAMPLES / "xor.nn")
    with pytest.raises(nnc.Error, match="has no tensor `Xor.w1`"):
        m.load(path)


# diagnostics


def test_a_diagnostic_is_raised_as_nnc_error_with_its_location():
    assert issubclass(nnc.Error, Exception)
    with pytest.raises(nnc.Error) as e:
        nnc.compile(source="input x: [3]\nparam w: [4] = zeros()\noutput y = x * w\n", name="bad.nn")
    text = str(e.value)
    assert "error" in text
    assert "bad.nn:3:" in text
    assert "\x1b[" not in text


def test_a_missing_or_misshapen_input_is_an_nnc_error():
    m = nnc.compile(EXAMPLES / "digits_mlp.nn")
    with pytest.raises(nnc.Error, match="x"):
        m.run()
    with pytest.raises(nnc.Error, match=r"`x=` is an array of shape \[2, 3\], but input `Mlp.x` is \[B, 64\]") as e:
        m.run(x=np.zeros((2, 3)))
    assert "digits_mlp.nn:" in str(e.value)
    with pytest.raises(nnc.Error, match="`z=` names no input"):
        m.run(z=np.zeros(3))


def test_a_file_that_cannot_be_read_is_an_nnc_error():
    with pytest.raises(nnc.Error, match="no such file"):
        nnc.compile(EXAMPLES / "missing.nn")

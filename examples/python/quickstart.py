"""nnc from Python, notebook style: compile the digits MLP, train it two
epochs, look at a few predictions, save the weights.

    pip install ./python            # from the repository root
    python examples/python/quickstart.py
"""

from pathlib import Path

import numpy as np

import nnc

here = Path(__file__).resolve().parent.parent  # examples/

# %% Compile: a diagnostic (a shape error, say) would raise nnc.Error here.
m = nnc.compile(here / "digits_mlp.nn")
print(m)
print("inputs:", m.inputs)
print("parameters:", {name: p.shape for name, p in m.params.items()})

# %% Train with the file's `train` block (its data, optimizer and batch),
# two epochs instead of its 20; the callback sees each epoch's figures.
def progress(figures):
    print(
        f"epoch {figures['epoch']}: train_loss {figures['train_loss']:.4f}, "
        f"val_loss {figures['val_loss']:.4f}, val_accuracy {figures['val_accuracy']:.3f}"
    )

losses = m.train(epochs=2, callback=progress)
print("loss per epoch:", [round(l, 4) for l in losses])

# %% Predict a few rows: raw pixels 0..16, as in the CSV (the block's
# `scale = 1/16` is applied to `x` as `nnc run --input` applies it).
lines = (here / "data" / "digits.csv").read_text().splitlines()
label = lines[0].split(",").index("label")
rows = [[float(v) for v in line.split(",")] for line in lines[1:6]]
x = np.array([[v for i, v in enumerate(r) if i != label] for r in rows], np.float32)
truth = [int(r[label]) for r in rows]
scores = m.run(x=x)["predict"]
print("predicted:", scores.argmax(axis=1).tolist(), "true:", truth)

# %% Save the weights: `nnc run --params` and `nnc predict --params` read them.
m.save("digits.safetensors")
print("saved digits.safetensors")

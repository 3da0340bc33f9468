"""nnc from Python: compile a `.nn` file, run it on NumPy arrays, take its
gradients, train it with its `train` block, and read, assign, save and load
its parameters.

    m = nnc.compile("model.nn")
    out = m.run(x=np.zeros((4, 64), np.float32))   # {"predict": ndarray}
    losses = m.train(epochs=2, callback=print)
    m.params["w1"]                                  # a NumPy copy
    m.save("W.safetensors")

A diagnostic (a syntax or shape error, a missing input) is raised as
`nnc.Error`, whose message is the rendered diagnostic with its source
location.
"""

from ._nnc import Error, Model, Params, compile

__all__ = ["Error", "Model", "Params", "compile"]

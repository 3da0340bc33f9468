"""Classifies the 8x8 handwritten digits from Python with a library
compiled by nnc, through ctypes and NumPy (no nnc, JIT or PyTorch at run
time). Build the library as README.md says (`--dim B=1 -o digits.so`),
then:

    python3 examples/aot/digits.py ./digits.so examples/data/digits.csv

The pixels are scaled by 1/16, as the model's `train` block did in
training; the accuracy is over every row (nnc's validation rows are a
seeded shuffle)."""

import ctypes
import sys

import numpy as np


def load(path):
    lib = ctypes.CDLL(path)
    floats = np.ctypeslib.ndpointer(dtype=np.float32, flags="C_CONTIGUOUS")
    lib.digits_new.restype = ctypes.c_void_p
    lib.digits_new.argtypes = []
    lib.digits_run.restype = ctypes.c_int
    lib.digits_run.argtypes = [ctypes.c_void_p, floats, floats]
    lib.digits_last_error.restype = ctypes.c_char_p
    lib.digits_last_error.argtypes = []
    lib.digits_free.restype = None
    lib.digits_free.argtypes = [ctypes.c_void_p]
    return lib


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: digits.py LIBRARY.so digits.csv")
    lib = load(sys.argv[1])
    data = np.loadtxt(sys.argv[2], delimiter=",", skiprows=1, dtype=np.float32)
    pixels = np.ascontiguousarray(data[:, :64] / 16.0, dtype=np.float32)
    labels = data[:, 64].astype(int)
    model = lib.digits_new()
    if not model:
        sys.exit("digits_new: " + lib.digits_last_error().decode())
    scores = np.zeros(10, dtype=np.float32)
    right = 0
    try:
        for x, label in zip(pixels, labels):
            if lib.digits_run(model, np.ascontiguousarray(x), scores) != 0:
                sys.exit("digits_run: " + lib.digits_last_error().decode())
            right += int(np.argmax(scores) == label)
    finally:
        lib.digits_free(model)
    rows = len(labels)
    print(f"{rows} rows, {right} classified right: accuracy {right / rows:.4f}")


if __name__ == "__main__":
    main()

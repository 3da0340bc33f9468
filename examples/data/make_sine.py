"""Writes sine.csv: windows of a noisy sine wave and the value that follows.

Each row is one window: x0..x15 = sin(0.3 t + phase) + noise for t = 0..15,
and `next` = the noisy value at t = 16. The phase is uniform in [0, 2π),
the noise normal with standard deviation 0.05, both from Python's `random`
seeded with 7. Run `python3 make_sine.py` here to write the file again.
"""
import math
import random

random.seed(7)
with open("sine.csv", "w") as f:
    f.write(",".join([f"x{t}" for t in range(16)] + ["next"]) + "\n")
    for _ in range(1000):
        phase = random.uniform(0.0, 2.0 * math.pi)
        values = [math.sin(0.3 * t + phase) + random.gauss(0.0, 0.05) for t in range(17)]
        f.write(",".join(f"{v:.5f}" for v in values) + "\n")

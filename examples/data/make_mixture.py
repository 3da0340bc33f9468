"""Writes mixture.csv: samples of a mixture of 8 Gaussians on a circle.

Component k (0..7, equally likely) is centred at 2·(cos 2πk/8, sin 2πk/8)
with standard deviation 0.1 on each axis. Each row is one sample: `x`,
`y` and the component it came from (`mode`). Python's `random`, seeded
with 5, draws the components and the noise. Run `python3 make_mixture.py`
here to write the file again.
"""
import math
import random

random.seed(5)
with open("mixture.csv", "w") as f:
    f.write("x,y,mode\n")
    for _ in range(4096):
        k = random.randrange(8)
        a = 2.0 * math.pi * k / 8
        x = 2.0 * math.cos(a) + random.gauss(0.0, 0.1)
        y = 2.0 * math.sin(a) + random.gauss(0.0, 0.1)
        f.write(f"{x:.5f},{y:.5f},{k}\n")

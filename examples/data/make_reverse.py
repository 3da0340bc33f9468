"""Writes reverse.csv: sequences of four digits and the same reversed.

Each row holds t0..t3, digits 0..9 drawn uniformly, and r0..r3 = t3..t0.
Python's `random` is seeded with 3. Run `python3 make_reverse.py` here to
write the file again.
"""
import random

random.seed(3)
with open("reverse.csv", "w") as f:
    f.write("t0,t1,t2,t3,r0,r1,r2,r3\n")
    for _ in range(2000):
        t = [random.randrange(10) for _ in range(4)]
        f.write(",".join(str(v) for v in t + t[::-1]) + "\n")

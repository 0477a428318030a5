#!/usr/bin/env python3
"""Write N sequences of random standard residues whose lengths are drawn from a real FASTA's
(seeded): benchmark input with real proteins' length distribution where the real proteins
themselves do not fit the device call.

    python3 bench/synth_fasta.py REAL.fasta OUT.fasta N [SEED]
"""
import random
import sys


def main():
    real, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(int(sys.argv[4]) if len(sys.argv) > 4 else 7)
    lens = []
    for line in open(real):
        if line.startswith(">"):
            lens.append(0)
        elif lens:
            lens[-1] += len(line.strip())
    with open(out, "w") as f:
        for i in range(n):
            f.write(f">syn{i}\n" + "".join(rng.choice("LAGVSERTIDPKQNFYMHWC") for _ in range(rng.choice(lens))) + "\n")


if __name__ == "__main__":
    main()

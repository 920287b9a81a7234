"""Deterministic flat tree for scripts/memory.sh and scripts/index-bench.sh.

    flat_tree.py WORK ENTRIES K DIRS

Directory d is on server (d % K) and, for every third one, on the next server too; its
files are split between those servers, so the merge is exercised. The union has DIRS
directories and (ENTRIES // DIRS) * DIRS empty files (+ the root). Server N's root is
WORK/srvN.
"""
import os
import sys

work, entries, k, dirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
per_dir = entries // dirs
for d in range(dirs):
    homes = [d % k] + ([(d + 1) % k] if d % 3 == 0 and k > 1 else [])
    for h in homes:
        os.makedirs(f"{work}/srv{h + 1}/d{d:05d}", exist_ok=True)
    for f in range(per_dir):
        h = homes[f % len(homes)]
        open(f"{work}/srv{h + 1}/d{d:05d}/file-{f:06d}.dat", "wb").close()

"""stepq's benchmark suite: every figure next to a raw-arq baseline measured in the same run.

Run it with ``python bench/run.py [--quick] [--only NAME] [--out bench/results/latest.json]``.
"""

"""Benchmarks: `recurrl bench backbones|decision|ppo`.

Shared pieces: timing.py (warmup, interleaved rounds, medians), memory.py (peak memory), targets.py
(targets as data), report.py (the one writer of JSON, markdown and console tables), hardware.py
(device facts). Then one module per benchmark: backbones.py (with backbone_config.py,
backbone_jobs.py, plot.py), decision.py, d3rlpy.py, ddp.py, ppo.py.
"""

"""`recurrl compare`: grids of ordinary runs (datasets or envs x backbones x seeds), resumable cell by
cell, and one report (CSV, markdown, PNG, JSON) built from the finished runs.

- `grid`: the grid's cells, their commands, the settings check, and the runner (workers, resume).
- `measure`: what a finished training run is measured for afterwards (window-mode scores, per-tick latency).
- `report`: rows from finished cells -> results.csv, summary.md, summary.json, summary.png.
"""

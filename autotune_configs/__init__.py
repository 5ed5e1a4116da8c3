"""Tile-size tables (JSON data, installed as ``mcconv.autotune_configs``).

``<kernel>/candidates.json``: the heuristic default and the candidate list that MCCONV_AUTOTUNE=1
and ``mcconv tune`` sweep. ``<kernel>/<device_name>.json``: tuned entries for one GPU model.
"""

"""Tile configurations as data.

``autotune_configs/<kernel>/candidates.json`` holds each kernel's heuristic default and the
candidates that autotuning sweeps (every kernel declared in ``mcconv/ops/`` has one);
``autotune_configs/<kernel>/<device_name>.json`` holds tuned
entries for one GPU model, keyed by a bucketed shape (see :func:`shape_key`), so that a new
shape reuses the entry of its bucket instead of retuning. ``MCCONV_CONFIG_DIR`` names an extra
folder of tables with the same layout, read after (and overriding) the packaged ones.
"""
import functools
import json
import math
import os
import warnings
from importlib import resources
from pathlib import Path

CONFIG_DIR_ENV = "MCCONV_CONFIG_DIR"
LAUNCH_OPTIONS = ("num_warps", "num_stages")
# tl.dot needs every tile dimension >= 16 on the GPU; smaller problems are masked instead.
MIN_BLOCK = 16


def bucket(value: int) -> int:
    """Round up to a power of two: the granularity of tuned entries."""
    return 1 if value <= 1 else 1 << (int(value) - 1).bit_length()


def shape_key(dtype: str, m: int, n: int, r: int) -> str:
    """Table key of a problem: dtype and bucketed M (pixels), N (out channels), R (reduction)."""
    return f"{dtype}/M={bucket(m)}/N={bucket(n)}/R={bucket(r)}"


def _parse_key(key: str):
    dtype, *dims = key.split("/")
    return dtype, tuple(int(d.split("=", 1)[1]) for d in dims)


@functools.lru_cache(maxsize=None)
def kernel_spec(kernel: str) -> dict:
    """The packaged ``candidates.json`` of a kernel (default config and candidate list)."""
    path = resources.files("mcconv.autotune_configs").joinpath(kernel, "candidates.json")
    if not path.is_file():
        raise ValueError(f"kernel: no tile candidates for {kernel!r} (autotune_configs/{kernel}/candidates.json)")
    return json.loads(path.read_text())


def candidates(kernel: str) -> list[dict]:
    """Candidate tile configurations of a kernel (copies, safe to modify), within its warp cap."""
    return [dict(c) for c in kernel_spec(kernel)["candidates"]]


def _table_paths(kernel: str, device: str):
    packaged = resources.files("mcconv.autotune_configs").joinpath(kernel, f"{device}.json")
    paths = [packaged]
    extra = os.environ.get(CONFIG_DIR_ENV)
    if extra:
        paths.append(Path(extra) / kernel / f"{device}.json")
    return paths


def max_num_warps(kernel: str) -> int | None:
    """A kernel's cap on num_warps, where its candidates.json sets one ("max_num_warps").

    The flattened convolution loops are capped at 4 warps (one warpgroup): PyTorch's Inductor
    found Triton miscompiling a flattened convolution loop with 8 or more warps (wrong results,
    pytorch/pytorch#173068) and caps its own. A cap is lifted only after a GPU run has shown a
    larger configuration correct. Tables, candidates and tuning all obey it.
    """
    cap = kernel_spec(kernel).get("max_num_warps")
    return None if cap is None else int(cap["value"])


def _check_entries(doc, required, cap=None) -> dict:
    entries = doc["entries"]
    if not isinstance(entries, dict):
        raise ValueError("'entries' is not an object")
    for key, entry in entries.items():
        # select_config takes log2 of every dimension: reject malformed keys here, not there.
        _, dims = _parse_key(key)
        if len(dims) != 3 or min(dims) < 1:
            raise ValueError(f"key {key!r} is not '<dtype>/M=<int>/N=<int>/R=<int>' with positive sizes")
        config = entry["config"]
        missing = [k for k in required if not isinstance(config.get(k), int) or config[k] < 1]
        if missing:
            raise ValueError(f"entry {key!r} lacks positive integers for {missing}")
        # Either would fail at launch: unknown names are not kernel parameters, tl.arange needs 2**k.
        unknown = sorted(set(config) - set(required))
        if unknown:
            raise ValueError(f"entry {key!r} has unknown parameters {unknown}")
        if any(config[k] & (config[k] - 1) for k in required if k.startswith("BLOCK_")):
            raise ValueError(f"entry {key!r} has a block size that is not a power of two")
        if cap is not None and config.get("num_warps", 0) > cap:
            raise ValueError(f"entry {key!r} has num_warps={config['num_warps']}, over this kernel's cap of {cap} "
                             f"(see its candidates.json: max_num_warps)")
    return entries


@functools.lru_cache(maxsize=None)
def load_table(kernel: str, device: str) -> dict:
    """Tuned entries for a kernel on a GPU model ({} when none); cached per process.

    A missing file is normal (untuned GPU). A corrupt one is skipped with one warning, so a
    bad table can cost speed but never a crash or a wrong result.
    """
    required = tuple(kernel_spec(kernel)["default"])
    cap = max_num_warps(kernel)
    entries = {}
    for path in _table_paths(kernel, device):
        try:
            if not path.is_file():
                continue
            entries.update(_check_entries(json.loads(path.read_text()), required, cap))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
            warnings.warn(f"mcconv: ignoring corrupt tile table {path} ({err!r}); "
                          f"using the heuristic default", RuntimeWarning, stacklevel=2)
    return entries


def fit(config: dict, limits: dict) -> dict:
    """Shrink block sizes that exceed the problem (never below MIN_BLOCK), as the runtime does."""
    fitted = dict(config)
    for name, size in limits.items():
        if name in fitted:
            fitted[name] = min(fitted[name], max(MIN_BLOCK, bucket(size)))
    return fitted


def select_config(kernel: str, device: str | None, dtype: str, m: int, n: int, r: int,
                  limits: dict) -> tuple[dict, str]:
    """Pick a tile configuration: exact bucket, else the nearest tuned bucket, else the default.

    ``limits`` maps block names to the problem extent along them (e.g. BLOCK_K -> channels per
    group) so that no block is larger than the next power of two of its extent.
    Returns ``(config, source)``; ``source`` says where the config came from.
    """
    table = load_table(kernel, device) if device else {}
    key = shape_key(dtype, m, n, r)
    if key in table:
        return fit(table[key]["config"], limits), f"table {device}.json [{key}]"
    _, dims = _parse_key(key)
    best, best_distance = None, math.inf
    for other in table:
        other_dtype, other_dims = _parse_key(other)
        if other_dtype != dtype:
            continue
        distance = sum(abs(math.log2(a) - math.log2(b)) for a, b in zip(dims, other_dims))
        if distance < best_distance:
            best, best_distance = other, distance
    if best is not None:
        return fit(table[best]["config"], limits), f"nearest in {device}.json [{best}]"
    return fit(kernel_spec(kernel)["default"], limits), "heuristic default"

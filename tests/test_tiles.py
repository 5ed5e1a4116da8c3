"""Tile tables: packaged candidates, bucketed lookup, MCCONV_CONFIG_DIR and corrupt files."""
import json
import warnings
from importlib import resources

import pytest
import torch

import mcconv
from mcconv import registry, tiles

FAKE_GPU = "Fake_Test_GPU"
CONV_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 4, "num_warps": 2, "num_stages": 2}


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    """An empty MCCONV_CONFIG_DIR; the table cache is cleared before and after the test."""
    monkeypatch.setenv(tiles.CONFIG_DIR_ENV, str(tmp_path))
    tiles.load_table.cache_clear()
    yield tmp_path
    tiles.load_table.cache_clear()


def write_table(root, entries, kernel="conv_direct", device=FAKE_GPU):
    """Write ``{"entries": entries}`` as root/<kernel>/<device>.json."""
    (root / kernel).mkdir(exist_ok=True)
    (root / kernel / f"{device}.json").write_text(json.dumps({"entries": entries}))


def select(m=100, n=20, r=45, dtype="float16", limits=None, device=FAKE_GPU):
    """select_config for conv_direct on the fake GPU."""
    return tiles.select_config("conv_direct", device, dtype, m, n, r, limits or {})


def test_every_table_belongs_to_a_kernel():
    folders = {p.name for p in resources.files("mcconv.autotune_configs").iterdir()
               if p.is_dir() and p.joinpath("candidates.json").is_file()}
    assert folders == set(registry.table_names())


@pytest.mark.parametrize("kernel", registry.table_names())
def test_packaged_candidates_load(kernel):
    path = resources.files("mcconv.autotune_configs").joinpath(kernel, "candidates.json")
    spec = json.loads(path.read_text())
    assert spec == tiles.kernel_spec(kernel)
    assert spec["kernel"] == kernel
    names = set(spec["default"])
    assert {"BLOCK_M", "BLOCK_N", "num_warps", "num_stages"} <= names
    assert spec["candidates"] and all(set(c) == names for c in spec["candidates"])
    for config in [spec["default"], *spec["candidates"]]:
        assert all(isinstance(v, int) and v >= 1 for v in config.values())
        assert all(v & (v - 1) == 0 for k, v in config.items() if k.startswith("BLOCK_"))


def test_unknown_kernel():
    with pytest.raises(ValueError, match="^kernel:"):
        tiles.kernel_spec("winograd")


@pytest.mark.parametrize("value, bucket", [(0, 1), (1, 1), (2, 2), (3, 4), (16, 16), (17, 32), (100, 128)])
def test_bucket(value, bucket):
    assert tiles.bucket(value) == bucket


def test_shape_key():
    assert tiles.shape_key("float16", 100, 20, 45) == "float16/M=128/N=32/R=64"


def test_exact_bucket_hit(config_dir):
    write_table(config_dir, {"float16/M=128/N=32/R=64": {"config": CONV_CONFIG}})
    config, source = select(m=100, n=20, r=45)
    assert config == CONV_CONFIG
    assert source == f"table {FAKE_GPU}.json [float16/M=128/N=32/R=64]"


def test_nearest_bucket(config_dir):
    far = dict(CONV_CONFIG, BLOCK_M=128)
    write_table(config_dir, {
        "float16/M=256/N=32/R=64": {"config": CONV_CONFIG},  # one bucket away
        "float16/M=4096/N=256/R=1024": {"config": far},
        "float32/M=128/N=32/R=64": {"config": far},  # the exact bucket, but another dtype
    })
    config, source = select(m=100, n=20, r=45)
    assert config == CONV_CONFIG
    assert source == f"nearest in {FAKE_GPU}.json [float16/M=256/N=32/R=64]"


def test_table_config_is_fitted_to_the_problem(config_dir):
    write_table(config_dir, {"float16/M=128/N=32/R=64": {"config": dict(CONV_CONFIG, BLOCK_M=256, BLOCK_N=64)}})
    config, _ = select(m=100, n=20, r=45, limits={"BLOCK_M": 100, "BLOCK_N": 3})
    assert (config["BLOCK_M"], config["BLOCK_N"]) == (128, tiles.MIN_BLOCK)


def test_default_without_a_table(config_dir):
    default = tiles.kernel_spec("conv_direct")["default"]
    assert select(device=None) == (default, "heuristic default")  # CPU: no GPU model
    assert select(device="Untuned_GPU") == (default, "heuristic default")
    write_table(config_dir, {"float32/M=128/N=32/R=64": {"config": CONV_CONFIG}})
    assert select(dtype="float16") == (default, "heuristic default")  # no entry of this dtype


def test_missing_config_dir_is_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(tiles.CONFIG_DIR_ENV, str(tmp_path / "absent"))
    tiles.load_table.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert select()[1] == "heuristic default"
    finally:
        tiles.load_table.cache_clear()


CORRUPT = {
    "not-json": "{entries: ",
    "not-an-object": "[1, 2]",
    "no-entries": json.dumps({"tables": {}}),
    "entries-a-list": json.dumps({"entries": []}),
    "entry-without-config": json.dumps({"entries": {"float16/M=128/N=32/R=64": {}}}),
    "config-missing-block": json.dumps({"entries": {"float16/M=128/N=32/R=64": {
        "config": {k: v for k, v in CONV_CONFIG.items() if k != "BLOCK_K"}}}}),
    "config-zero-block": json.dumps({"entries": {"float16/M=128/N=32/R=64": {
        "config": dict(CONV_CONFIG, BLOCK_M=0)}}}),
    "config-unknown-parameter": json.dumps({"entries": {"float16/M=128/N=32/R=64": {
        "config": dict(CONV_CONFIG, BLOCK_Z=16)}}}),
    "config-block-not-power-of-two": json.dumps({"entries": {"float16/M=128/N=32/R=64": {
        "config": dict(CONV_CONFIG, BLOCK_M=48)}}}),
    "key-not-a-number": json.dumps({"entries": {"float16/M=big/N=32/R=64": {"config": CONV_CONFIG}}}),
    # Keys that parse but would break the nearest-bucket search (log2 of 0, missing sizes).
    "key-zero-size": json.dumps({"entries": {"float16/M=0/N=32/R=64": {"config": CONV_CONFIG}}}),
    "key-missing-sizes": json.dumps({"entries": {"float16/M=128": {"config": CONV_CONFIG}}}),
}


@pytest.mark.parametrize("text", CORRUPT.values(), ids=CORRUPT.keys())
def test_corrupt_table_warns_once_and_uses_the_default(config_dir, text):
    (config_dir / "conv_direct").mkdir()
    (config_dir / "conv_direct" / f"{FAKE_GPU}.json").write_text(text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Another problem size: the nearest-bucket search runs over whatever was loaded.
        results = [select(), select(m=5000, n=3, r=7)]
    assert [w.category for w in caught] == [RuntimeWarning]
    assert "corrupt tile table" in str(caught[0].message)
    default = tiles.kernel_spec("conv_direct")["default"]
    assert results == [(default, "heuristic default")] * 2


def test_explain_reports_the_table_entry(config_dir):
    """End to end: explain with a GPU model's name reads its table from MCCONV_CONFIG_DIR."""
    x = torch.empty(2, 5, 9, 7, device="meta", dtype=torch.float16)
    w = torch.empty(7, 5, 3, 3, device="meta", dtype=torch.float16)
    key = tiles.shape_key("float16", 2 * 7 * 5, 7, 5 * 9)
    write_table(config_dir, {key: {"config": CONV_CONFIG}})
    dispatch = mcconv.explain(x, w, device_name=FAKE_GPU)
    assert dispatch.config_source == f"table {FAKE_GPU}.json [{key}]"
    assert dict(dispatch.config) == CONV_CONFIG


@pytest.mark.parametrize("kernel", registry.table_names())
def test_warp_caps_hold_in_the_packaged_candidates(kernel):
    cap = tiles.max_num_warps(kernel)
    spec = tiles.kernel_spec(kernel)
    if cap is None:
        return
    assert "pytorch/pytorch#173068" in spec["max_num_warps"]["why"]
    assert all(c["num_warps"] <= cap for c in [spec["default"], *spec["candidates"]])


def test_flattened_conv_loops_are_capped_at_one_warpgroup():
    assert tiles.max_num_warps("conv_direct") == 4 and tiles.max_num_warps("conv_dgrad") == 4


def test_a_table_entry_over_the_warp_cap_is_refused(config_dir):
    from mcconv.tools import tune

    over = {**CONV_CONFIG, "num_warps": 8}
    write_table(config_dir, {tiles.shape_key("float16", 100, 20, 45): {"config": over}})
    with pytest.warns(RuntimeWarning, match="cap of 4"):
        config, source = select()
    assert source == "heuristic default" and config["num_warps"] <= 4
    assert tune.candidate_configs("conv_direct", {}, override=[over, CONV_CONFIG]) == [CONV_CONFIG]

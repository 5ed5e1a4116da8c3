"""The wheel installs the kernels and tile tables inside mcconv, never a top-level `kernels`."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_wheel_layout(tmp_path):
    if not (REPO / "pyproject.toml").is_file():
        pytest.skip("not running from a source checkout")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path),
                            str(REPO)], capture_output=True, text=True)
    if build.returncode != 0:
        pytest.skip(f"could not build a wheel here (pip wheel exited {build.returncode}): {build.stderr[-300:]}")
    (wheel,) = tmp_path.glob("mcconv_triton-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "mcconv/_kernels/conv2d_fwd.py" in names
    assert "mcconv/_kernels/common.py" in names
    for kernel in ("conv_direct", "gemm_1x1", "depthwise", "conv_dgrad", "conv_wgrad"):
        assert f"mcconv/autotune_configs/{kernel}/candidates.json" in names
    assert not any(n.startswith(("kernels/", "autotune_configs/", "tests/")) for n in names)
    assert any(n.endswith("entry_points.txt") for n in names)

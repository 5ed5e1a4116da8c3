"""Host-side cost of one eager mcconv.conv2d (and conv3d) call, kernel launch stubbed out (runs on the CPU).

    TRITON_INTERPRET=1 python benchmarks/launch_overhead.py

Small convolutions are launch-bound: this measures what mcconv adds per call in Python
(plan lookup, allocation, argument passing) with the Triton launch replaced by a no-op, for the
direct inference path and for the autograd path (custom op dispatch included).
"""
import os
import timeit

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

import mcconv  # noqa: E402
from mcconv import _plan  # noqa: E402


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def main() -> None:
    x = torch.randn(8, 16, 14, 14).to(memory_format=torch.channels_last)
    w = torch.randn(16, 16, 3, 3).to(memory_format=torch.channels_last)
    b = torch.randn(16)
    mcconv.conv2d(x, w, b, padding=1, activation="relu")  # builds and caches the plan
    for plan in set(_plan._plans.values()):
        object.__setattr__(plan, "fn", _NoLaunch())
    n = 20000
    per_call = min(timeit.repeat(lambda: mcconv.conv2d(x, w, b, padding=1, activation="relu"), number=n,
                                 repeat=5)) / n
    print(f"mcconv.conv2d, inference (launch stubbed): {per_call * 1e6:.1f} us per call")
    xg = x.clone().requires_grad_()
    mcconv.conv2d(xg, w, b, padding=1, activation="relu")
    for plan in set(_plan._plans.values()):
        object.__setattr__(plan, "fn", _NoLaunch())
    n = 2000
    per_call = min(timeit.repeat(lambda: mcconv.conv2d(xg, w, b, padding=1, activation="relu"), number=n,
                                 repeat=5)) / n
    print(f"mcconv.conv2d, autograd forward (op dispatch, launch stubbed): {per_call * 1e6:.1f} us per call")
    # conv3d on the depth kernel: its validation, description and plan lookup per call
    x3 = torch.randn(2, 16, 4, 14, 14).to(memory_format=torch.channels_last_3d)
    w3 = torch.randn(16, 16, 3, 3, 3).to(memory_format=torch.channels_last_3d)
    mcconv.conv3d(x3, w3, b, padding=1, activation="relu")
    for plan in set(_plan._plans.values()):
        object.__setattr__(plan, "fn", _NoLaunch())
    n = 20000
    per_call = min(timeit.repeat(lambda: mcconv.conv3d(x3, w3, b, padding=1, activation="relu"), number=n,
                                 repeat=5)) / n
    print(f"mcconv.conv3d (depth kernel), inference (launch stubbed): {per_call * 1e6:.1f} us per call")


if __name__ == "__main__":
    main()

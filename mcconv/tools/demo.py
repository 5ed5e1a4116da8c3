"""``mcconv demo``: the textbook's examples through mcconv's kernels, beside torch's results."""
import os
import sys


def select_backend(argv) -> str:
    """Use the GPU when there is one, else Triton's interpreter ("cuda" or "cpu").

    Triton reads TRITON_INTERPRET when it is first imported; if something imported it already,
    the command re-runs itself with the variable set.
    """
    import torch

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    os.environ["TRITON_INTERPRET"] = "1"
    if "triton" not in sys.modules:
        return "cpu"
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "mcconv", *argv])


def demo_command(args) -> int:
    """Run the textbook's examples (multi-input and multi-output channels, the 1x1 convolution)
    through mcconv's kernels and print them beside torch's results."""
    device = select_backend(["demo"])
    import torch
    import torch.nn.functional as F

    import mcconv

    where = (f"on {torch.cuda.get_device_name()}" if device == "cuda"
             else "through Triton's interpreter on the CPU (no CUDA device found)")
    print(f"mcconv demo: the textbook's examples, running the kernels {where}\n")
    X = torch.tensor([[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]],
                      [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]], device=device)
    K = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[1.0, 2.0], [3.0, 4.0]]], device=device)
    ok = True

    def show(title, ours, theirs, dispatch):
        nonlocal ok
        same = torch.allclose(ours.float(), theirs.float(), rtol=1e-3, atol=1e-3)
        ok &= same
        print(f"== {title}\n   kernel: {dispatch}")
        print(f"   mcconv:\n{ours.cpu()}\n   torch:\n{theirs.cpu()}\n   match: {same}\n")

    show("corr2d_multi_in(X, K)  (the text's result: [[56, 72], [104, 120]])",
         mcconv.corr2d_multi_in(X, K), F.conv2d(X[None], K[None])[0, 0], mcconv.explain(X, K[None]))
    K3 = torch.stack((K, K + 1, K + 2), 0)
    show("corr2d_multi_in_out(X, K) with K = stack(K, K+1, K+2)",
         mcconv.corr2d_multi_in_out(X, K3), F.conv2d(X, K3), mcconv.explain(X, K3))
    torch.manual_seed(0)
    X1 = torch.normal(0, 1, (3, 3, 3), device=device)
    K1 = torch.normal(0, 1, (2, 3, 1, 1), device=device)
    Y1 = mcconv.corr2d_multi_in_out_1x1(X1, K1)
    Y2 = mcconv.corr2d_multi_in_out(X1, K1)
    show("corr2d_multi_in_out_1x1(X, K), 3 -> 2 channels (GEMM kernel)", Y1, F.conv2d(X1, K1), mcconv.explain(X1, K1))
    print(f"   |Y1 - Y2|.sum() = {float((Y1 - Y2).abs().sum()):.3g} (the text asserts < 1e-6)\n")
    ok &= float((Y1 - Y2).abs().sum()) < 1e-6
    print("all results match torch" if ok else "MISMATCH against torch")
    return 0 if ok else 1

"""Peak figures of a few GPU models, from the vendor's datasheets (not measured by mcconv).

Used by ``mcconv plan`` and ``mcconv bench`` for the roofline (ridge point, attainable
throughput) and by ``mcconv tune`` to prune tile configurations that cannot fit on the chip.
Throughputs are DENSE peaks in TFLOP/s (the datasheets print tensor-core figures "with
sparsity", twice the dense ones); bandwidths are in TB/s (10**12 bytes per second).

Sources:
  [H100]  NVIDIA H100 Tensor Core GPU datasheet,
          https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet
          and the NVIDIA H100 Tensor Core GPU Architecture whitepaper (per-clock figures at
          boost clock: 989.4 / 494.7 / 66.9 TFLOP/s for the SXM5 part).
  [H200]  NVIDIA H200 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/h200/
          (same Hopper compute as H100 SXM; 141 GB HBM3e at 4.8 TB/s).
  [A100]  NVIDIA A100 Tensor Core GPU datasheet,
          https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
  [CUDA]  CUDA C++ Programming Guide, "Features and Technical Specifications": at most 227 KB
          of shared memory per block on compute capability 9.0, 163 KB on 8.0; 255 registers
          per thread; 64 K 32-bit registers per SM.
"""
from dataclasses import dataclass, field

KB = 1024


@dataclass(frozen=True)
class GpuSpec:
    """Datasheet peaks of one GPU model."""

    key: str  # short name for --gpu
    device_name: str  # as torch.cuda.get_device_name() reports it
    title: str
    tensor_tflops: dict  # dtype key -> dense tensor-core TFLOP/s
    fp32_tflops: float  # non-tensor (CUDA core) FP32 FMA throughput
    bandwidth_tbs: float  # DRAM bandwidth
    smem_per_block: int  # bytes, opt-in maximum per thread block
    source: str
    aliases: tuple = field(default=())
    regs_per_thread: int = 255
    regs_per_sm: int = 65536

    @property
    def table_name(self) -> str:
        """The tile tables' file name: the torch device name with spaces as underscores."""
        return self.device_name.replace(" ", "_")

    def peak_tflops(self, dtype: str, tensor_cores: bool = True) -> float:
        """Peak for a dtype key ("float16", "bfloat16", "tf32", "float32").

        ``tensor_cores=False`` (mcconv's depthwise kernel, which multiplies element-wise in
        fp32 on the CUDA cores) gives the non-tensor FP32 peak.
        """
        if not tensor_cores or dtype == "float32":
            return self.fp32_tflops
        return self.tensor_tflops[dtype]

    def ridge(self, dtype: str, tensor_cores: bool = True) -> float:
        """Arithmetic intensity (FLOP/byte) where the roofline turns from memory- to compute-bound."""
        return self.peak_tflops(dtype, tensor_cores) / self.bandwidth_tbs


GPUS = {
    "h100-sxm": GpuSpec(
        "h100-sxm", "NVIDIA H100 80GB HBM3", "H100 SXM5 80GB",
        {"float16": 989.4, "bfloat16": 989.4, "tf32": 494.7}, 66.9, 3.35, 227 * KB, "[H100]",
        aliases=("h100", "h100-sxm5")),
    "h100-pcie": GpuSpec(
        "h100-pcie", "NVIDIA H100 PCIe", "H100 PCIe 80GB",
        # datasheet: 1,513 / 756 TFLOP/s with sparsity, FP32 51 TFLOP/s, 2 TB/s
        {"float16": 756.5, "bfloat16": 756.5, "tf32": 378.0}, 51.0, 2.0, 227 * KB, "[H100]"),
    "h100-nvl": GpuSpec(
        "h100-nvl", "NVIDIA H100 NVL", "H100 NVL 94GB",
        # datasheet: 1,671 / 835 TFLOP/s with sparsity, FP32 60 TFLOP/s, 3.9 TB/s
        {"float16": 835.5, "bfloat16": 835.5, "tf32": 417.5}, 60.0, 3.9, 227 * KB, "[H100]"),
    "h200": GpuSpec(
        "h200", "NVIDIA H200", "H200 SXM 141GB",
        {"float16": 989.4, "bfloat16": 989.4, "tf32": 494.7}, 66.9, 4.8, 227 * KB, "[H200]",
        aliases=("h200-sxm",)),
    "a100-sxm-80gb": GpuSpec(
        "a100-sxm-80gb", "NVIDIA A100-SXM4-80GB", "A100 SXM4 80GB",
        {"float16": 312.0, "bfloat16": 312.0, "tf32": 156.0}, 19.5, 2.039, 163 * KB, "[A100]",
        aliases=("a100", "a100-sxm")),
    "a100-sxm-40gb": GpuSpec(
        "a100-sxm-40gb", "NVIDIA A100-SXM4-40GB", "A100 SXM4 40GB",
        {"float16": 312.0, "bfloat16": 312.0, "tf32": 156.0}, 19.5, 1.555, 163 * KB, "[A100]"),
    "a100-pcie-80gb": GpuSpec(
        "a100-pcie-80gb", "NVIDIA A100 80GB PCIe", "A100 PCIe 80GB",
        {"float16": 312.0, "bfloat16": 312.0, "tf32": 156.0}, 19.5, 1.935, 163 * KB, "[A100]"),
    "a100-pcie-40gb": GpuSpec(
        "a100-pcie-40gb", "NVIDIA A100-PCIE-40GB", "A100 PCIe 40GB",
        {"float16": 312.0, "bfloat16": 312.0, "tf32": 156.0}, 19.5, 1.555, 163 * KB, "[A100]"),
}

DEFAULT_GPU = "h100-sxm"


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", " ").replace("-", " ")


def find_gpu(name: str | None) -> GpuSpec | None:
    """The spec for a --gpu key, alias or device name (spaces or underscores); None if unknown."""
    if not name:
        return None
    wanted = _norm(name)
    for spec in GPUS.values():
        if wanted in {_norm(spec.key), _norm(spec.device_name), *(_norm(a) for a in spec.aliases)}:
            return spec
    return None


def current_gpu() -> tuple[str | None, GpuSpec | None]:
    """(torch's device name, its spec or None) for the current CUDA device; (None, None) without one."""
    import torch

    if not torch.cuda.is_available():
        return None, None
    name = torch.cuda.get_device_name()
    return name, find_gpu(name)


def resolve_gpu(name: str | None = None) -> tuple[str, GpuSpec | None]:
    """The GPU a plan is for: ``name`` if given, else the current device, else the default H100.

    Returns ``(tile-table device name, spec)``; the spec is None for a GPU without peaks here
    (then no roofline is drawn, but its tile table is still used).
    """
    if name:
        spec = find_gpu(name)
        if spec is None:
            known = ", ".join(sorted(GPUS))
            raise ValueError(f"--gpu: no peak figures for {name!r}; known: {known} "
                             f"(or their torch device names)")
        return spec.table_name, spec
    device, spec = current_gpu()
    if device is not None:
        return device.replace(" ", "_"), spec
    spec = GPUS[DEFAULT_GPU]
    return spec.table_name, spec

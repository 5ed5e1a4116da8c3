"""The kernels, each declared in one place.

A :class:`Kernel` subclass in the ``mcconv/ops/`` module of its operation states everything the
host needs about one ``@triton.jit`` function of ``kernels/``: its name (also its tile table's
folder, ``autotune_configs/<name>/``), the operation it serves, when it is the one to run, the
features that key its tile table, the extents that cap its blocks, its grid and its arguments.
Dispatch, planning, ``explain``, tuning, ``inspect`` and the native-compile test all read
:data:`KERNELS` instead of keeping lists of their own, so a new kernel is its device code, its
declaration and its ``candidates.json``.
"""
from typing import Mapping

# The operations, each with its own operands (see mcconv/ops/):
FORWARD = "forward"  # y = act(conv(x, w) + bias + residual)
INPUT_GRAD = "input_grad"  # dL/dx from dL/dz and w
WEIGHT_GRAD = "weight_grad"  # dL/dw from dL/dz and x
BIAS_ACT_GRAD = "bias_act_grad"  # dL/dz = dL/dy * act'(.) and/or dL/dbias
OPERATIONS = (FORWARD, INPUT_GRAD, WEIGHT_GRAD, BIAS_ACT_GRAD)

KERNELS: dict = {}  # name -> Kernel, in registration (= dispatch priority) order


class Kernel:
    """A kernel's declaration; subclasses override what differs.

    ``applies`` is the dispatch rule: for an operation, the first registered kernel whose rule
    holds runs (register specialised kernels before the general one). ``arguments`` returns
    the scalar arguments after the operation's pointers, in the kernel's signature order, and
    the constexprs derived from the call (the tile configuration is added by the plan).
    """

    name: str
    operation: str
    jit_name: str  # the @triton.jit function in mcconv._kernels
    table: str | None = None  # tile-table folder when another kernel's tables serve (default: name)
    uses_dot = True  # tensor-core kernel (tl.dot): block sizes >= 16, DOT_PRECISION
    about = ""

    @property
    def table_name(self) -> str:
        return self.table or self.name

    def jit(self):
        """The @triton.jit function (kernels are imported on first use, so TRITON_INTERPRET can be set late)."""
        from mcconv import _kernels

        return getattr(_kernels, self.jit_name)

    def applies(self, spec) -> bool:
        return True

    def features(self, spec) -> tuple:
        """(M, N, R) of the tile-table key: output rows, output columns, reduction length."""
        raise NotImplementedError

    def limits(self, spec) -> dict:
        """Block name -> the problem's extent along it (blocks are capped at its next power of two)."""
        raise NotImplementedError

    def grid(self, spec, config: Mapping, split: int = 1) -> tuple:
        raise NotImplementedError

    def arguments(self, spec, strides: Mapping, split: int = 1) -> tuple[tuple, dict]:
        """(scalar arguments, constexprs) for operand strides keyed by operand name."""
        raise NotImplementedError

    def tile_constexprs(self, spec, config: Mapping) -> dict:
        """Constexprs that follow from the tile configuration (``config`` is empty under
        autotune, whose blocks are chosen at launch: return the values valid for any blocks)."""
        return {}

    def pointers(self, *operands) -> tuple:
        """The kernel's pointer arguments from the operation's operands (the same, unless a kernel
        serves another operation's signature)."""
        return operands

    def split(self, spec, config: Mapping, sm_count: int | None) -> int:
        """Programs sharing one reduction (split reductions only; 1 otherwise), for a GPU of
        ``sm_count`` SMs (None: no GPU, the interpreter)."""
        return 1

    def loop_trips(self, spec, config: Mapping, split: int = 1) -> list[int]:
        """Iterations of the loops around the kernel's main loop for one program (tile), innermost
        first, as its device code is written (e.g. ``[channel blocks per tap, taps]``): the trip
        counts of ``mcconv inspect``'s issue pressure over a whole reduction. ``[]``: unknown."""
        return []

    def __repr__(self) -> str:
        return f"<kernel {self.name} ({self.operation}): {self.jit_name}>"


def register(cls):
    """Class decorator: declare a kernel (an instance of ``cls``) under ``cls.name``."""
    kernel = cls()
    if kernel.name in KERNELS:
        raise ValueError(f"kernel {kernel.name!r} is declared twice")
    if kernel.operation not in OPERATIONS:
        raise ValueError(f"kernel {kernel.name!r}: unknown operation {kernel.operation!r}")
    KERNELS[kernel.name] = kernel
    return cls


def kernels_for(operation: str) -> list:
    """The kernels of an operation, in dispatch order."""
    _load()
    return [k for k in KERNELS.values() if k.operation == operation]


def dispatch(operation: str, spec) -> Kernel:
    """The kernel that runs ``operation`` for ``spec``."""
    for kernel in kernels_for(operation):
        if kernel.applies(spec):
            return kernel
    raise LookupError(f"no kernel declared for {operation} of {spec}")  # every operation has a general kernel


def table_names() -> list[str]:
    """The tile tables the kernels read (autotune_configs/<name>/), sorted."""
    _load()
    return sorted({k.table_name for k in KERNELS.values()})


def get(name: str) -> Kernel:
    """A kernel by name; raises ValueError naming the known ones."""
    _load()
    try:
        return KERNELS[name]
    except KeyError:
        raise ValueError(f"kernel: expected one of {sorted(KERNELS)}, got {name!r}") from None


def _load() -> None:
    from . import ops  # noqa: F401 - importing the operations registers their kernels

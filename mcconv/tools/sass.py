"""Static analysis of a compiled Triton kernel: SASS loops, tensor-core use, loads, occupancy, issue pressure.

:func:`analyze` takes a :class:`mcconv.tools.compile.Compiled` (or :func:`build_report` the raw
texts) and returns a :class:`KernelReport`:

- the SASS parsed into instructions (address, predicate, opcode, operands, branch target,
  source line from nvdisasm's ``-g`` annotations), basic blocks and natural loops (back edges
  to a dominating header: the jump back from an out-of-line retry block that ptxas puts after
  ``EXIT`` is no loop, nor is the unreachable ``BRA self`` at the end), nested by containment;
- the tensor-core instruction and shape (``HGMMA.64x128x16`` -> wgmma m64n128k16,
  ``HMMA.16816`` -> mma.sync m16n8k16), cross-checked against the PTX;
- the *main loop*: the innermost loop holding MMAs, else the innermost loop with global loads
  and float math; its instruction mix by class (:data:`OPCODE_CLASSES`), its global loads
  (cp.async ``LDGSTS``, TMA ``UTMALDG``/``UBLKCP``, synchronous ``LDG``; width in bytes), each
  attributed to the ``tl.dot`` operand it feeds (A, B) by source line, via the TTGIR;
- pipeline buffers: the leading dimension of the TTGIR shared-memory allocations
  (``ttg.local_alloc ... !ttg.memdesc<3x128x64xf16, ...>``) that feed the dots;
- registers, spills and shared memory, and occupancy on the target (:data:`TARGET_LIMITS`);
- issue pressure: the cycles the SM's four schedulers need to issue one main-loop iteration
  of all warps over the cycles the tensor cores need for that iteration's MMAs at their dense
  peak (above 1 the loop is bound by instruction issue, not by the tensor cores), and the same
  over a whole loop nest (:meth:`KernelReport.nest_pressure`).

Everything is static: instruction counts are per pass through the code, not measured.

Command line (compiles, so TRITON_INTERPRET must be unset)::

    python -m mcconv.tools.sass --reference [--target sm_90 sm_80] [--json] [--save DIR]

analyses the reference GEMM (``kernels/matmul_reference.py``); exit status 77 with a
``SKIP: reason`` line when this triton cannot compile for NVIDIA GPUs.
"""
from __future__ import annotations

import math
import os
import re
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Sequence

__all__ = ["TARGET_LIMITS", "OPCODE_CLASSES", "TargetLimits", "Instruction", "BasicBlock", "Loop", "SassFunction",
           "MmaInfo", "LoadInfo", "MainLoop", "Occupancy", "NestPressure", "KernelReport", "parse_sass",
           "classify", "access_width", "mma_info", "ptx_mma_shapes", "local_memory_bytes", "occupancy",
           "ttgir_operands", "build_report", "analyze", "issue_memory_ratio", "reference_kernel",
           "reference_launch", "main"]

# ------------------------------------------------------------------------------- per-target constants


@dataclass(frozen=True)
class TargetLimits:
    """What one SM of a compute capability offers (per SM unless named per CTA)."""

    name: str
    regs_per_sm: int
    regs_per_cta: int
    max_regs_per_thread: int
    reg_alloc_unit: int  # registers, allocated per warp
    sub_partitions: int  # registers are split evenly between them
    max_warps_per_sm: int
    max_ctas_per_sm: int
    smem_per_sm: int  # bytes, at the largest shared-memory carve-out
    smem_per_cta: int  # bytes a CTA may use (dynamic, opt-in maximum)
    smem_reserved_per_cta: int  # bytes the system reserves in every CTA's shared memory
    smem_alloc_unit: int  # bytes
    mma_flop_per_clock: dict  # dense tensor-core FLOP per SM per clock by operand class


# Sources: CUDA C++ Programming Guide, "Compute Capabilities", table "Technical Specifications per
# Compute Capability" (registers, warps, CTAs and shared memory per SM and per block, 1 KiB
# reserved shared memory per block); allocation units and sub-partitions as in the CUDA
# toolkit's cuda_occupancy.h (cudaOccRegAllocationGranularity, cudaOccSMemAllocationGranularity,
# cudaOccSubPartitionsPerMultiprocessor). Tensor-core peaks: the dense figures of NVIDIA's H100
# SXM and A100 datasheets / architecture whitepapers divided by SMs x boost clock (H100: 989.4
# TFLOP/s fp16 = 132 SMs x 1.83 GHz x 4096; A100: 312 TFLOP/s = 108 x 1.41 GHz x 2048).
TARGET_LIMITS = {
    90: TargetLimits(name="sm_90 (H100)", regs_per_sm=65536, regs_per_cta=65536, max_regs_per_thread=255,
                     reg_alloc_unit=256, sub_partitions=4, max_warps_per_sm=64, max_ctas_per_sm=32,
                     smem_per_sm=228 * 1024, smem_per_cta=227 * 1024, smem_reserved_per_cta=1024,
                     smem_alloc_unit=128,
                     mma_flop_per_clock={"f16": 4096, "tf32": 2048, "f8": 8192, "i8": 8192}),
    80: TargetLimits(name="sm_80 (A100)", regs_per_sm=65536, regs_per_cta=65536, max_regs_per_thread=255,
                     reg_alloc_unit=256, sub_partitions=4, max_warps_per_sm=64, max_ctas_per_sm=32,
                     smem_per_sm=164 * 1024, smem_per_cta=163 * 1024, smem_reserved_per_cta=1024,
                     smem_alloc_unit=128,
                     mma_flop_per_clock={"f16": 2048, "tf32": 1024, "i8": 4096}),
}


def _limits(target) -> TargetLimits:
    arch = getattr(target, "arch", target)
    if isinstance(arch, str):
        arch = int(re.sub(r"\D", "", arch) or 0)
    if arch not in TARGET_LIMITS:
        raise ValueError(f"no SM limits for compute capability {arch}; known: {sorted(TARGET_LIMITS)}")
    return TARGET_LIMITS[arch]


# ------------------------------------------------------------------------------- opcode classes

# The instruction-mix classifier: one table, matched against an opcode's base name (the part
# before the first '.', e.g. LDGSTS for LDGSTS.E.BYPASS.128). Exact names first, in this order;
# then any other opcode starting with 'U' (uniform datapath: one value per warp, issued like any
# instruction) is "uniform"; everything else is "other" (moves, constants, special registers,
# shuffles, votes, local memory, NOPs).
OPCODE_CLASSES = (
    ("mma", ("HGMMA", "QGMMA", "IGMMA", "BGMMA", "HMMA", "IMMA", "DMMA", "BMMA",
             "UTCHMMA", "UTCQMMA", "UTCIMMA", "UTCOMMA")),
    # global memory, including cp.async (LDGSTS), TMA and bulk copies (UTMA*, UBLK*) and the
    # generic LD/ST/ATOM that Triton does not emit for shared memory.
    ("global", ("LDG", "LDGSTS", "LDGMC", "STG", "ATOMG", "ATOM", "RED", "REDG", "LD", "ST", "CCTL",
                "UTMALDG", "UTMASTG", "UTMAREDG", "UTMAPF", "UTMACCTL", "UBLKCP", "UBLKPF", "UBLKRED")),
    ("shared", ("LDS", "STS", "LDSM", "STSM", "ATOMS", "LDTM", "STTM")),
    # branches, barriers, fences and the waits of asynchronous copies and wgmma (DEPBAR,
    # LDGDEPBAR, WARPGROUP.DEPBAR/ARRIVE, mbarrier SYNCS.*).
    ("control", ("BRA", "BRX", "JMP", "JMX", "CALL", "RET", "EXIT", "BAR", "BSSY", "BSYNC", "BREAK", "BMOV",
                 "WARPSYNC", "DEPBAR", "LDGDEPBAR", "MEMBAR", "FENCE", "ERRBAR", "YIELD", "NANOSLEEP",
                 "WARPGROUP", "SYNCS", "ARRIVES", "UCGABAR_ARV", "UCGABAR_WAIT", "ACQBULK", "KILL", "BPT",
                 "USETMAXREG")),
    ("integer", ("IADD3", "IADD", "IADD32I", "IMAD", "IMUL", "IMNMX", "IABS", "ISETP", "ISCADD", "LEA",
                 "LOP3", "LOP", "SHF", "SHL", "SHR", "SEL", "SGXT", "BMSK", "BREV", "FLO", "POPC", "PRMT",
                 "IDP", "VIADD", "VIMNMX", "VIMNMX3", "VIADDMNMX", "PLOP3", "ICMP", "BFE", "BFI", "XMAD")),
    ("float", ("FADD", "FADD32I", "FMUL", "FMUL32I", "FFMA", "FFMA32I", "FMNMX", "FMNMX3", "FSETP", "FSET",
               "FSEL", "FCHK", "FRND", "FSWZADD", "MUFU", "FADD2", "FMUL2", "FFMA2",
               "HADD2", "HMUL2", "HFMA2", "HSETP2", "HSET2", "HMNMX2", "HADD2_32I", "HMUL2_32I", "HFMA2_32I",
               "DADD", "DMUL", "DFMA", "DSETP", "DMNMX", "F2F", "F2I", "I2F", "F2FP", "I2FP", "F2IP")),
    ("uniform", ("S2UR", "R2UR", "LDCU")),
)
CLASS_NAMES = ("mma", "global", "shared", "integer", "uniform", "float", "control", "other")
_CLASS_OF = {name: cls for cls, names in OPCODE_CLASSES for name in names}


def classify(opcode: str) -> str:
    """The instruction class of a SASS opcode (``"IADD3"``, ``"LDGSTS.E.BYPASS.128"``): see OPCODE_CLASSES."""
    base = opcode.split(".", 1)[0]
    cls = _CLASS_OF.get(base)
    if cls:
        return cls
    return "uniform" if base.startswith("U") else "other"


_WIDTH_MODIFIERS = {"U8": 1, "S8": 1, "U16": 2, "S16": 2, "32": 4, "64": 8, "128": 16, "256": 32}


def access_width(opcode: str) -> int:
    """Bytes per thread of a memory instruction (LDG/STG/LDGSTS/LDS/STS/LDL/STL): ``.128`` -> 16, none -> 4.

    Only exact modifiers count: the L2 hint ``LTC128B`` of ``LDGSTS.E.BYPASS.LTC128B.128`` is no width.
    """
    for modifier in reversed(opcode.split(".")[1:]):
        if modifier in _WIDTH_MODIFIERS:
            return _WIDTH_MODIFIERS[modifier]
    return 4


# ------------------------------------------------------------------------------- SASS parsing

@dataclass
class Instruction:
    """One SASS instruction. ``target``: branch target address when it is known."""

    address: int
    opcode: str
    operands: str = ""
    predicate: str = ""  # "@P0", "@!P1", "@!PT" (never executes, still issued), "" when unconditional
    target: int | None = None
    line: tuple | None = None  # (file, line) of the source, from nvdisasm -g

    @property
    def base(self) -> str:
        return self.opcode.split(".", 1)[0]

    @property
    def klass(self) -> str:
        return classify(self.opcode)

    @property
    def jumps(self) -> bool:
        """A branch for the control flow: BRA and kin, and ``CALL.REL.NOINC`` (a jump that pushes
        no return address: how sm_80 code leaves a loop)."""
        return self.base in _BRANCHES or self.opcode.startswith("CALL.REL.NOINC")

    @property
    def never_executes(self) -> bool:
        return self.predicate in ("@!PT", "@!UPT")

    @property
    def unconditional(self) -> bool:
        return self.predicate in ("", "@PT", "@UPT")

    def __str__(self) -> str:
        predicate = f"{self.predicate} " if self.predicate else ""
        return f"/*{self.address:04x}*/ {predicate}{self.opcode} {self.operands}".rstrip()


@dataclass
class BasicBlock:
    index: int
    first: int  # index of its first instruction in SassFunction.instructions
    last: int  # index of its last instruction (inclusive)
    successors: list = field(default_factory=list)
    predecessors: list = field(default_factory=list)


@dataclass
class Loop:
    """A natural loop: the header block, every block of its body (header included), nesting."""

    index: int
    header: int
    blocks: frozenset
    latches: tuple  # blocks whose branch goes back to the header
    start: int = 0  # lowest / highest instruction address in the body
    end: int = 0
    parent: int | None = None
    children: list = field(default_factory=list)
    depth: int = 0  # 0 for an outermost loop


_INSTRUCTION_RE = re.compile(r"^\s*/\*([0-9a-fA-F]+)\*/\s+(.*?)\s*;")
_PREDICATE_RE = re.compile(r"^(@!?U?P(?:T|\d+))\s+")
_OPCODE_RE = re.compile(r"^([A-Z][A-Z0-9_]*(?:\.[A-Za-z0-9_]+)*)\s*(.*)$")
_LINE_RE = re.compile(r'//##\s*File\s+"([^"]+)",\s+line\s+(\d+)')
_LABEL_RE = re.compile(r"^\s*([.$\w]+):\s*$")
_FUNCTION_RE = re.compile(r"^\s*(?:Function\s*:\s*(\S+)|\.text\.([\w$.]+):)\s*$")
_LABEL_TARGET_RE = re.compile(r"`\(([.$\w]+)\)")
_HEX_TARGET_RE = re.compile(r"\b0x([0-9a-fA-F]+)\b")
_BRANCHES = {"BRA", "BRX", "JMP", "JMX"}
_ENDS_BLOCK = _BRANCHES | {"RET", "EXIT", "CALL", "KILL"}


class SassFunction:
    """One function's SASS: instructions, basic blocks, natural loops.

    Reads nvdisasm's output (labels ``.L_x_N``, targets as `` `(.L_x_N) ``, ``//## File`` line
    annotations) and ``cuobjdump -sass`` output (targets as addresses).
    """

    def __init__(self, name: str, instructions: list, labels: dict | None = None):
        self.name = name
        self.instructions = instructions
        self.labels = labels or {}
        self._by_address = {ins.address: i for i, ins in enumerate(instructions)}
        self.blocks = self._build_blocks()
        self.reachable = set()  # blocks reachable from the entry (filled by _find_loops)
        self.loops = self._find_loops()

    # -- structure

    def _build_blocks(self) -> list:
        ins = self.instructions
        if not ins:
            return []
        leaders = {0}
        for i, x in enumerate(ins):
            if x.target is not None and x.target in self._by_address:
                leaders.add(self._by_address[x.target])
            if x.base in _ENDS_BLOCK and i + 1 < len(ins):
                leaders.add(i + 1)
        starts = sorted(leaders)
        blocks = [BasicBlock(b, s, (starts[b + 1] if b + 1 < len(starts) else len(ins)) - 1)
                  for b, s in enumerate(starts)]
        block_at = {s: b for b, s in enumerate(starts)}
        for block in blocks:
            last = ins[block.last]
            succ = []
            if last.jumps and not last.never_executes:
                if last.target is not None and last.target in self._by_address:
                    succ.append(block_at[self._by_address[last.target]])
                falls = not last.unconditional
            elif last.base in ("EXIT", "RET", "KILL"):
                falls = not last.unconditional or last.never_executes
            else:
                falls = True
            if falls and block.index + 1 < len(blocks):
                succ.append(block.index + 1)
            block.successors = list(dict.fromkeys(succ))
        for block in blocks:
            for s in block.successors:
                blocks[s].predecessors.append(block.index)
        return blocks

    def _find_loops(self) -> list:
        blocks = self.blocks
        if not blocks:
            return []
        # Blocks reachable from the entry; the rest (the trap `BRA self` after EXIT, padding) is dead code.
        reach, work = {0}, [0]
        while work:
            for s in blocks[work.pop()].successors:
                if s not in reach:
                    reach.add(s)
                    work.append(s)
        self.reachable = reach
        # Dominators, iteratively (a few hundred blocks at most).
        dom = {b: set(reach) for b in reach}
        dom[0] = {0}
        changed = True
        while changed:
            changed = False
            for b in sorted(reach - {0}):
                preds = [p for p in blocks[b].predecessors if p in reach]
                new = set.intersection(*(dom[p] for p in preds)) | {b} if preds else {b}
                if new != dom[b]:
                    dom[b], changed = new, True
        bodies, latches = {}, {}
        for u in sorted(reach):
            for h in blocks[u].successors:
                if h in dom[u]:  # back edge u -> h: h dominates u
                    body, work = {h, u}, ([u] if u != h else [])  # the walk stops at the header
                    while work:
                        for p in blocks[work.pop()].predecessors:
                            if p in reach and p not in body:
                                body.add(p)
                                work.append(p)
                    bodies.setdefault(h, set()).update(body)
                    latches.setdefault(h, []).append(u)
        loops = []
        for i, h in enumerate(sorted(bodies, key=lambda h: blocks[h].first)):
            body = frozenset(bodies[h])
            addrs = [self.instructions[blocks[b].first].address for b in body] + \
                    [self.instructions[blocks[b].last].address for b in body]
            loops.append(Loop(i, h, body, tuple(latches[h]), min(addrs), max(addrs)))
        for loop in loops:  # parent: the smallest other loop whose body holds this one's
            outer = [o for o in loops if o is not loop and loop.blocks < o.blocks]
            if outer:
                loop.parent = min(outer, key=lambda o: len(o.blocks)).index
                loops[loop.parent].children.append(loop.index)
        for loop in loops:
            depth, p = 0, loop.parent
            while p is not None:
                depth, p = depth + 1, loops[p].parent
            loop.depth = depth
        return loops

    # -- queries

    def block_instructions(self, blocks) -> list:
        """The instructions of a set of blocks, in address order."""
        out = []
        for b in sorted(blocks):
            out.extend(self.instructions[self.blocks[b].first:self.blocks[b].last + 1])
        return out

    def loop_instructions(self, loop: Loop, own: bool = False) -> list:
        """A loop's instructions; ``own``: without those of its child loops."""
        blocks = set(loop.blocks)
        if own:
            for c in loop.children:
                blocks -= self.loops[c].blocks
        return self.block_instructions(blocks)


def parse_sass(text: str) -> dict:
    """SASS text (nvdisasm or cuobjdump -sass) -> {function name: SassFunction}, in order of appearance."""
    functions, current, instructions, labels, pending = {}, None, [], {}, []
    line_info = None

    def finish():
        if current is not None or instructions:
            for ins in instructions:  # resolve label targets now that every label is known
                if isinstance(ins.target, str):
                    ins.target = labels.get(ins.target)
            functions[current or "?"] = SassFunction(current or "?", list(instructions), dict(labels))

    for raw in text.splitlines():
        fn = _FUNCTION_RE.match(raw)
        if fn:
            name = fn.group(1) or fn.group(2)
            if name != current:
                finish()
                current, instructions, labels, pending, line_info = name, [], {}, [], None
            continue
        src = _LINE_RE.search(raw)
        if src and "/*" not in raw.split("//##")[0]:
            line_info = (src.group(1), int(src.group(2)))
            continue
        match = _INSTRUCTION_RE.match(raw)
        if not match:
            label = _LABEL_RE.match(raw)
            if label and not raw.strip().startswith((".text", ".section")):
                pending.append(label.group(1))
            continue
        address, body = int(match.group(1), 16), match.group(2)
        predicate = ""
        pm = _PREDICATE_RE.match(body)
        if pm:
            predicate, body = pm.group(1), body[pm.end():]
        om = _OPCODE_RE.match(body)
        if not om:
            continue
        opcode, operands = om.group(1), om.group(2).strip()
        target = None
        if opcode.split(".", 1)[0] in _BRANCHES | {"CALL"}:
            lm = _LABEL_TARGET_RE.search(operands)
            hm = _HEX_TARGET_RE.search(operands)
            target = lm.group(1) if lm else (int(hm.group(1), 16) if hm else None)
        for label in pending:
            labels[label] = address
        pending = []
        instructions.append(Instruction(address, opcode, operands, predicate, target, line_info))
    finish()
    return functions


def local_memory_bytes(sass_text: str) -> tuple:
    """(bytes stored, bytes loaded) by the STL/LDL instructions of a SASS listing: ptxas's spill figures."""
    stores = loads = 0
    for function in parse_sass(sass_text).values():
        for ins in function.instructions:
            if ins.base == "STL":
                stores += access_width(ins.opcode)
            elif ins.base == "LDL":
                loads += access_width(ins.opcode)
    return stores, loads


# ------------------------------------------------------------------------------- tensor cores

@dataclass(frozen=True)
class MmaInfo:
    """A tensor-core instruction. ``flop_per_warp_instruction``: FLOP one warp's instruction stands for
    (a wgmma instruction of a warpgroup is issued by its 4 warps and computes 2*m*n*k once)."""

    kind: str  # "wgmma" or "mma.sync"
    opcode: str
    m: int
    n: int
    k: int
    operand_class: str  # "f16" (fp16/bf16), "tf32", "f8", "i8", "f64"

    @property
    def shape(self) -> str:
        return f"m{self.m}n{self.n}k{self.k}"

    @property
    def flop_per_warp_instruction(self) -> float:
        flop = 2 * self.m * self.n * self.k
        return flop / 4 if self.kind == "wgmma" else flop


def mma_info(opcode: str) -> MmaInfo | None:
    """Kind, shape and operand class of a SASS tensor-core opcode; None for anything else.

    ``HGMMA.64x128x16.F32`` -> wgmma m64n128k16 f16; ``HGMMA.64x64x8.F32.TF32`` -> tf32;
    ``HMMA.16816.F32.BF16`` -> mma.sync m16n8k16 f16; ``HMMA.1688.F32.TF32`` -> m16n8k8 tf32;
    ``IMMA.16832.S8.S8`` -> m16n8k32 i8.
    """
    parts = opcode.split(".")
    base, mods = parts[0], set(parts[1:])
    if base in ("HGMMA", "QGMMA", "IGMMA", "BGMMA"):
        shape = re.search(r"\.(\d+)x(\d+)x(\d+)", opcode)
        if not shape:
            return None
        m, n, k = map(int, shape.groups())
        cls = {"QGMMA": "f8", "IGMMA": "i8", "BGMMA": "i1"}.get(base, "tf32" if "TF32" in mods else "f16")
        return MmaInfo("wgmma", opcode, m, n, k, cls)
    if base in ("HMMA", "IMMA", "DMMA", "BMMA") and len(parts) > 1:
        digits = parts[1]
        if not digits.isdigit():
            return None
        if len(digits) == 3:  # 884: m8n8k4
            m, n, k = (int(d) for d in digits)
        else:  # 16816, 1688, 1684, 16832: m16 n8 k<rest>
            m, n, k = int(digits[:2]), int(digits[2]), int(digits[3:])
        cls = {"IMMA": "i8", "DMMA": "f64", "BMMA": "i1"}.get(base)
        if cls is None:
            cls = "tf32" if "TF32" in mods else ("f8" if mods & {"E4M3", "E5M2"} else "f16")
        return MmaInfo("mma.sync", opcode, m, n, k, cls)
    return None


_PTX_MMA_RE = re.compile(r"\b(wgmma\.mma_async|mma\.sync)\.(?:sync\.)?aligned\.(m\d+n\d+k\d+)\.([\w.]+)")


def ptx_mma_shapes(ptx: str) -> dict:
    """{"wgmma m64n128k16": count, "mma.sync m16n8k16": count} from the PTX."""
    counts = Counter()
    for kind, shape, _ in _PTX_MMA_RE.findall(ptx or ""):
        counts[f"{'wgmma' if kind.startswith('wgmma') else 'mma.sync'} {shape}"] += 1
    return dict(counts)


# ------------------------------------------------------------------------------- TTGIR: dot operands

_LOC_DEF_RE = re.compile(r"^(#loc\d*)\s*=\s*loc\((.*)\)\s*$")
_LOC_USE_RE = re.compile(r"loc\((#loc\d*|\"[^\"]*\":\d+:\d+)\)\s*$")
_SSA = r"%[\w$.-]+"
_RESULT_RE = re.compile(rf"^\s*({_SSA})(?::\d+)?\s*=\s*([\w.]+)\s*(.*)$")
_MEMDESC_RE = re.compile(r"!ttg\.memdesc<((?:\d+x)+)([a-z]\w*)")
_DTYPE_BYTES = {"f16": 2, "bf16": 2, "f32": 4, "tf32": 4, "f64": 8, "i64": 8, "i32": 4, "i16": 2, "i8": 1, "i1": 1}
_VIEWS = ("ttg.memdesc_index", "ttg.memdesc_subview", "ttg.memdesc_subslice", "ttg.memdesc_trans",
          "ttg.memdesc_reinterpret", "ttg.memdesc_reshape", "ttg.local_load", "ttg.convert_layout",
          "tt.fp_to_fp", "arith.extf", "arith.truncf", "tt.trans")
_DOTS = ("tt.dot", "ttng.warp_group_dot", "tt.dot_scaled", "ttng.tc_gen5_mma")


def _ssa(name: str) -> str:
    return name.split("#", 1)[0]


def _parse_locs(ttgir: str) -> dict:
    raw = {}
    for line in ttgir.splitlines():
        m = _LOC_DEF_RE.match(line.strip())
        if m:
            raw[m.group(1)] = m.group(2)
    resolved = {}

    def resolve(expr, depth=0):
        expr = expr.strip()
        if depth > 50:
            return None
        if expr.startswith("#loc"):
            if expr not in resolved:
                resolved[expr] = resolve(raw.get(expr, ""), depth + 1)
            return resolved[expr]
        m = re.match(r'^"([^"]*)":(\d+):\d+', expr)
        if m:
            return (m.group(1), int(m.group(2)))
        m = re.match(r"^callsite\((#loc\d*)", expr)  # the callee's position: where the op really is
        if m:
            return resolve(m.group(1), depth + 1)
        m = re.match(r'^"[^"]*"\((.*)\)$', expr)  # a named location: "a"(#loc22)
        if m:
            return resolve(m.group(1), depth + 1)
        m = re.match(r"^fused\[(#loc\d*|\"[^\"]*\":\d+:\d+)", expr)
        if m:
            return resolve(m.group(1), depth + 1)
        return None

    return {name: resolve(name) for name in raw} | {"__resolve__": resolve}


def ttgir_operands(ttgir: str) -> dict:
    """Where each ``tl.dot`` operand comes from, read from the TTGIR.

    Returns ``{"operands": {"A": {...}, "B": {...}}, "allocations": [...]}``; each operand has
    ``kind`` ("cp.async", "tma", "sync" or "?"), ``lines`` (source (file, line) of the loads that
    fill it), ``buffers`` (leading dimensions of the shared-memory allocation that holds it
    beyond the tile's two: the pipeline depth; 0 when it is not staged in shared memory) and
    ``allocation`` (its name). Allocations: name, shape, dtype, bytes.
    """
    locs = _parse_locs(ttgir or "")
    resolve = locs.pop("__resolve__", lambda e: None)
    parent, allocs, writers, loads, dots = {}, {}, {}, {}, []
    for line in (ttgir or "").splitlines():
        loc_m = _LOC_USE_RE.search(line)
        loc = resolve(loc_m.group(1)) if loc_m else None
        if "iter_args(" in line:  # loop-carried values: the block argument stands for its initial value
            for arg, init in re.findall(rf"({_SSA})\s*=\s*({_SSA})", line.split("iter_args(", 1)[1]):
                parent.setdefault(_ssa(arg), _ssa(init))
        m = _RESULT_RE.match(line)
        op, rest, result = (m.group(2), m.group(3), _ssa(m.group(1))) if m else (None, line.strip(), None)
        if op is None:
            m2 = re.match(r"^\s*([\w.]+)\s+(.*)$", line)
            if m2:
                op, rest = m2.group(1), m2.group(2)
        if op is None:
            continue
        operands = [_ssa(x) for x in re.findall(_SSA, rest.split(":", 1)[0])]
        if op == "ttg.local_alloc" and result:
            md = _MEMDESC_RE.findall(rest)
            if md:
                dims = tuple(int(d) for d in md[-1][0].rstrip("x").split("x"))
                dtype = md[-1][1]
                allocs[result] = {"name": result.lstrip("%"), "shape": dims, "dtype": dtype,
                                  "bytes": math.prod(dims) * _DTYPE_BYTES.get(dtype, 4)}
                if operands:  # initialised from registers: a synchronous load path
                    writers.setdefault(result, []).append(("sync", loc, operands[0]))
        elif op in _VIEWS and result and operands:
            parent[result] = operands[0]
        elif op == "tt.load" and result:
            loads[result] = loc
        elif op.endswith("async_copy_global_to_local") and len(operands) >= 2:
            kind = "tma" if "tma" in op else "cp.async"
            writers.setdefault(operands[1], []).append((kind, loc, None))
        elif "async_tma" in op and "global_to_local" in op:
            # ttng.async_tma_copy_global_to_local %desc[%coords] %dst, %barrier
            after = re.sub(r"\[[^\]]*\]", "", rest.split(":", 1)[0])
            ops = [_ssa(x) for x in re.findall(_SSA, after)]
            if len(ops) >= 2:
                writers.setdefault(ops[1], []).append(("tma", loc, None))
        elif op == "ttg.local_store" and len(operands) >= 2:
            writers.setdefault(operands[1], []).append(("sync", loc, operands[0]))
        elif op in _DOTS and len(operands) >= 2:
            dots.append((operands[0], operands[1]))

    def root(value, seen=None):
        seen = seen or set()
        while value in parent and value not in seen:
            seen.add(value)
            value = parent[value]
        return value

    # Writers recorded against views count for the allocation they view.
    by_root = {}
    for dst, items in writers.items():
        by_root.setdefault(root(dst), []).extend(items)

    operands_out = {}
    for label, index in (("A", 0), ("B", 1)):
        kinds, lines, buffers, alloc_names = set(), set(), 0, set()
        for dot in dots:
            r = root(dot[index])
            if r in allocs:
                alloc = allocs[r]
                alloc_names.add(alloc["name"])
                buffers = max(buffers, math.prod(alloc["shape"][:-2]) if len(alloc["shape"]) > 2 else 1)
                for kind, loc, value in by_root.get(r, []):
                    kinds.add(kind)
                    src = loads.get(root(value)) if value else None
                    for where in (loc, src):
                        if where:
                            lines.add(where)
            elif r in loads:  # a register operand straight from tl.load
                kinds.add("sync")
                if loads[r]:
                    lines.add(loads[r])
        if dots:
            operands_out[label] = {"kind": "+".join(sorted(kinds)) or "?", "lines": sorted(lines),
                                   "buffers": buffers, "allocation": ",".join(sorted(alloc_names)) or None}
    return {"operands": operands_out, "allocations": list(allocs.values()), "dots": len(dots)}


# ------------------------------------------------------------------------------- occupancy

@dataclass(frozen=True)
class Occupancy:
    """CTAs and warps resident per SM and what limits them.

    ``limits``: the CTAs per SM each resource alone would allow ("warps", "ctas", "regs", "smem");
    ``limiters``: those at the minimum.
    """

    ctas_per_sm: int
    warps_per_sm: int
    limiters: tuple
    limits: dict
    regs_per_warp: int  # allocated (rounded up to the allocation unit)
    smem_per_cta: int  # allocated: dynamic + static/reserved, rounded up to the allocation unit
    fraction: float  # warps_per_sm / max warps per SM


def occupancy(target, num_warps: int, registers: int, shared: int, static_shared: int = 0) -> Occupancy:
    """Resident CTAs per SM, as cuda_occupancy.h computes them, at the largest shared-memory carve-out.

    - registers: each warp gets ``registers * 32`` rounded up to 256; every sub-partition (4 per
      SM) holds ``regs_per_sm / 4`` and whole warps only, so warps by registers =
      4 * floor((65536 / 4) / regs_per_warp), CTAs = floor(that / num_warps);
    - shared memory: per CTA, ``shared`` (dynamic, Triton's metadata.shared) plus the 1 KiB the
      system reserves per CTA, rounded up to 128 B; CTAs = floor(smem per SM / that), 0 when
      ``shared`` exceeds the per-CTA maximum. Triton declares no static shared memory; the 1 KiB
      of static shared ptxas reports for some sm_90 kernels is that reserved window mapped into
      the kernel (its dynamic shared memory starts at 0x400), so ``static_shared`` counts only
      beyond the reservation: per CTA = shared + max(static_shared, reserved);
    - warps: floor(64 / num_warps); CTAs: 32.
    """
    lim = _limits(target)
    warp_size = 32
    regs_per_warp = math.ceil(max(registers, 1) * warp_size / lim.reg_alloc_unit) * lim.reg_alloc_unit
    # The launch check assumes every sub-partition gets the same number of warps (rounded up).
    warps_assumed = math.ceil(num_warps / lim.sub_partitions) * lim.sub_partitions
    if registers > lim.max_regs_per_thread or regs_per_warp * warps_assumed > lim.regs_per_cta:
        by_regs = 0
    else:
        warps_by_regs = (lim.regs_per_sm // lim.sub_partitions // regs_per_warp) * lim.sub_partitions
        by_regs = warps_by_regs // num_warps
    smem = shared + max(static_shared, lim.smem_reserved_per_cta)
    smem = math.ceil(smem / lim.smem_alloc_unit) * lim.smem_alloc_unit
    by_smem = 0 if shared > lim.smem_per_cta else lim.smem_per_sm // smem
    limits = {"warps": lim.max_warps_per_sm // num_warps, "ctas": lim.max_ctas_per_sm,
              "regs": by_regs, "smem": by_smem}
    ctas = min(limits.values())
    limiters = tuple(k for k, v in limits.items() if v == ctas)
    return Occupancy(ctas, ctas * num_warps, limiters, limits, regs_per_warp, smem,
                     ctas * num_warps / lim.max_warps_per_sm)


def issue_memory_ratio(warp_instructions: float, bytes_moved: float, sm_count: int, clock_hz: float,
                       bandwidth_bytes_per_s: float) -> float:
    """Issue time over memory time for a whole kernel (or any part of it).

    Issue time = warp instructions / (4 sub-partitions x SMs x clock): each sub-partition issues
    one warp instruction per clock. Memory time = bytes / bandwidth. Above 1 the kernel cannot
    reach its memory roofline: it is bound by issuing instructions.
    """
    issue_s = warp_instructions / (4 * sm_count * clock_hz)
    memory_s = bytes_moved / bandwidth_bytes_per_s
    return issue_s / memory_s if memory_s else math.inf


# ------------------------------------------------------------------------------- the report

@dataclass(frozen=True)
class LoadInfo:
    """A global load of the main loop: cp.async (LDGSTS), TMA (UTMALDG/UBLKCP) or synchronous (LDG)."""

    address: int
    opcode: str
    kind: str  # "cp.async", "tma", "sync"
    width: int | None  # bytes per thread; None for TMA (the box is in the descriptor)
    line: tuple | None
    operand: str | None  # "A", "B" (the tl.dot operand it fills, by source line) or None


@dataclass
class MainLoop:
    """The main loop: where it is, what it issues per iteration (one warp's instruction stream)."""

    start: int
    end: int
    depth: int
    instructions: int
    mma: int
    classes: dict
    loads: list
    warp_instructions: int  # instructions x num_warps: what the CTA issues per iteration
    predicated_off: int  # `@!PT` instructions among them (issued, do nothing)
    inner_loops: int  # loops nested inside (e.g. mbarrier spin-waits), counted once per iteration


@dataclass
class NestPressure:
    """Issue pressure over a whole loop nest: see :meth:`KernelReport.nest_pressure`."""

    trip_counts: list
    levels: list  # per level, innermost first: start, end, own_instructions, own_mma, executions
    peeled_iterations: int
    instructions: int  # per warp, over the nest
    mma_cycles: float | None
    pressure: float | None
    outside_instructions: int  # per warp, outside the outermost level (once per tile), not in `pressure`


@dataclass
class KernelReport:
    """Everything :func:`analyze` found; ``as_dict()`` for JSON, ``summary()`` one line, ``details()`` several."""

    name: str
    target: str
    num_warps: int
    num_stages: int
    mma_kind: str  # "wgmma", "mma.sync" or "none"
    mma_shape: str | None  # "m64n128k16"
    mma_opcode: str | None
    mma_operand_class: str | None
    ptx_mma: dict
    ptx_agrees: bool | None
    registers: int
    spill_store_bytes: int
    spill_load_bytes: int
    stack_bytes: int
    shared_bytes: int
    static_shared_bytes: int
    occupancy: Occupancy | None
    buffers: int | None
    operands: dict
    allocations: list
    loops: list
    main_loop: MainLoop | None
    issue_pressure: float | None
    mma_cycles: float | None  # tensor-core cycles of one main-loop iteration (all warps)
    notes: list
    triton: str = ""
    compile_seconds: float | None = None
    _function: SassFunction | None = field(default=None, repr=False, compare=False)

    # -- derived figures

    def warp_instructions_per_element(self, elements_per_iteration: float) -> float:
        """Warp instructions the CTA issues per output element: main-loop warp instructions per iteration
        divided by the elements one iteration of the CTA produces (or consumes: the caller's unit)."""
        if self.main_loop is None:
            raise ValueError("no main loop")
        return self.main_loop.warp_instructions / elements_per_iteration

    def nest_pressure(self, trip_counts: Sequence[int]) -> NestPressure:
        """Issue pressure over the whole reduction of one tile: the main loop and the loops around it.

        ``trip_counts``: iterations of each source loop level, innermost first (e.g. ``[channel
        blocks per tap, taps]``). Level 0 is the main SASS loop, level k its k-th enclosing SASS
        loop (natural loops, by nesting). Instructions are counted statically by where they sit:

        - the *own* instructions of level k are those in its body and not in level k-1's (for
          level 0: its whole body, any inner loop such as an mbarrier spin-wait counted once);
          they run E(k) = t_k * t_(k+1) * ... * t_(n-1) times per tile. This is where the
          software-pipelining prologue and epilogue of level k-1 sit, so they count once per
          iteration of level k, as they run;
        - peeled iterations: when level 1's own code holds MMAs (the pipeliner peeled
          iterations of the main loop), their number p = its MMA FLOP / one main-loop
          iteration's, and the main loop itself runs E(0) = (t_0 - p) * E(1) times: the MMA work
          over the nest is then exactly t_0 * ... * t_(n-1) iterations' worth (with a single
          level there is no level 1 to find them in: the main loop is taken to run t_0 times);
        - every instruction of a level counts on every iteration, also behind a branch not taken
          (over-counts skipped taps), and predicated-off ones (they take issue slots);
        - what lies outside the outermost given level (kernel prologue, epilogue, the pipelining
          prologue of a single-level nest) runs once per tile; it is reported as
          ``outside_instructions`` and not included in ``pressure``.

        Pressure = (instructions x num_warps / 4) / (MMA FLOP over the nest / peak FLOP per SM
        per clock). A trip-count list longer than the SASS nest is accepted only when the extra
        counts are 1 (a level the compiler removed); ValueError otherwise.
        """
        fn, loop = self._function, self.main_loop
        if fn is None or loop is None:
            raise ValueError("no main loop")
        trips = [int(t) for t in trip_counts]
        if not trips or any(t < 0 for t in trips):
            raise ValueError(f"trip_counts: expected one or more counts >= 0, got {list(trip_counts)}")
        chain = [self._main_loop_obj()]
        while len(chain) < len(trips) and chain[-1].parent is not None:
            chain.append(fn.loops[chain[-1].parent])
        if any(t != 1 for t in trips[len(chain):]):
            raise ValueError(f"trip_counts: {len(trips)} levels given, but the main loop has only "
                             f"{len(chain) - 1} enclosing SASS loop(s); extra levels must have trip count 1")
        trips = trips[:len(chain)]
        own = []
        for k, lvl in enumerate(chain):
            blocks = set(lvl.blocks) - (set(chain[k - 1].blocks) if k else set())
            own.append(fn.block_instructions(blocks))
        flop = [sum(self._flop(ins) for ins in level) for level in own]
        per_iteration = flop[0]
        peeled = round(flop[1] / per_iteration) if len(chain) > 1 and per_iteration else 0
        executions = []
        for k in range(len(chain)):
            e = math.prod(trips[k:])
            if k == 0:
                e = max(trips[0] - peeled, 0) * math.prod(trips[1:])
            executions.append(e)
        instructions = sum(len(level) * e for level, e in zip(own, executions))
        total_flop = sum(f * e for f, e in zip(flop, executions)) * self.num_warps
        peak = self._peak()
        cycles = total_flop / peak if peak and total_flop else None
        pressure = (instructions * self.num_warps / 4) / cycles if cycles else None
        outside = len(fn.block_instructions(fn.reachable - set(chain[-1].blocks)))  # dead code never runs
        levels = [{"start": lvl.start, "end": lvl.end, "own_instructions": len(o),
                   "own_mma": sum(1 for i in o if _is_mma(i)), "trip_count": t, "executions": e}
                  for lvl, o, t, e in zip(chain, own, trips, executions)]
        return NestPressure(trips, levels, peeled, instructions, cycles, pressure, outside)

    def _main_loop_obj(self) -> Loop:
        return next(l for l in self._function.loops
                    if l.start == self.main_loop.start and l.end == self.main_loop.end)

    def _flop(self, ins: Instruction) -> float:
        info = mma_info(ins.opcode) if _is_mma(ins) else None
        return info.flop_per_warp_instruction if info else 0.0

    def _peak(self) -> float | None:
        try:
            lim = _limits(self.target)
        except ValueError:
            return None
        return lim.mma_flop_per_clock.get(self.mma_operand_class) if self.mma_operand_class else None

    # -- output

    def as_dict(self) -> dict:
        """Every public field as plain JSON-able values (dataclasses as dicts, tuples as lists)."""
        out = {}
        for f in fields(self):
            if not f.name.startswith("_"):
                value = getattr(self, f.name)
                out[f.name] = asdict(value) if is_dataclass(value) else value
        return _jsonable(out)

    def _loads_text(self) -> str:
        loop = self.main_loop
        if not loop.loads:
            return "no global loads in loop"
        groups = {}
        for load in loop.loads:
            token = ("tma" if load.kind == "tma" else
                     f"{'cp.async' if load.kind == 'cp.async' else 'ldg'}{load.width}")
            key = load.operand or (f"L{load.line[1]}" if load.line else "?")
            groups.setdefault(key, Counter())[token] += 1
        parts = []
        for key in sorted(groups, key=lambda k: (k not in ("A", "B"), k)):
            tokens = "+".join(sorted(groups[key]))
            parts.append(f"{key} {tokens}")
        text = " ".join(parts)
        if self.buffers:
            text += f", {self.buffers} buf"
        return text

    def summary(self) -> str:
        """One line, e.g. ``wgmma m64n128k16 | A cp.async16 B cp.async16, 3 buf | 124 regs 0 spill 96 KiB | ...``."""
        mma = f"{self.mma_kind} {self.mma_shape}" if self.mma_shape else "no MMA"
        spill = self.spill_store_bytes + self.spill_load_bytes
        kib = self.shared_bytes / 1024
        res = f"{self.registers} regs {spill} spill {kib:.0f} KiB" if self.shared_bytes % 1024 == 0 else \
            f"{self.registers} regs {spill} spill {kib:.1f} KiB"
        occ = (f"{self.occupancy.ctas_per_sm} CTA/{self.occupancy.warps_per_sm} warps "
               f"({', '.join(self.occupancy.limiters)})" if self.occupancy else "occupancy ?")
        loop = self.main_loop
        parts = [mma, self._loads_text() if loop else "no main loop", res, occ]
        if loop is not None and loop.mma:
            parts.append(f"loop {loop.mma} MMA : {loop.instructions - loop.mma}")
            parts.append(f"pressure {self.issue_pressure:.2f}" if self.issue_pressure is not None else "pressure ?")
        elif loop is not None:
            parts.append(f"loop {loop.instructions} instr ({loop.classes.get('float', 0)} float, "
                         f"{loop.classes.get('global', 0)} global)")
            parts.append(f"{loop.warp_instructions} warp instr/iter")
        return " | ".join(parts)

    def details(self) -> str:
        """Several lines: MMA, loops, the main loop's mix and loads, buffers, resources, occupancy, notes."""
        out = [f"{self.name} on {self.target} (triton {self.triton}): num_warps={self.num_warps} "
               f"num_stages={self.num_stages}"]
        if self.mma_shape:
            ptx = ", ".join(f"{k} x{v}" for k, v in self.ptx_mma.items()) or "none"
            out.append(f"tensor cores: {self.mma_kind} {self.mma_shape} ({self.mma_opcode}, {self.mma_operand_class}); "
                       f"PTX: {ptx}{'' if self.ptx_agrees in (None, True) else ' (DISAGREES)'}")
        else:
            out.append("tensor cores: none")
        out.append(f"loops ({len(self.loops)}):")
        for lp in self.loops:
            mark = "  <- main" if self.main_loop and lp["start"] == self.main_loop.start and \
                lp["end"] == self.main_loop.end else ""
            out.append(f"  {'  ' * lp['depth']}[{lp['start']:#06x}..{lp['end']:#06x}] depth {lp['depth']}: "
                       f"{lp['instructions']} instr, {lp['mma']} MMA, {lp['global_loads']} global loads{mark}")
        loop = self.main_loop
        if loop:
            mix = ", ".join(f"{c} {loop.classes.get(c, 0)}" for c in CLASS_NAMES)
            out.append(f"main loop [{loop.start:#06x}..{loop.end:#06x}]: {loop.instructions} instr/iter per warp "
                       f"({loop.warp_instructions} per CTA): {mix}")
            if loop.predicated_off:
                out.append(f"  incl. {loop.predicated_off} predicated-off (@!PT) instructions (issued, no effect)")
            for load in loop.loads:
                where = f"{os.path.basename(load.line[0])}:{load.line[1]}" if load.line else "?"
                out.append(f"  load {load.address:#06x} {load.opcode}: {load.kind}"
                           f"{'' if load.width is None else f' {load.width} B'} from {where}"
                           f"{f' -> {load.operand}' if load.operand else ''}")
        for label, op in self.operands.items():
            out.append(f"operand {label}: {op['kind']}, {op['buffers']} buffer(s) in {op['allocation']}")
        for alloc in self.allocations:
            shape = "x".join(map(str, alloc["shape"]))
            out.append(f"  shared alloc {alloc['name']}: {shape}x{alloc['dtype']} = {alloc['bytes']} B")
        out.append(f"resources: {self.registers} registers/thread, spill stores {self.spill_store_bytes} B, "
                   f"loads {self.spill_load_bytes} B, stack {self.stack_bytes} B, shared {self.shared_bytes} B "
                   f"dynamic + {self.static_shared_bytes} B static")
        if self.occupancy:
            o = self.occupancy
            limits = ", ".join(f"{k} {v}" for k, v in o.limits.items())
            out.append(f"occupancy: {o.ctas_per_sm} CTAs = {o.warps_per_sm} warps/SM ({o.fraction:.0%}), limited by "
                       f"{', '.join(o.limiters)} [CTAs allowed by {limits}; {o.regs_per_warp} regs/warp, "
                       f"{o.smem_per_cta} B smem/CTA]")
        if self.issue_pressure is not None:
            out.append(f"issue pressure: {self.issue_pressure:.3f} = ({loop.instructions} x {self.num_warps} / 4) / "
                       f"{self.mma_cycles:.0f} MMA cycles")
        out.extend(f"note: {n}" for n in self.notes)
        return "\n".join(out)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ------------------------------------------------------------------------------- analysis

def _is_mma(ins: Instruction) -> bool:
    return ins.klass == "mma" and not ins.never_executes


def _global_load_kind(ins: Instruction) -> str | None:
    base = ins.base
    if base == "LDGSTS":
        return "cp.async"
    if base in ("UTMALDG", "UBLKCP"):
        return "tma"
    if base in ("LDG", "LDGMC"):
        return "sync"
    return None


def _same_line(a, b) -> bool:
    return a is not None and b is not None and a[1] == b[1] and os.path.basename(a[0]) == os.path.basename(b[0])


def build_report(sass: str, ttgir: str = "", ptx: str = "", *, target=90, num_warps: int = 4, num_stages: int = 0,
                 shared: int = 0, registers: int = 0, spill_store_bytes: int | None = None,
                 spill_load_bytes: int | None = None, stack_bytes: int = 0, static_shared_bytes: int = 0,
                 name: str | None = None, triton: str = "") -> KernelReport:
    """A :class:`KernelReport` from the raw texts and figures (what :func:`analyze` passes from a Compiled)."""
    notes = []
    functions = parse_sass(sass)
    if not functions:
        raise ValueError("no SASS instructions found")
    fn = functions.get(name) if name else None
    fn = fn or next(iter(functions.values()))
    if len(functions) > 1:
        notes.append(f"{len(functions)} functions in the cubin; analysed {fn.name}")
    arch = getattr(target, "arch", target)
    if isinstance(arch, str):
        arch = int(re.sub(r"\D", "", arch) or 0)

    # Per loop: own counts decide which is innermost for what.
    loop_rows, stats = [], {}
    for lp in fn.loops:
        body = fn.loop_instructions(lp)
        own = fn.loop_instructions(lp, own=True)
        stats[lp.index] = {
            "own_mma": sum(1 for i in own if _is_mma(i)),
            "own_float": sum(1 for i in own if i.klass == "float"),
            "own_global": sum(1 for i in own if _global_load_kind(i)),
        }
        loop_rows.append({"start": lp.start, "end": lp.end, "depth": lp.depth, "instructions": len(body),
                          "mma": sum(1 for i in body if _is_mma(i)),
                          "global_loads": sum(1 for i in body if _global_load_kind(i))})
    with_mma = [lp for lp in fn.loops if stats[lp.index]["own_mma"]]
    if with_mma:
        main = max(with_mma, key=lambda lp: (lp.depth, stats[lp.index]["own_mma"], len(lp.blocks)))
    else:
        candidates = [lp for lp in fn.loops if stats[lp.index]["own_global"] and stats[lp.index]["own_float"]]
        main = max(candidates, key=lambda lp: (lp.depth, stats[lp.index]["own_float"] + stats[lp.index]["own_global"]),
                   default=None)
        if main is None and fn.loops:
            notes.append("no loop holds both global loads and float math; no main loop chosen")

    # Tensor-core instruction: the most frequent in the main loop, else in the kernel.
    pool = fn.loop_instructions(main) if main else fn.instructions
    mmas = Counter(i.opcode for i in pool if _is_mma(i)) or \
        Counter(i.opcode for i in fn.instructions if _is_mma(i))
    info = mma_info(mmas.most_common(1)[0][0]) if mmas else None
    if len(mmas) > 1:
        notes.append(f"several MMA opcodes: {dict(mmas)}")
    ptx_shapes = ptx_mma_shapes(ptx)
    ptx_agrees = None
    if ptx:
        ptx_agrees = (f"{info.kind} {info.shape}" in ptx_shapes) if info else not ptx_shapes
        if not ptx_agrees:
            notes.append(f"SASS MMA {info.kind + ' ' + info.shape if info else 'none'} not among PTX {ptx_shapes}")

    # Operands, buffers (TTGIR).
    ops = ttgir_operands(ttgir) if ttgir else {"operands": {}, "allocations": [], "dots": 0}
    operands = ops["operands"]
    buffers = max((op["buffers"] for op in operands.values()), default=None) or None
    if buffers and num_stages and buffers != num_stages:
        notes.append(f"{buffers} shared-memory buffers per operand for num_stages={num_stages}")

    main_loop = mma_cycles = pressure = None
    if main is not None:
        body = fn.loop_instructions(main)
        loads = []
        for ins in body:
            kind = _global_load_kind(ins)
            if not kind:
                continue
            operand = None
            for label, op in operands.items():
                if any(_same_line(ins.line, where) for where in op["lines"]):
                    operand = label
            loads.append(LoadInfo(ins.address, ins.opcode, kind, None if kind == "tma" else access_width(ins.opcode),
                                  ins.line, operand))
        n_mma = sum(1 for i in body if _is_mma(i))
        classes = Counter(i.klass for i in body)
        main_loop = MainLoop(main.start, main.end, main.depth, len(body), n_mma,
                             {c: classes.get(c, 0) for c in CLASS_NAMES}, loads, len(body) * num_warps,
                             sum(1 for i in body if i.never_executes), len(main.children))
        if main.children:
            notes.append(f"the main loop holds {len(main.children)} inner loop(s) (e.g. mbarrier waits), "
                         "counted once per iteration")
        if any(ld.operand is None for ld in loads) and operands:
            notes.append("some loads of the main loop match no tl.dot operand's source line")
        if info and arch in TARGET_LIMITS:
            peak = TARGET_LIMITS[arch].mma_flop_per_clock.get(info.operand_class)
            flop = sum(mma_info(i.opcode).flop_per_warp_instruction for i in body
                       if _is_mma(i) and mma_info(i.opcode)) * num_warps
            if peak and flop:
                mma_cycles = flop / peak
                pressure = (len(body) * num_warps / 4) / mma_cycles
            elif not peak:
                notes.append(f"no tensor-core peak for {info.operand_class} on sm_{arch}")

    occ = None
    if arch in TARGET_LIMITS:
        occ = occupancy(arch, num_warps, registers, shared, static_shared_bytes)
        if occ.ctas_per_sm == 0:
            notes.append("the kernel does not fit on an SM of this target")
    else:
        notes.append(f"no SM limits for sm_{arch}: occupancy and pressure not computed")
    if spill_store_bytes is None or spill_load_bytes is None:
        stores, loads_ = local_memory_bytes(sass)
        spill_store_bytes = stores if spill_store_bytes is None else spill_store_bytes
        spill_load_bytes = loads_ if spill_load_bytes is None else spill_load_bytes

    return KernelReport(
        name=fn.name, target=f"sm_{arch}", num_warps=num_warps, num_stages=num_stages,
        mma_kind=info.kind if info else "none", mma_shape=info.shape if info else None,
        mma_opcode=info.opcode if info else None, mma_operand_class=info.operand_class if info else None,
        ptx_mma=ptx_shapes, ptx_agrees=ptx_agrees, registers=registers, spill_store_bytes=spill_store_bytes,
        spill_load_bytes=spill_load_bytes, stack_bytes=stack_bytes, shared_bytes=shared,
        static_shared_bytes=static_shared_bytes, occupancy=occ, buffers=buffers, operands=operands,
        allocations=ops["allocations"], loops=loop_rows, main_loop=main_loop, issue_pressure=pressure,
        mma_cycles=mma_cycles, notes=notes, triton=triton, _function=fn)


def analyze(compiled) -> KernelReport:
    """The :class:`KernelReport` of a :class:`mcconv.tools.compile.Compiled` kernel."""
    res = compiled.resources
    report = build_report(compiled.sass, compiled.ttgir, compiled.ptx, target=compiled.target,
                          num_warps=compiled.num_warps, num_stages=compiled.num_stages, shared=compiled.shared,
                          registers=res.registers, spill_store_bytes=res.spill_store_bytes,
                          spill_load_bytes=res.spill_load_bytes, stack_bytes=res.stack_bytes,
                          static_shared_bytes=res.static_shared_bytes, name=compiled.name,
                          triton=compiled.triton_version)
    report.compile_seconds = round(compiled.compile_seconds, 3)
    return report


# ------------------------------------------------------------------------------- the reference GEMM

def reference_kernel():
    """``matmul_reference_kernel`` from mcconv._kernels (kernels/matmul_reference.py).

    Imported as a module of mcconv._kernels; should that package fail to import, the file is
    loaded on its own (it depends on triton only).
    """
    try:
        from mcconv._kernels.matmul_reference import matmul_reference_kernel
        return matmul_reference_kernel
    except Exception:  # noqa: BLE001 - e.g. mcconv._kernels' __init__ failing: load the file itself
        import importlib.util

        spec = importlib.util.find_spec("mcconv._kernels")
        for folder in (spec.submodule_search_locations or []) if spec else []:
            path = os.path.join(folder, "matmul_reference.py")
            if os.path.exists(path):
                name = "mcconv_matmul_reference"
                module_spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(module_spec)
                sys.modules[name] = module  # triton reads the kernel's source through its module
                module_spec.loader.exec_module(module)
                return module.matmul_reference_kernel
        raise


def reference_launch(m: int = 4096, n: int = 4096, k: int = 4096, block=(128, 128, 64), group_m: int = 8,
                     num_warps: int = 8, num_stages: int = 3):
    """(fn, args, kwargs) of the reference fp16 GEMM launch on ``meta`` tensors (row-major A, B, C).

    The defaults are the calibration configuration of Triton's matmul tutorial on H100.
    """
    import torch

    a = torch.empty((m, k), dtype=torch.float16, device="meta")
    b = torch.empty((k, n), dtype=torch.float16, device="meta")
    c = torch.empty((m, n), dtype=torch.float16, device="meta")
    args = (a, b, c, m, n, k, a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1))
    kwargs = {"BLOCK_SIZE_M": block[0], "BLOCK_SIZE_N": block[1], "BLOCK_SIZE_K": block[2],
              "GROUP_SIZE_M": group_m, "num_warps": num_warps, "num_stages": num_stages}
    return reference_kernel(), args, kwargs


# ------------------------------------------------------------------------------- command line

SKIP_STATUS = 77


def main(argv=None) -> int:
    """``python -m mcconv.tools.sass --reference [--target T ...] [--json] [--save DIR] [--details]``."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m mcconv.tools.sass", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", action="store_true", required=True,
                        help="analyse the reference GEMM (kernels/matmul_reference.py)")
    parser.add_argument("--target", nargs="+", default=["sm_90"], help="targets (sm_90, sm_80, h100, a100)")
    parser.add_argument("--size", default="4096,4096,4096", help="M,N,K")
    parser.add_argument("--block", default="128,128,64", help="BLOCK_SIZE_M,N,K")
    parser.add_argument("--group-m", type=int, default=8)
    parser.add_argument("--num-warps", type=int, default=8)
    parser.add_argument("--num-stages", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print a JSON list of reports")
    parser.add_argument("--details", action="store_true", help="print the multi-line details")
    parser.add_argument("--save", metavar="DIR", help="write <name>.ttgir/.ptx/.cubin/.sass under DIR/<target>/")
    opts = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("SKIP: TRITON_INTERPRET is set: interpreted kernels cannot be compiled", flush=True)
        return SKIP_STATUS
    try:
        from triton.backends import backends

        if "nvidia" not in backends:
            raise RuntimeError("this triton has no NVIDIA backend")
        from .compile import tool_path

        for tool in ("ptxas", "cuobjdump", "nvdisasm"):
            tool_path(tool)
    except Exception as err:  # noqa: BLE001 - any reason this triton cannot compile for NVIDIA
        print(f"SKIP: {type(err).__name__}: {err}", flush=True)
        return SKIP_STATUS
    from .compile import compile_launch, resolve_target

    m, n, k = (int(x) for x in opts.size.split(","))
    block = tuple(int(x) for x in opts.block.split(","))
    fn, args, kwargs = reference_launch(m, n, k, block, opts.group_m, opts.num_warps, opts.num_stages)
    results = []
    for name in opts.target:
        target = resolve_target(name)
        compiled = compile_launch(fn, args, kwargs, target)
        report = analyze(compiled)
        entry = report.as_dict()
        entry["summary"] = report.summary()
        entry["nest_pressure"] = asdict(report.nest_pressure([math.ceil(k / block[2])])) if report.main_loop else None
        if opts.save:
            entry["saved"] = {s: str(p) for s, p in compiled.save(os.path.join(opts.save, f"sm_{target.arch}")).items()}
        results.append(entry)
        if not opts.json:
            print(f"sm_{target.arch}: {report.summary()}  [compiled in {compiled.compile_seconds:.1f} s]")
            if opts.details:
                print(report.details())
    if opts.json:
        print(json.dumps(_jsonable(results), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The static-analysis engine behind `mcconv inspect` (mcconv/tools/compile.py, mcconv/tools/sass.py).

Pure tests (SASS parser, loops, classifier, tensor-core shapes, occupancy arithmetic, nest
pressure) run on a hand-written SASS listing. The compile tests need no GPU: they compile the
reference GEMM (kernels/matmul_reference.py) for sm_90 and sm_80 with the triton wheel's own
ptxas, in a subprocess, because conftest sets TRITON_INTERPRET=1 in this process on CPU-only
machines and interpreted kernels cannot be compiled.
"""
import json
import os
import subprocess
import sys

import pytest

from mcconv.tools import sass
from mcconv.tools.sass import (access_width, classify, issue_memory_ratio, mma_info, occupancy, parse_sass,
                               ttgir_operands)

# A kernel as nvdisasm -c -g prints it: a tap loop around a channel loop (two HGMMA per
# iteration, one peeled iteration after it), an mbarrier wait whose retry loop ptxas put after
# EXIT, a predicated-off filler, and the `BRA self` trap at the end.
TOY = """
        .text.toy_kernel:
toy_kernel:
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   MOV R2, RZ ;
.L_x_0:
        /*0020*/                   IADD3 R2, R2, 0x1, RZ ;
        /*0030*/                   LDGSTS.E.BYPASS.128 [R3], desc[UR4][R4.64] ;
        /*0040*/                   LDGDEPBAR ;
.L_x_1:
\t//## File "/src/toy.py", line 10
        /*0050*/                   DEPBAR.LE SB0, 0x1 ;
        /*0060*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0070*/                   WARPGROUP.ARRIVE ;
\t//## File "/src/toy.py", line 12
        /*0080*/                   HGMMA.64x128x16.F32 R24, gdesc[UR8].tnspB, R24 ;
        /*0090*/                   HGMMA.64x128x16.F32 R24, gdesc[UR8].tnspB, R24, gsb0 ;
        /*00a0*/                   SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR4], R3 ;
        /*00b0*/              @!P0 BRA `(.L_x_4) ;
.L_x_5:
\t//## File "/src/toy.py", line 8
        /*00c0*/                   LDGSTS.E.BYPASS.LTC128B.128 [R5], desc[UR4][R6.64], P1 ;
\t//## File "/src/toy.py", line 9
        /*00d0*/                   LDG.E.64 R8, desc[UR4][R10.64] ;
        /*00e0*/              @!PT LDS RZ, [RZ] ;
        /*00f0*/                   UIADD3 UR4, UR4, 0x1, URZ ;
        /*0100*/                   FFMA R12, R13, R14, R12 ;
        /*0110*/                   ISETP.NE.AND P1, PT, R2, 0x4, PT ;
        /*0120*/               @P1 BRA `(.L_x_1) ;
        /*0130*/                   HGMMA.64x128x16.F32 R24, gdesc[UR8].tnspB, R24 ;
        /*0140*/                   HGMMA.64x128x16.F32 R24, gdesc[UR8].tnspB, R24, gsb0 ;
        /*0150*/                   ISETP.NE.AND P2, PT, R2, 0x9, PT ;
        /*0160*/               @P2 BRA `(.L_x_0) ;
        /*0170*/                   STG.E [R20.64], R24 ;
        /*0180*/                   EXIT ;
.L_x_4:
        /*0190*/                   SYNCS.PHASECHK.TRANS64 P0, [UR4], R3 ;
        /*01a0*/              @!P0 BRA `(.L_x_4) ;
        /*01b0*/                   BRA `(.L_x_5) ;
.L_x_6:
        /*01c0*/                   BRA `(.L_x_6);
        /*01d0*/                   NOP;
"""

# The TTGIR of such a kernel: two pipelined operands filled by cp.async at toy.py lines 8 and 9.
TOY_TTGIR = """
#loc1 = loc("/src/toy.py":8:20)
#loc2 = loc("/src/toy.py":9:20)
#loc8 = loc("a"(#loc1))
#loc9 = loc("b"(#loc2))
    %a = ttg.local_alloc : () -> !ttg.memdesc<3x128x64xf16, #shared, #smem, mutable> loc(#loc8)
    %b = ttg.local_alloc : () -> !ttg.memdesc<3x64x128xf16, #shared, #smem, mutable> loc(#loc9)
      %a_1 = ttg.memdesc_index %a[%i] : !ttg.memdesc<3x128x64xf16, #shared, #smem, mutable> -> !ttg.memdesc<128x64xf16, #shared, #smem, mutable> loc(#loc8)
      %a_2 = ttg.async_copy_global_to_local %pa, %a_1 mask %m : tensor<128x64x!tt.ptr<f16>, #blocked1> -> <128x64xf16, #shared, #smem, mutable> loc(#loc8)
      %b_1 = ttg.memdesc_index %b[%i] : !ttg.memdesc<3x64x128xf16, #shared, #smem, mutable> -> !ttg.memdesc<64x128xf16, #shared, #smem, mutable> loc(#loc9)
      %b_2 = ttg.async_copy_global_to_local %pb, %b_1 mask %m : tensor<64x128x!tt.ptr<f16>, #blocked> -> <64x128xf16, #shared, #smem, mutable> loc(#loc9)
      %acc = ttng.warp_group_dot %a_1, %b_1, %acc_0 {isAsync = true} : !ttg.memdesc<128x64xf16, #shared, #smem, mutable> * !ttg.memdesc<64x128xf16, #shared, #smem, mutable> -> tensor<128x128xf32, #mma> loc(#loc3)
"""  # noqa: E501 - IR lines as Triton prints them


def _toy():
    return parse_sass(TOY)["toy_kernel"]


def test_parser_reads_instructions_labels_targets_and_lines():
    fn = _toy()
    assert len(fn.instructions) == 30
    ins = {i.address: i for i in fn.instructions}
    assert ins[0x00b0].predicate == "@!P0" and ins[0x00b0].target == 0x0190
    assert ins[0x0120].target == 0x0050 and ins[0x01b0].target == 0x00c0
    assert ins[0x00e0].never_executes and ins[0x00e0].opcode == "LDS"
    assert ins[0x00c0].line == ("/src/toy.py", 8) and ins[0x0080].line == ("/src/toy.py", 12)
    assert ins[0x0080].operands == "R24, gdesc[UR8].tnspB, R24"


def test_natural_loops_nest_and_skip_dead_code():
    fn = _toy()
    spans = sorted((lp.start, lp.end, lp.depth) for lp in fn.loops)
    # tap loop, channel loop (its body includes the out-of-line retry blocks), the retry spin loop;
    # the `BRA self` trap after EXIT is unreachable, hence no loop.
    assert spans == [(0x20, 0x1b0, 0), (0x50, 0x1b0, 1), (0x190, 0x1a0, 2)]
    inner = next(lp for lp in fn.loops if lp.depth == 1)
    assert len(fn.loop_instructions(inner)) == 17
    assert len(fn.loop_instructions(inner, own=True)) == 15  # without the spin loop


def test_cuobjdump_format_targets_as_addresses():
    text = """
\t\tFunction : k
        /*0000*/                   MOV R0, RZ ;                 /* 0x000fe20000000f00 */
        /*0010*/                   IADD3 R0, R0, 0x1, RZ ;      /* 0x000fe20000000f00 */
        /*0020*/                   ISETP.NE.AND P0, PT, R0, 0x8, PT ;
        /*0030*/               @P0 BRA 0x10 ;                   /* 0xfffffff800581947 */
        /*0040*/                   EXIT ;
        /*0050*/                   BRA 0x50;
"""
    fn = parse_sass(text)["k"]
    assert [(lp.start, lp.end) for lp in fn.loops] == [(0x10, 0x30)]


def test_classifier_and_widths():
    expected = {
        "HGMMA.64x128x16.F32": "mma", "HMMA.16816.F32.BF16": "mma", "LDGSTS.E.BYPASS.128": "global",
        "UTMALDG.2D": "global", "LDG.E.128": "global", "STG.E": "global", "LDSM.16.M88.4": "shared",
        "STS.128": "shared", "LDGDEPBAR": "control", "WARPGROUP.DEPBAR.LE": "control", "BAR.SYNC": "control",
        "SYNCS.ARRIVE.TRANS64": "control", "IMAD.WIDE.U32": "integer", "LOP3.LUT": "integer",
        "ULDC.64": "uniform", "UIADD3": "uniform", "S2UR": "uniform", "F2FP.F16.F32.PACK_AB": "float",
        "FFMA": "float", "MUFU.EX2": "float", "MOV": "other", "S2R": "other", "LDL": "other",
    }
    assert {op: classify(op) for op in expected} == expected
    assert access_width("LDGSTS.E.BYPASS.LTC128B.128") == 16  # LTC128B is an L2 hint, not a width
    assert access_width("LDG.E.64") == 8 and access_width("LDG.E.U16") == 2 and access_width("LDG.E") == 4


def test_tensor_core_shapes():
    w = mma_info("HGMMA.64x256x16.F32.BF16")
    assert (w.kind, w.shape, w.operand_class) == ("wgmma", "m64n256k16", "f16")
    assert w.flop_per_warp_instruction == 2 * 64 * 256 * 16 / 4  # a warpgroup's 4 warps share it
    h = mma_info("HMMA.16816.F32")
    assert (h.kind, h.shape, h.flop_per_warp_instruction) == ("mma.sync", "m16n8k16", 2 * 16 * 8 * 16)
    assert mma_info("HMMA.1688.F32.TF32").shape == "m16n8k8" and mma_info("HMMA.1688.F32.TF32").operand_class == "tf32"
    assert mma_info("IMMA.16832.S8.S8").operand_class == "i8"
    assert mma_info("FFMA") is None


def test_ttgir_operands_and_buffers():
    ops = ttgir_operands(TOY_TTGIR)
    assert ops["operands"]["A"] == {"kind": "cp.async", "lines": [("/src/toy.py", 8)], "buffers": 3, "allocation": "a"}
    assert ops["operands"]["B"]["lines"] == [("/src/toy.py", 9)]
    assert [a["bytes"] for a in ops["allocations"]] == [3 * 128 * 64 * 2] * 2


def test_report_of_the_toy_kernel():
    report = sass.build_report(TOY, TOY_TTGIR, target=90, num_warps=8, num_stages=3, shared=98304, registers=122,
                               static_shared_bytes=1024)
    loop = report.main_loop
    assert (loop.start, loop.end, loop.instructions, loop.mma) == (0x50, 0x1b0, 17, 2)
    assert loop.classes == {"mma": 2, "global": 2, "shared": 1, "integer": 1, "uniform": 1, "float": 1,
                            "control": 9, "other": 0}
    assert loop.predicated_off == 1 and loop.inner_loops == 1
    assert [(ld.kind, ld.width, ld.operand) for ld in loop.loads] == [("cp.async", 16, "A"), ("sync", 8, "B")]
    assert (report.mma_kind, report.mma_shape, report.buffers) == ("wgmma", "m64n128k16", 3)
    # 2 HGMMA x 2 warpgroups x 2*64*128*16 FLOP / 4096 per clock = 256 cycles; issue 17 x 8 / 4 = 34.
    assert report.mma_cycles == 256 and report.issue_pressure == pytest.approx(34 / 256)
    assert report.summary().startswith("wgmma m64n128k16 | A cp.async16 B ldg8, 3 buf | 122 regs 0 spill 96 KiB |")
    json.dumps(report.as_dict())
    assert "main loop [0x0050..0x01b0]" in report.details()

    # Tap loop x channel loop: the two HGMMA after the channel loop are one peeled iteration, so
    # the channel loop runs 3 of its 4 iterations per tap; the MMA work is 4 x 9 iterations'.
    nest = report.nest_pressure([4, 9])
    assert nest.peeled_iterations == 1
    assert [lv["executions"] for lv in nest.levels] == [27, 9]
    assert [lv["own_instructions"] for lv in nest.levels] == [17, 7]
    assert nest.instructions == 17 * 27 + 7 * 9
    assert nest.mma_cycles == 36 * 256
    assert nest.pressure == pytest.approx((17 * 27 + 7 * 9) * 8 / 4 / (36 * 256))
    assert nest.outside_instructions == 4  # S2R, MOV before; STG, EXIT after (the trap is dead code)
    assert report.nest_pressure([4]).pressure == pytest.approx(report.issue_pressure)
    assert report.nest_pressure([4, 9, 1]).instructions == nest.instructions  # an extra level of 1 is harmless
    with pytest.raises(ValueError, match="enclosing SASS loop"):
        report.nest_pressure([4, 9, 2])
    assert report.warp_instructions_per_element(128 * 128) == 17 * 8 / (128 * 128)


@pytest.mark.parametrize("arch, warps, regs, shared, static, ctas, limiters", [
    (90, 8, 122, 98304, 1024, 2, ("regs", "smem")),  # the reference GEMM: 4096 regs/warp, 97 KiB/CTA
    (90, 4, 32, 0, 0, 16, ("warps", "regs")),
    (90, 1, 16, 0, 0, 32, ("ctas",)),
    (90, 4, 255, 0, 0, 2, ("regs",)),  # 8192 regs/warp: 2 warps per sub-partition
    (90, 4, 256, 0, 0, 0, ("regs",)),  # over the per-thread maximum
    (90, 4, 32, 227 * 1024, 0, 1, ("smem",)),  # the largest block fits exactly with its 1 KiB reserved
    (80, 8, 168, 65536, 0, 1, ("regs",)),  # 5376 regs/warp: 3 warps per sub-partition
    (80, 4, 32, 200 * 1024, 0, 0, ("smem",)),  # over A100's 163 KiB per block
    (80, 4, 40, 50000, 0, 3, ("smem",)),  # 50000 + 1024 rounded up to 51072 B
])
def test_occupancy_arithmetic(arch, warps, regs, shared, static, ctas, limiters):
    occ = occupancy(arch, warps, regs, shared, static)
    assert (occ.ctas_per_sm, occ.warps_per_sm, occ.limiters) == (ctas, ctas * warps, limiters)


def test_issue_memory_ratio():
    # H100 SXM: 132 SMs at 1.83 GHz issue 4 x 132 x 1.83e9 warp instructions/s; 3.35 TB/s.
    ratio = issue_memory_ratio(966.24e9 * 0.001, 3.35e9, sm_count=132, clock_hz=1.83e9, bandwidth_bytes_per_s=3.35e12)
    assert ratio == pytest.approx(1.0, rel=1e-3)


def test_driver_swap_is_restored():
    from triton.runtime.driver import driver

    from mcconv.tools.compile import compile_only_driver, resolve_target

    before = getattr(driver, "_active", None)
    with compile_only_driver("a100"):
        assert driver.active.get_current_target() == resolve_target(80)
        with compile_only_driver("sm_90"):
            assert driver.active.get_current_target().arch == 90
        assert driver.active.get_current_target().arch == 80
        ids = driver.active.get_current_device()
    assert getattr(driver, "_active", None) is before
    with compile_only_driver(90):
        assert driver.active.get_current_device() != ids  # one compile cache per target
    with pytest.raises(ValueError):
        resolve_target("sm_x")


# ------------------------------------------------------------------------------- compiling

def test_reference_gemm_report_on_sm90_and_sm80(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # a real compile, and no other cache written
    proc = subprocess.run([sys.executable, "-m", "mcconv.tools.sass", "--reference", "--target", "sm_90", "sm_80",
                           "--json", "--save", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode == sass.SKIP_STATUS:
        pytest.skip(proc.stdout.strip().removeprefix("SKIP: "))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    h100, a100 = json.loads(proc.stdout)

    assert (h100["target"], h100["mma_kind"], h100["mma_shape"]) == ("sm_90", "wgmma", "m64n128k16")
    assert h100["mma_opcode"].startswith("HGMMA.64x128x16") and h100["ptx_agrees"]
    loop = h100["main_loop"]
    assert loop["mma"] == 4 and 80 <= loop["instructions"] - loop["mma"] <= 130  # 108 (triton 3.9), 99 (3.6)
    assert {(ld["operand"], ld["kind"], ld["width"]) for ld in loop["loads"]} == {("A", "cp.async", 16),
                                                                               ("B", "cp.async", 16)}
    assert h100["buffers"] == 3 and h100["operands"]["A"]["buffers"] == 3
    assert h100["spill_store_bytes"] == h100["spill_load_bytes"] == 0 and h100["shared_bytes"] == 98304
    assert 0.35 <= h100["issue_pressure"] <= 0.55  # Triton's tutorial calibration: 0.44
    assert h100["nest_pressure"]["pressure"] == pytest.approx(h100["issue_pressure"])
    assert h100["occupancy"]["ctas_per_sm"] >= 1
    assert "wgmma m64n128k16 | A cp.async16 B cp.async16, 3 buf" in h100["summary"]

    assert (a100["target"], a100["mma_kind"], a100["mma_shape"]) == ("sm_80", "mma.sync", "m16n8k16")
    assert a100["mma_opcode"].startswith("HMMA.16816") and a100["main_loop"]["mma"] > 0
    assert {ld["kind"] for ld in a100["main_loop"]["loads"]} == {"cp.async"}

    for entry in (h100, a100):  # save() wrote the four files
        assert set(entry["saved"]) == {"ttgir", "ptx", "cubin", "sass"}
        for suffix, path in entry["saved"].items():
            assert path.endswith(f"matmul_reference_kernel.{suffix}") and os.path.getsize(path) > 0
        with open(entry["saved"]["cubin"], "rb") as f:
            assert f.read(4) == b"\x7fELF"

"""What a new user meets first: the README's commands, the command line's manners, the CPU path.

One test (or more) per finding of a try-out "as a new user would" (issue 8): set-up commands per
kind of machine, `plan` sharing the library's padding rule, TRITON_INTERPRET set late, the CLI's
help, version and bare invocation, explain's dot precision, plan/bench defaults and dry-run
table, convert's return value, and the README's CPU example run as written.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mcconv
from mcconv.tools.cli import main

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _clean_env() -> dict:
    """The environment without TRITON_INTERPRET (these subprocesses decide it themselves)."""
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


# 1. set-up: each kind of machine has its commands, ahead of everything else; CI runs the README's
def test_readme_leads_with_set_up_per_kind_of_machine():
    setup = README[:README.index("## Using it")]
    assert "machine with an NVIDIA GPU" in setup and "machine without a GPU" in setup
    assert "download.pytorch.org/whl/cpu" in setup  # the CPU machine never pulls a CUDA build
    assert setup.index("machine without a GPU") < setup.index("pytest")


def test_ci_runs_the_readme_commands():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    readme = [line.strip() for block in _code_blocks("bash") for line in block.splitlines()]
    for command in ('.venv/bin/pip install -e ".[test]"', ".venv/bin/pytest -n 2 --dist loadfile"):
        assert command in readme and command in ci


# 2. plan follows the library's padding rule
def test_plan_shares_the_padding_rule(capsys):
    assert main(["plan", "--input", "1,4,8,8", "--weight", "4,4,3,3", "--padding", "same", "--stride", "2"]) == 2
    assert "padding: 'same' needs stride 1" in capsys.readouterr().err
    assert main(["plan", "--input", "1,4,8,8", "--weight", "4,4,2,2", "--padding", "same", "--json"]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    assert doc["output_shape"] == [1, 4, 8, 8]  # even kernel, "same": the extra pixel bottom/right


# 3. TRITON_INTERPRET set after `import mcconv` works; set after `import triton` says what to do
@pytest.mark.parametrize("first, works", [("mcconv", True), ("triton", False)])
def test_interpret_set_late(first, works):
    code = (f"import {first}, os, torch\n"
            "os.environ['TRITON_INTERPRET'] = '1'\n"
            "import mcconv\n"
            "try:\n"
            "    y = mcconv.conv2d(torch.ones(1, 2, 3, 3), torch.ones(1, 2, 1, 1))\n"
            "    print('OK', float(y.sum()))\n"
            "except mcconv._backend.BackendError as err:\n"
            "    print('ERROR', err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_clean_env(),
                         timeout=300).stdout
    if works:
        assert out.startswith("OK 18.0"), out
    else:
        assert out.startswith("ERROR TRITON_INTERPRET=1 was set after triton was imported"), out
        assert "before anything imports triton" in out


# 4. the command line's manners
def test_help_version_and_bare_invocation(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "VERBS" not in text and "registered" not in text
    assert all(verb in text for verb in ("demo", "plan", "bench", "tune"))
    assert "textbook" in text and "seed's" not in text
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"mcconv {mcconv.__version__}"
    assert main([]) == 2  # bare: the help, not "required: verb"
    assert "usage: mcconv" in capsys.readouterr().out


# 5. TF32 is only ever mentioned for fp32
def test_explain_mentions_tf32_only_for_fp32():
    x, w = torch.randn(1, 4, 6, 6, device="meta"), torch.randn(4, 4, 3, 3, device="meta")
    for dtype in (torch.float16, torch.bfloat16):
        dispatch = mcconv.explain(x.to(dtype), w.to(dtype))
        assert dispatch.dot_precision is None and "tf32" not in str(dispatch)
    if not torch.cuda.is_available():  # the interpreter has no TF32
        assert mcconv.explain(torch.randn(1, 4, 6, 6), torch.randn(4, 4, 3, 3)).dot_precision == "ieee"


# 6. plan and bench state their defaults; the dry-run table says what it shows
@pytest.mark.parametrize("verb", ["plan", "bench"])
def test_help_shows_defaults(verb, capsys):
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: float16)" in text and "(default: channels_last)" in text


def test_dry_run_table(capsys):
    assert main(["bench", "--suite", "seed", "--dry-run", "--dtype", "bfloat16", "--layout", "contiguous"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("bfloat16, contiguous")
    assert lines[-1].startswith("1 layer;") and "heuristic defaults" in lines[-1]
    assert all(len(line) <= 120 for line in lines)


# 7. convert returns the model, and a converted layer shows it
def test_convert_returns_the_model():
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3))
    assert mcconv.convert(model) is model
    assert "mcconv.Conv2d(2, 3" in repr(model)


# 8. the README's CPU example, as written
def test_readme_cpu_example_runs():
    example = next(b for b in _code_blocks("python") if 'os.environ["TRITON_INTERPRET"] = "1"' in b)
    out = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, env=_clean_env(),
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"

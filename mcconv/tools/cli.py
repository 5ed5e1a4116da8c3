"""The ``mcconv`` command line."""
import argparse
import sys

DESCRIPTION = """mcconv: Triton GPU kernels for multi-channel 2-D convolution.

demo, plan, inspect and bench --dry-run need no GPU; bench and tune time kernels on a CUDA GPU."""


def _verbs() -> dict:
    """name -> (function, one-line help); imported here so that `mcconv --version` stays fast."""
    from .bench import bench_command
    from .demo import demo_command
    from .plan import plan_command
    from .tune import tune_command

    verbs = {
        "demo": (demo_command, "the textbook's examples through the kernels, beside torch"),
        "plan": (plan_command, "FLOPs, bytes, roofline bound and dispatch of one convolution (no GPU needed)"),
        "bench": (bench_command, "time mcconv against torch on a suite of layers (CUDA; --dry-run without)"),
        "tune": (tune_command, "sweep tile configurations and write this GPU's tile tables (CUDA)"),
    }
    try:
        from .inspect import inspect_command
    except ImportError:  # pragma: no cover - inspect arrives with its own module
        return verbs
    verbs["inspect"] = (inspect_command, "what the compiler makes of each kernel on a target GPU (no GPU needed)")
    return verbs


class _DefaultsFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help when it has a default worth stating."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or "default:" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def parser() -> argparse.ArgumentParser:
    from mcconv import __version__

    p = argparse.ArgumentParser(prog="mcconv", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"mcconv {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="verb")
    for name, (func, help_text) in _verbs().items():
        verb = sub.add_parser(name, help=help_text, description=func.__doc__,
                              formatter_class=_DefaultsFormatter)
        verb.set_defaults(func=func)
        configure = getattr(func, "configure", None)
        if configure:
            configure(verb)
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.verb is None:  # bare `mcconv`: what there is to do
        p.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""Progress bar with a time-left estimate: tqdm when installed (``pip install mcconv-triton[bench]``),
else a plain line on stderr every few seconds."""
import sys
import time


class _Plain:
    def __init__(self, total: int, desc: str, interval_s: float = 5.0):
        self.total, self.desc, self.interval_s = total, desc, interval_s
        self.n, self.start, self.last, self.postfix = 0, time.monotonic(), 0.0, ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval_s or self.n >= self.total:
            self.last = now
            elapsed = now - self.start
            left = elapsed / self.n * (self.total - self.n) if self.n else float("nan")
            print(f"{self.desc}: {self.n}/{self.total}, {elapsed:.0f}s elapsed, ~{left:.0f}s left"
                  + (f" ({self.postfix})" if self.postfix else ""), file=sys.stderr, flush=True)

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def close(self) -> None:
        pass


class _Silent(_Plain):
    def update(self, n: int = 1) -> None:
        self.n += n


def progress(total: int, desc: str, enabled: bool = True):
    """An object with update(n), set_postfix_str(text) and close()."""
    if not enabled:
        return _Silent(total, desc)
    try:
        from tqdm import tqdm
    except ImportError:
        return _Plain(total, desc)
    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, file=sys.stderr)

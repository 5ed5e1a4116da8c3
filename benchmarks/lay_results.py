"""Lay the archive of a GPU run (``bash benchmarks/run_gpu.sh``) into a checkout.

    python benchmarks/lay_results.py gpu-run.tar.gz [--repo DIR] [--dry-run] [--logs DIR|none]

- tile tables ``autotune_configs/<kernel>/<device>.json`` are merged into the checkout's as
  ``mcconv tune`` merges (:func:`mcconv.tools.tune.read_entries` / ``write_entries``: re-read,
  update, atomic replace); an entry of the archive replaces the checkout's unless the
  checkout's was updated later (its ``updated`` stamp), so an old archive never undoes a newer
  tuning; a table whose kernel the checkout does not have is left out, and said so;
- results (bench JSON/PNG, tests, tune, inspect-check, sanitize) go to
  ``benchmarks/results/<device>/``, with the run's manifest as ``gpu-run.json`` and its summary
  as ``gpu-run-summary.txt`` (a file of the same name is replaced: git keeps the history);
- logs go OUT of the repository, to ``build/gpu-runs/<run id>/logs/`` (``build/`` is ignored):
  they are large, differ on every run and carry machine paths; the summary and the JSON hold
  their conclusions (failing tests, error counts), and the archive itself remains the full record.

Safe: nothing is extracted as such; each member is checked (a regular file, a relative path
under ``gpu-run/`` without ``..``, of a known kind, within a size limit) and written by this
script to a path it computes. An archive of another layout, or with links, is refused as a
whole before anything is written. Idempotent: laying the same archive twice changes nothing
the second time (files are written only when their content differs). A fake run's archive
(stub timings, from the tests) is refused unless ``--allow-fake``.

Exit status: 0 laid (or nothing to do), 2 refused (bad archive or checkout), 1 a write failed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tarfile
import tempfile
from pathlib import Path

FORMAT = "mcconv-gpu-run"
SUPPORTED_LAYOUTS = (1,)
TOP = "gpu-run"
MAX_MEMBER_BYTES = 64 * 1024 * 1024
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
RESULT_SUFFIXES = (".json", ".png", ".txt", ".csv")


class Refused(Exception):
    """The archive (or the checkout) is not one this script can lay in."""


def _classify(rel: str, device: str) -> tuple[str, tuple]:
    """(kind, parts) of a member path under gpu-run/, or raise Refused for an unknown one."""
    parts = rel.split("/")
    if rel in ("MANIFEST.json", "summary.txt"):
        return "meta", (rel,)
    if len(parts) == 3 and parts[0] == "autotune_configs" and parts[2] == f"{device}.json" and NAME.match(parts[1]):
        return "table", (parts[1],)
    if len(parts) == 3 and parts[0] == "results" and parts[1] == device and NAME.match(parts[2]) \
            and parts[2].endswith(RESULT_SUFFIXES):
        return "result", (parts[2],)
    if len(parts) == 2 and parts[0] == "logs" and NAME.match(parts[1]):
        return "log", (parts[1],)
    raise Refused(f"unknown layout: unexpected member {TOP}/{rel}")


def read_archive(path: Path) -> tuple[dict, list]:
    """(manifest, [(kind, parts, rel, bytes)]) after checking every member; Refused otherwise."""
    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as err:
        raise Refused(f"{path}: not a readable tar archive ({err})") from None
    members = {}
    with tar:
        for m in tar.getmembers():
            name = m.name
            if name.startswith("/") or "\\" in name or any(p in ("..", "") for p in name.rstrip("/").split("/")):
                raise Refused(f"unsafe member path {name!r}")
            if not (m.isfile() or m.isdir()):
                raise Refused(f"member {name!r} is not a regular file or folder (links and devices are refused)")
            if name.rstrip("/") != TOP and not name.startswith(TOP + "/"):
                raise Refused(f"unknown layout: member {name!r} is not under {TOP}/")
            if m.isdir():
                continue
            if m.size > MAX_MEMBER_BYTES:
                raise Refused(f"member {name!r} is {m.size} bytes, over {MAX_MEMBER_BYTES}")
            rel = name[len(TOP) + 1:]
            if rel in members:
                raise Refused(f"member {name!r} appears twice")
            members[rel] = tar.extractfile(m).read()
    if "MANIFEST.json" not in members:
        raise Refused(f"unknown layout: no {TOP}/MANIFEST.json (not an archive of benchmarks/run_gpu.sh)")
    try:
        manifest = json.loads(members["MANIFEST.json"])
    except ValueError as err:
        raise Refused(f"{TOP}/MANIFEST.json is not JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise Refused(f"unknown layout: MANIFEST.json format is {found!r}, expected {FORMAT!r}")
    if manifest.get("layout") not in SUPPORTED_LAYOUTS:
        raise Refused(f"unknown layout version {manifest.get('layout')!r} (this script knows {SUPPORTED_LAYOUTS}); "
                      "update benchmarks/lay_results.py")
    device = manifest.get("device")
    if not isinstance(device, str) or not NAME.match(device):
        raise Refused(f"MANIFEST.json names no usable device ({device!r}): the run measured nothing to lay in")
    items = []
    for rel, data in sorted(members.items()):
        kind, parts = _classify(rel, device)
        items.append((kind, parts, rel, data))
    return manifest, items


def _source_digest(repo: Path) -> str | None:
    """The same digest as gpu_run.source_digest (None when gpu_run.py is not beside this script)."""
    import importlib.util

    path = Path(__file__).with_name("gpu_run.py")
    if not path.is_file() or not (repo / "mcconv").is_dir():
        return None
    spec = importlib.util.spec_from_file_location("_mcconv_gpu_run", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.source_digest(repo)


def _write_if_changed(path: Path, data: bytes, dry_run: bool) -> str:
    if path.is_file() and path.read_bytes() == data:
        return "unchanged"
    action = "replaced" if path.exists() else "added"
    if not dry_run:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return action


def _newer(a: dict, b: dict) -> bool:
    """Whether entry ``a`` was updated strictly after ``b`` (ISO stamps compare as text)."""
    ua, ub = a.get("updated"), b.get("updated")
    return isinstance(ua, str) and isinstance(ub, str) and ua > ub


def _tune_module(repo: Path):
    """mcconv.tools.tune (its read_entries/write_entries merge tables as `mcconv tune` does)."""
    try:
        from mcconv.tools import tune
    except ImportError:
        sys.path.insert(0, str(repo))
        try:
            from mcconv.tools import tune
        except ImportError as err:
            raise Refused(f"cannot import mcconv.tools.tune ({err}): run this with the project's Python "
                          "(torch and triton installed, e.g. .venv/bin/python)") from None
    return tune


def plan_table(repo: Path, kernel: str, device: str, data: bytes):
    """(path, entries to write, what it means) for merging one table of the archive; nothing written."""
    tune = _tune_module(repo)
    with tempfile.TemporaryDirectory() as tmp:
        incoming_path = Path(tmp) / f"{device}.json"
        incoming_path.write_bytes(data)
        try:
            incoming = tune.read_entries(incoming_path)
        except ValueError as err:
            raise Refused(f"autotune_configs/{kernel}/{device}.json in the archive: {err}") from None
    target = tune.table_path(repo / "autotune_configs", kernel, device)
    try:
        existing = tune.read_entries(target)
    except ValueError as err:  # never overwrite what cannot be read
        raise Refused(str(err)) from None
    new, updated, kept = {}, 0, 0
    for key, entry in incoming.items():
        old = existing.get(key)
        if old == entry:
            continue
        if old is not None and isinstance(old, dict) and isinstance(entry, dict) and _newer(old, entry):
            kept += 1
            continue
        new[key] = entry
        updated += old is not None
    unchanged = len(incoming) - len(new) - kept
    line = (f"{target.relative_to(repo)}: +{len(new) - updated} new, {updated} updated, {unchanged} unchanged"
            + (f", {kept} kept (the checkout's entry is newer)" if kept else "") + ("" if new else " (not written)"))
    return target, new, line


def lay(archive: Path, repo: Path, *, dry_run: bool = False, logs: str | None = None, allow_fake: bool = False,
        log=print) -> dict:
    """Lay ``archive`` into ``repo``; returns {"tables": [...], "results": [...], "logs": [...]} of lines."""
    if not (repo / "autotune_configs").is_dir() or not (repo / "benchmarks").is_dir():
        raise Refused(f"{repo} is not an mcconv checkout (no autotune_configs/ or benchmarks/)")
    manifest, items = read_archive(archive)
    if manifest.get("fake") and not allow_fake:
        raise Refused("this archive comes from a FAKE run (stub timings, made by the tests): not laid in "
                      "(--allow-fake to do it anyway)")
    device = manifest["device"]
    run_id = manifest.get("run_id") or "unknown-run"
    if not NAME.match(run_id):
        run_id = re.sub(r"[^A-Za-z0-9._-]", "_", run_id)
    prefix = "(dry run) " if dry_run else ""
    log(f"{prefix}laying {archive} (run {run_id}, device {device}) into {repo}")
    digest = manifest.get("source_digest")
    if digest:
        here = _source_digest(repo)
        if here and here != digest:
            log(f"  note: measured on other sources than this checkout's (sources {digest[:12]}, here {here[:12]})")
    done = {"tables": [], "results": [], "logs": []}
    results = repo / "benchmarks" / "results" / device
    logs_dir = None if logs == "none" else (Path(logs) if logs else repo / "build" / "gpu-runs" / run_id)
    writes = []  # (kind, what) decided first: a bad table refuses the archive before anything is written
    for kind, parts, rel, data in items:
        if kind == "table":
            kernel = parts[0]
            if not (repo / "autotune_configs" / kernel).is_dir():
                done["tables"].append(f"autotune_configs/{kernel}/{device}.json: left out, the checkout has no "
                                      f"kernel {kernel!r}")
                continue
            target, new, line = plan_table(repo, kernel, device, data)
            doc = json.loads(data)  # the GPU machine's versions, not this one's, go into the table
            versions = {k: doc[k] for k in ("triton", "torch") if isinstance(doc.get(k), str)}
            writes.append(("table", (target, kernel, new, versions)))
            done["tables"].append(line)
        elif kind in ("result", "meta"):
            name = {"MANIFEST.json": "gpu-run.json", "summary.txt": "gpu-run-summary.txt"}.get(rel, parts[0])
            writes.append(("file", (results / name, data, "results")))
        elif kind == "log" and logs_dir is not None:
            writes.append(("file", (logs_dir / "logs" / parts[0], data, "logs")))
    for kind, what in writes:
        if kind == "table":
            target, kernel, new, versions = what
            if new and not dry_run:
                _tune_module(repo).write_entries(target, kernel, device, new, versions=versions)
        else:
            path, data, section = what
            shown = path.relative_to(repo) if path.is_relative_to(repo) else path
            done[section].append(f"{shown}: {_write_if_changed(path, data, dry_run)}")
    for section in ("tables", "results", "logs"):
        for line in done[section]:
            log(f"  {prefix}{line}")
    if logs_dir is None:
        log("  logs not laid (--logs none)")
    return done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="See the module docstring for what goes where.")
    p.add_argument("archive", help="gpu-run.tar.gz from a GPU run's $OUT")
    p.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]),
                   help="the checkout to lay into (default: this script's)")
    p.add_argument("--dry-run", action="store_true", help="say what would change; write nothing")
    p.add_argument("--logs", help="folder for the run's logs (default: <repo>/build/gpu-runs/<run id>; 'none': skip)")
    p.add_argument("--allow-fake", action="store_true", help="also lay an archive of a fake (test) run")
    args = p.parse_args(argv)
    try:
        lay(Path(args.archive), Path(args.repo).resolve(), dry_run=args.dry_run, logs=args.logs,
            allow_fake=args.allow_fake)
    except Refused as err:
        print(f"lay_results.py: refused: {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:
        print(f"lay_results.py: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

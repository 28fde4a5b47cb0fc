"""Run a configuration's stages several at a time: what `dvc repro` does, side by side.

    python -m backdoorlab.parallel cifar10-cpu --jobs 10            # every stage, then the report
    python -m backdoorlab.parallel cifar10-cpu --jobs 10 --stages 'train*@badnets-*' 'defend_*@badnets-*'
    python -m backdoorlab.parallel sweep-a sweep-b --jobs 12 --stop-launching 400 --kill 480
    python -m backdoorlab.worker python -m backdoorlab.parallel demo --jobs 2 --repro   # `make demo`

DVC runs one stage at a time. On a GPU one WRN-16-1 at batch 128 leaves most of the card
idle, and each attack's chain (poison -> training | isolation -> defenses, per seed) is
independent of the others, so running them side by side divides the wall time (an H100:
the 71 stages of cifar10-cpu/ with three seeds in 6 minutes). The graph and the commands
are read from each folder's dvc.yaml (its `matrix` blocks expanded over params.yaml and
`vars`, a stage waiting for every stage whose outputs its deps name), so this runs exactly
the stages DVC would, in an order DVC would accept. Seed 0 of everything comes first, then
seed 1..., and within a seed the longest chains: a deadline cuts whole seeds last.
Nothing is cached or skipped: DVC does that. `dvc commit` afterwards records the outputs
in dvc.lock as if `dvc repro` had made them.

With --repro it skips and records as DVC does, so that it can stand in for `dvc repro`:
it runs only the stages `dvc status` reports changed and those waiting on them, records
them with `dvc commit` (dvc.lock and DVC's run cache, as `dvc repro` would), then asks
`dvc status` again and runs `dvc repro` if anything was missed. Unlike `dvc repro` it
does not restore a stage from DVC's run cache: it runs it again. On a small CPU this is
how stages should run side by side: two stages on one thread each get more done than
one on two threads (demo training stages: 1.5x on a 2-core machine), and the
configuration's `train.threads` fixes the thread count, so the numbers are the same
as `dvc repro`'s.

Each stage's output goes to <folder>/run-logs/<stage>.log, the timeline (start, end,
status of every stage) to <folder>/run-logs/timeline.json. Stages run with one CPU thread
(OMP_NUM_THREADS=1) unless their configuration's `train.threads` says otherwise.
Patterns (fnmatch, on stage names such as `train@badnets-0`) keep the matching stages
and everything they wait for.
"""
from __future__ import annotations

import argparse
import fnmatch
import functools
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .storage import save_json


@dataclass
class Stage:
    name: str
    cmd: str
    deps: list[str]
    outs: list[str]
    seed: int = -1  # the matrix item's seed, -1 for stages that do not expand over seeds
    after: set[str] = field(default_factory=set)  # stages whose outputs it reads
    chain: int = 0  # the longest run of stages waiting on it, itself included


def _paths(entries) -> list[str]:
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def _inside(a: str, b: str) -> bool:
    return a == b or a.startswith(b.rstrip("/") + "/")


def stages(folder: str | Path) -> dict[str, Stage]:
    """Every stage of folder/dvc.yaml, matrix blocks expanded, with what it waits for."""
    folder = Path(folder)
    spec = yaml.safe_load((folder / "dvc.yaml").read_text())
    context = {**yaml.safe_load((folder / "params.yaml").read_text()),
               **{k: v for entry in spec.get("vars", []) for k, v in entry.items()}}
    out: dict[str, Stage] = {}
    for name, block in spec["stages"].items():
        axes = {k: context[v[2:-1]] if isinstance(v, str) and v.startswith("${") else v
                for k, v in block.get("matrix", {}).items()}
        for combo in itertools.product(*axes.values()) if axes else [()]:
            item = dict(zip(axes, combo))

            def sub(text: str) -> str:
                return re.sub(r"\$\{item\.(\w+)\}", lambda m: str(item[m.group(1)]), text)

            full = f"{name}@{'-'.join(map(str, combo))}" if axes else name
            outs = [sub(p) for key in ("outs", "metrics", "plots") for p in _paths(block.get(key))]
            out[full] = Stage(full, sub(block["cmd"]), [sub(p) for p in _paths(block.get("deps"))], outs,
                              int(item.get("seed", -1)))
    for stage in out.values():
        stage.after = {other.name for other in out.values() if other is not stage
                       and any(_inside(d, o) or _inside(o, d) for d in stage.deps for o in other.outs)}
    waiting_on = {name: [s.name for s in out.values() if name in s.after] for name in out}

    @functools.cache
    def chain(name: str) -> int:
        return 1 + max((chain(n) for n in waiting_on[name]), default=0)

    for stage in out.values():
        stage.chain = chain(stage.name)
    return out


def select(graph: dict[str, Stage], patterns: list[str]) -> dict[str, Stage]:
    """The stages matching any pattern, and everything they wait for; all of them without patterns."""
    if not patterns:
        return graph
    keep = {n for n in graph if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
    todo = list(keep)
    while todo:
        for upstream in graph[todo.pop()].after - keep:
            keep.add(upstream)
            todo.append(upstream)
    return {n: s for n, s in graph.items() if n in keep}


def waiting_on(graph: dict[str, Stage], names: set[str]) -> dict[str, Stage]:
    """The stages named, and every stage that waits on them (directly or not)."""
    keep = set(names) & set(graph)
    grown = True
    while grown:
        more = {n for n, s in graph.items() if n not in keep and s.after & keep}
        keep |= more
        grown = bool(more)
    return {n: s for n, s in graph.items() if n in keep}


def dvc(folder: Path, *args: str, capture: bool = False) -> subprocess.CompletedProcess:
    """DVC (through backdoorlab.dvcrun, DVC with a cheaper dvc.lock rewrite) on folder/dvc.yaml."""
    return subprocess.run([sys.executable, "-m", "backdoorlab.dvcrun", *args], cwd=folder, check=True,
                          text=True, stdout=subprocess.PIPE if capture else None)


def changed(folder: Path) -> set[str]:
    """The stages of folder/dvc.yaml that `dvc status` reports changed (or never run)."""
    return set(json.loads(dvc(folder, "status", "--json", "dvc.yaml", capture=True).stdout or "{}"))


def run(folders: list[Path], patterns: list[str], jobs: int, stop_launching: float, kill: float,
        repro: bool = False) -> int:
    graph, where = {}, {}
    for k, folder in enumerate(folders):  # several folders: one graph each, names prefixed
        prefix = f"{folder}:" if len(folders) > 1 else ""
        (folder / "run-logs").mkdir(exist_ok=True)
        chosen = select(stages(folder), patterns)
        if repro:
            chosen = waiting_on(chosen, changed(folder))
            print(f"{folder.resolve().name}: {len(chosen)} of its stages changed or wait on a change", flush=True)
        for stage in chosen.values():
            stage.after = {prefix + a for a in stage.after if a in chosen}  # the rest is up to date
            graph[prefix + stage.name] = stage
            where[prefix + stage.name] = (folder, k)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    state: dict[str, str] = {}
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    timeline = []
    t0 = time.time()

    def priority(name: str):
        return graph[name].seed, -graph[name].chain, where[name][1]

    while True:
        now = time.time() - t0
        for name, (proc, start) in list(running.items()):
            code = proc.poll()
            if code is None and now > kill:
                proc.send_signal(signal.SIGTERM)
                code = proc.wait()
            if code is not None:
                del running[name]
                state[name] = "ok" if code == 0 else "failed"
                timeline.append({"stage": name, "start_s": round(start, 1), "end_s": round(now, 1),
                                 "status": state[name], "exit": code})
                print(f"{now:7.1f} s  {state[name]:6s} {name}  ({now - start:.1f} s)  "
                      f"[{sum(v in ('ok', 'failed') for v in state.values())}/{len(graph)}]", flush=True)
                if code != 0:
                    log = where[name][0] / "run-logs" / f"{graph[name].name.replace('@', '_')}.log"
                    print("".join(log.read_text(errors="replace").splitlines(True)[-15:]), end="", flush=True)
        for name, stage in graph.items():
            if name not in state and any(state.get(a) in ("failed", "skipped") for a in stage.after):
                state[name] = "skipped"
        waiting = sorted((n for n, s in graph.items() if n not in state
                          and all(state.get(a) == "ok" for a in s.after)), key=priority)
        while waiting and now < stop_launching and len(running) < jobs:
            name = waiting.pop(0)
            folder = where[name][0]
            argv = shlex.split(graph[name].cmd)
            argv[0] = sys.executable if argv[0] == "python" else argv[0]  # the interpreter running this
            with open(folder / "run-logs" / f"{graph[name].name.replace('@', '_')}.log", "w") as log:
                running[name] = (subprocess.Popen(argv, cwd=folder, stdout=log,
                                                  stderr=subprocess.STDOUT, env=env), now)
            state[name] = "running"
            print(f"{now:7.1f} s  start  {name}", flush=True)
        if not running and (not waiting or now >= stop_launching):
            break
        time.sleep(0.5)
    left = [n for n in graph if state.get(n) != "ok"]
    save_json(folders[0] / "run-logs" / "timeline.json",
              {"wall_s": round(time.time() - t0, 1), "jobs": jobs, "stages": timeline, "not_run": left})
    print(f"stages: {len(graph) - len(left)} ok, {sum(state.get(n) == 'failed' for n in left)} failed, "
          f"{sum(state.get(n) != 'failed' for n in left)} not run; {time.time() - t0:.0f} s", flush=True)
    if repro:
        for k, folder in enumerate(folders):
            done = [graph[n].name for n in graph if where[n][1] == k and state.get(n) == "ok"]
            if done:  # what `dvc repro` records after each stage, for all of them at once
                print(f"{folder.resolve().name}: recording {len(done)} stages in dvc.lock (dvc commit)", flush=True)
                dvc(folder, "commit", "--force", *done)
            if not left and changed(folder):  # nothing, unless this missed something: then DVC does it
                dvc(folder, "repro", "dvc.yaml")
    return 1 if any(state.get(n) == "failed" for n in left) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backdoorlab.parallel", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="configuration folders (dvc.yaml + params.yaml)")
    parser.add_argument("--stages", nargs="*", default=[], metavar="PATTERN",
                        help="stage names to run, with what they wait for (fnmatch; default: all)")
    parser.add_argument("--jobs", type=int, default=8, help="stages at a time (default 8)")
    parser.add_argument("--stop-launching", type=float, default=float("inf"), metavar="S",
                        help="start nothing new after S seconds")
    parser.add_argument("--kill", type=float, default=float("inf"), metavar="S",
                        help="stop the stages still running after S seconds (their outputs are not written)")
    parser.add_argument("--repro", action="store_true",
                        help="as `dvc repro`: only what `dvc status` says changed and what waits on it, recorded "
                             "in dvc.lock by `dvc commit`, then `dvc repro` if `dvc status` still finds a change")
    args = parser.parse_args(argv)
    for folder in args.folders:
        if not (folder / "dvc.yaml").is_file() or not (folder / "params.yaml").is_file():
            parser.exit(2, f"{folder}: needs dvc.yaml and params.yaml\n")
    try:
        return run(args.folders, args.stages, args.jobs, args.stop_launching, args.kill, args.repro)
    except subprocess.CalledProcessError as exc:  # DVC said why on stderr
        parser.exit(2, f"error: `dvc {exc.cmd[3]}` failed (exit {exc.returncode}): DVC says why above\n")


if __name__ == "__main__":
    sys.exit(main())

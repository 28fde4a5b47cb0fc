"""Benchmark: the machine, the bare training step, and the pipeline stage by stage.

    python -m benchmarks.bench                        # everything: the bare step, then the whole demo
    python -m benchmarks.bench --skip-pipeline        # the machine and the bare step only
    python -m benchmarks.bench --models convnet --batch-sizes 128 --images 256 \\
        --config demo --seeds 1 --targets train_clean@0   # a quick check: the data stage and one training

What it does, in order:

1. The machine: CPU model, torch threads, whether bf16 is native (avx512_bf16 or
   amx_bf16 among the CPU flags), the torch version and the GPU when CUDA is there.

2. The bare training step, for each model x precision (fp32, bf16) x memory layout
   (contiguous, channels_last) x batch size: images per second of the real training
   loop (backdoorlab.training.train_epoch: batched crop and flip on the device,
   forward, backward, SGD) on random 32x32 RGB images, --images per timed run after
   a two-batch warm-up. Then the best configuration per model, and what
   `train.precision: auto` would choose on this machine (runtime.measure_cpu_options;
   on CUDA `auto` is always bf16).

3. The pipeline (unless --skip-pipeline): a fresh temporary folder laid out like the
   configuration (--config: demo/, cifar10-cpu/ or the repository root), with its
   dvc.yaml and params.yaml and copies of stages/ and backdoorlab/; a relative
   data.source is made absolute, --seeds N sets `seeds: [0, ..., N-1]`. There
   `dvc init --no-scm`, then `python -m backdoorlab.worker python -m dvc repro
   [TARGETS]` (stages warm-started; --no-worker: plain `dvc repro`), nothing cached.
   Each stage appends its timings to $BACKDOORLAB_TIMINGS (backdoorlab/runner.py).
   Printed per stage: wall, start-up (interpreter and imports), data, training,
   evaluation, poisoning, pictures, other, and the images/s its training loop got.
   Totals: wall; stages; overhead = per stage start-up + other (wall minus its
   data, training, evaluation, poisoning and pictures), plus DVC's own time (total
   wall minus the stages' walls, shared out per stage; it includes the worker's
   one-off start and each stage's small client process), as a sum and a mean per
   stage; and the images/s of the stages whose training is the plain step of the
   config's `train.arch` (train, isolate, defend; a non-adversarial surrogate of
   that arch), weighted by their training time (all their images over all their
   seconds), as a percentage of the best bare step of that model measured in step 2
   (n/a unless the model is among --models). The pipeline's images may differ from
   the bare step's 32x32 RGB ones (the demo: 28x28 grey): the shape is printed.
   Peak memory is the largest resident set of any one process of the run (a stage,
   DVC or the worker), read as RUSAGE_CHILDREN of a fresh, small Python parent.

4. Everything is written as JSON to benchmarks/results/<cpu>-<threads>t.json (with
   the GPU's name in front on CUDA), or --output: date, git commit, torch version,
   the arguments, the machine, the step table, the stage rows and the totals.

Figures are printed and written, never asserted: timing belongs here, not in the tests.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # figures only, no progress bars between them

import numpy as np
import torch
import yaml

from backdoorlab.models import ARCHITECTURES, new_model
from backdoorlab.runtime import (Runtime, cpu_family_model, cpu_model, cpuinfo_field, kernel_isa,
                                 measure_cpu_options)
from backdoorlab.storage import save_json
from backdoorlab.training import TrainOptions, sgd, train_epoch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIGS = {"demo": ROOT / "demo", "cifar10-cpu": ROOT / "cifar10-cpu", "root": ROOT}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
LAYOUTS = {"contiguous": False, "channels_last": True}
WORK_PHASES = ("data", "training", "evaluation", "poisoning", "pictures")  # printed in this order
NOT_WORK = ("startup", "other")  # any phase not named here counts as work
PLAIN_TRAINING = ("train", "isolate", "defend")  # stages whose training loop is the plain step of train.arch


# ---------------------------------------------------------------- the machine

def cpu_flags() -> set[str]:
    return set((cpuinfo_field("flags") or "").split())


def machine() -> dict:
    flags = cpu_flags()
    cuda = torch.cuda.is_available()
    return {"cpu": cpu_model(), "cpu_family_model": cpu_family_model(), "kernel_isa": kernel_isa(),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "bf16_native": bool(flags & {"avx512_bf16", "amx_bf16"}),
            "bf16_flags": sorted(flags & {"avx512_bf16", "amx_bf16", "avx512f"}),
            "torch": torch.__version__, "gpu": torch.cuda.get_device_name() if cuda else None,
            "device": "cuda" if cuda else "cpu"}


def slug(cpu: str, threads: int, gpu: str | None = None, family_model: str | None = None) -> str:
    """A file name for a machine: 'AMD EPYC', 2, family_model '25/17' -> 'amd-epyc-f25m17-2t' (a GPU's name
    goes in front)."""
    def clean(name: str) -> str:
        name = re.sub(r"\((r|tm|c)\)|\b(cpu|processor)\b|\d+-core", " ", name.lower())
        return "-".join(re.findall(r"[a-z0-9]+", name))

    parts = [clean(gpu)] if gpu else []
    if family_model:
        family, _, model = family_model.partition("/")
        parts.append(f"{clean(cpu) or 'unknown-cpu'}-f{family}m{model}")
    else:
        parts.append(clean(cpu) or "unknown-cpu")
    return "-".join([*parts, f"{threads}t"])


def git_state() -> dict:
    def git(*cmd: str) -> str | None:
        try:
            done = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": None if status is None else bool(status)}


# ---------------------------------------------------------------- the bare step

def step_throughput(arch: str, precision: str, channels_last: bool, batch_size: int, images: int) -> float:
    """Images/s of train_epoch on `images` random 32x32 RGB images, after a two-batch warm-up."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rt = Runtime(device, PRECISIONS[precision], channels_last)
    opts = TrainOptions(epochs=1, lr=0.01, batch_size=batch_size, augment="crop_flip")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, images)
    model = rt.prepare(new_model(arch, x, 10, 0))
    xt, yt = rt.tensors(x, y)
    optimizer = sgd(model, opts)
    gen = torch.Generator(device=device).manual_seed(0)
    train_epoch(model, xt[: 2 * batch_size], yt[: 2 * batch_size], optimizer, rt, opts, gen)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    train_epoch(model, xt, yt, optimizer, rt, opts, gen)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def best_steps(rows: list[dict]) -> dict[str, dict]:
    """The fastest step row per model."""
    best: dict[str, dict] = {}
    for row in rows:
        if row["model"] not in best or row["images_per_s"] > best[row["model"]]["images_per_s"]:
            best[row["model"]] = row
    return best


def run_steps(args) -> dict:
    images = args.images
    print(f"bare training step: random 32x32 RGB images, crop+flip, {images} per timed run "
          f"(at least one batch) after a 2-batch warm-up; images/s")
    columns = [(p, layout) for p in args.precisions for layout in args.layouts]
    names = [p + ("+cl" if layout == "channels_last" else "") for p, layout in columns]
    print("  " + f"{'model':10s} {'batch':>5s} " + " ".join(f"{n:>8s}" for n in names) + "   (cl: channels_last)")
    rows = []
    for arch in args.models:
        for batch_size in args.batch_sizes:
            cells = []
            for precision, layout in columns:
                speed = step_throughput(arch, precision, LAYOUTS[layout], batch_size, max(images, batch_size))
                rows.append({"model": arch, "batch_size": batch_size, "precision": precision, "layout": layout,
                             "images_per_s": round(speed, 1)})
                cells.append(f"{speed:8.0f}")
            print("  " + f"{arch:10s} {batch_size:5d} " + " ".join(cells), flush=True)
    best = best_steps(rows)
    for arch, row in best.items():
        print(f"  best {arch}: {row['precision']} {row['layout']} batch {row['batch_size']}, "
              f"{row['images_per_s']:.0f} images/s")
    auto: dict[str, dict] = {}
    for arch in args.models:
        auto[arch] = {}
        for batch_size in args.batch_sizes:
            if torch.cuda.is_available():
                auto[arch][str(batch_size)] = {"choice": "bf16_channels_last", "images_per_s": None}
            else:
                auto[arch][str(batch_size)] = measure_cpu_options(arch, batch_size)
        choices = ", ".join(f"batch {b}: {c['choice']}" for b, c in auto[arch].items())
        print(f"  train.precision: auto would choose for {arch}: {choices}"
              + (" (CUDA: always bf16)" if torch.cuda.is_available() else ""), flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(f"  peak memory of the step runs: {peak:.0f} MiB")
    return {"images": images, "image_shape": [32, 32, 3], "augment": "crop_flip", "rows": rows,
            "best": best, "auto": auto, "peak_rss_mib": round(peak, 1)}


# ---------------------------------------------------------------- the pipeline

def edit_params(text: str, seeds: int | None = None, base: Path | None = None) -> str:
    """params.yaml's text with `seeds: [0, ..., seeds-1]` and, when `base` is given, a relative
    data.source path made absolute from `base`. Everything else, comments included, stays."""
    if seeds is not None:
        line = f"seeds: {list(range(seeds))}  # set by benchmarks.bench --seeds {seeds}"
        text, found = re.subn(r"^seeds:.*$", line, text, count=1, flags=re.M)
        if not found:
            text = line + "\n" + text
    if base is not None:
        block = re.search(r"^data:[ \t]*(#.*)?\n((?:[ \t]+.*\n|[ \t]*\n)*)", text, flags=re.M)
        if block:
            source = re.search(r"^([ \t]+source:[ \t]*)([^#\n]*?)([ \t]*(#.*)?)$", block.group(2), flags=re.M)
            if source:
                value = source.group(2).strip().strip("'\"")
                if ("/" in value or value.startswith(".")) and not os.path.isabs(value):
                    new = source.group(1) + json.dumps(os.path.abspath(base / value)) + source.group(3)
                    start = block.start(2) + source.start()
                    text = text[:start] + new + text[block.start(2) + source.end():]
    return text


def prepare_folder(config: Path, work: Path, seeds: int | None) -> dict:
    """Lay out `work` like the configuration folder; returns the params it will run with."""
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(config / "dvc.yaml", work / "dvc.yaml")
    text = edit_params((config / "params.yaml").read_text(), seeds, base=config)
    (work / "params.yaml").write_text(text)
    for package in ("stages", "backdoorlab"):
        shutil.copytree(ROOT / package, work / package, ignore=shutil.ignore_patterns("__pycache__"))
    return yaml.safe_load(text)


def stage_model(stage: str, params: dict) -> str | None:
    """The model a stage's training loop steps plainly (train.arch, or surrogate.arch unless adversarial),
    or None: no training, or training with extra work per image (input-aware generator, PGD)."""
    module = stage.split()[0].removeprefix("stages.")
    if module in PLAIN_TRAINING:
        return (params.get("train") or {}).get("arch")
    surrogate = params.get("surrogate") or {}
    if module == "surrogate" and not surrogate.get("adversarial"):
        return surrogate.get("arch")
    return None


def stage_row(record: dict, params: dict) -> dict:
    phases = record.get("phases_s") or {}
    work = sum(v for k, v in phases.items() if k not in NOT_WORK)
    return {"stage": record["stage"], "model": stage_model(record["stage"], params), "wall_s": record["wall_s"],
            "phases_s": phases, "overhead_s": round(max(0.0, record["wall_s"] - work), 3),
            "trained_images": record.get("trained_images") or 0,
            "train_images_per_s": record.get("train_images_per_s")}


def aggregate(rows: list[dict], wall_s: float, model: str | None, best_step: float | None = None) -> dict:
    """Totals of the stage rows (stage_row's layout) of one run that took `wall_s` in all.

    Overhead: each stage's own (wall minus its work phases) plus DVC's (wall_s minus the stages' walls).
    Images/s: of the rows of `model`, all images over all training seconds, and its share of `best_step`."""
    n = len(rows)
    stage_walls = sum(r["wall_s"] for r in rows)
    dvc = max(0.0, wall_s - stage_walls)
    stage_overhead = sum(r["overhead_s"] for r in rows)
    phases: dict[str, float] = {}
    for r in rows:
        for k, v in r["phases_s"].items():
            phases[k] = round(phases.get(k, 0.0) + v, 3)
    timed = [r for r in rows if r["model"] == model and model is not None
             and r["trained_images"] and r["train_images_per_s"]]
    images = sum(r["trained_images"] for r in timed)
    seconds = sum(r["trained_images"] / r["train_images_per_s"] for r in timed)
    speed = images / seconds if seconds else None
    return {"wall_s": round(wall_s, 3), "stages": n, "stage_wall_s": round(stage_walls, 3),
            "dvc_s": round(dvc, 3), "dvc_per_stage_s": round(dvc / n, 3) if n else None,
            "stage_overhead_s": round(stage_overhead, 3), "overhead_s": round(stage_overhead + dvc, 3),
            "overhead_mean_s": round((stage_overhead + dvc) / n, 3) if n else None, "phases_s": phases,
            "model": model, "model_stages": len(timed), "trained_images": images,
            "train_images_per_s": round(speed, 1) if speed else None,
            "best_step_images_per_s": best_step,
            "step_percent": round(100 * speed / best_step, 1) if speed and best_step else None}


# A fresh, small Python parent: Linux copies a parent's peak RSS into the children it forks, so measuring
# from this process (torch loaded, models trained) would report our own peak instead.
PEAK_OF_CHILDREN = ("import resource, subprocess, sys\n"
                    "with open(sys.argv[1], 'w') as log:\n"
                    "    code = subprocess.call(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT)\n"
                    "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def image_shape(work: Path) -> list[int] | None:
    try:
        with np.load(work / "data" / "dataset.npz") as arrays:
            return list(arrays["x_train"].shape[1:])
    except (OSError, KeyError, ValueError):
        return None


def run_pipeline(args, tmp: Path, best: dict[str, dict]) -> tuple[dict, bool]:
    config = CONFIGS[args.config]
    work = tmp / (config.name if args.config != "root" else "root")
    params = prepare_folder(config, work, args.seeds)
    timings, log = tmp / "timings.jsonl", tmp / "repro.log"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
           "DVC_NO_ANALYTICS": "1", "TQDM_DISABLE": "1", "DVC_SITE_CACHE_DIR": str(tmp / "dvc-site-cache"),
           "BACKDOORLAB_TIMINGS": str(timings)}
    env.pop("BACKDOORLAB_WORKER", None)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=work, env=env, check=True)
    repro = [sys.executable, "-m", "dvc", "repro", *args.targets]
    command = repro if args.no_worker else [sys.executable, "-m", "backdoorlab.worker", *repro]
    train = params.get("train") or {}
    print(f"pipeline: {args.config} ({train.get('arch')}, batch {train.get('batch_size')}, "
          f"{train.get('precision')}; seeds {params.get('seeds')}) in {work}")
    print(f"  $ {' '.join(['python' if c == sys.executable else c for c in command])}", flush=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK_OF_CHILDREN, str(log), *command],
                          cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    code, peak_kib = done.returncode, 0
    if done.returncode == 0:  # the small parent prints the command's exit code and its children's peak RSS
        code, peak_kib = (int(v) for v in done.stdout.split()[-2:])
    records = [json.loads(line) for line in timings.read_text().splitlines() if line.strip()] \
        if timings.exists() else []
    rows = [stage_row(r, params) for r in records]
    model = train.get("arch")
    best_step = best.get(model, {}).get("images_per_s")
    totals = aggregate(rows, wall, model, best_step)
    result = {"config": args.config, "targets": args.targets, "seeds": params.get("seeds"),
              "worker": not args.no_worker, "exit_code": code,
              "command": ["python" if c == sys.executable else c for c in command],
              "train": {k: train.get(k) for k in ("arch", "batch_size", "precision", "augment", "epochs")},
              "image_shape": image_shape(work), "peak_rss_mib": round(peak_kib / 1024, 1),
              "stages": rows, "totals": totals}
    print_pipeline(result)
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-40:] if log.exists() else [done.stderr]
        sys.stdout.flush()
        print(f"  the run failed (exit {code}); the end of its output:", *tail, sep="\n    ", file=sys.stderr)
    return result, code == 0


def seconds(value: float | None) -> str:
    return f"{'-':>7s}" if value is None else f"{value:7.1f}"


def print_pipeline(result: dict) -> None:
    short = {"training": "train", "evaluation": "eval", "poisoning": "poison", "pictures": "pics"}
    heads = ["wall", "start", *[short.get(p, p) for p in WORK_PHASES], "other", "img/s"]
    print("  " + f"{'stage':34s} {'model':8s}" + "".join(f"{h:>8s}" for h in heads) + "   (seconds)")
    for r in result["stages"]:
        ph = r["phases_s"]
        cells = [seconds(r["wall_s"]), seconds(ph.get("startup"))]
        cells += [seconds(ph.get(p)) for p in WORK_PHASES] + [seconds(ph.get("other"))]
        ips = r["train_images_per_s"]
        cells.append(f"{ips:7.0f}" if ips else f"{'-':>7s}")
        name = r["stage"].removeprefix("stages.")
        print("  " + f"{name:34s} {r['model'] or '-':8s}" + "".join(" " + c for c in cells))
    t = result["totals"]
    print(f"  total: {t['wall_s']:.1f} s wall, {t['stages']} stage{'s' if t['stages'] != 1 else ''} "
          f"({t['stage_wall_s']:.1f} s in them), "
          f"peak memory of one process {result['peak_rss_mib']:.0f} MiB")
    if t["stages"]:
        print(f"  overhead: {t['overhead_s']:.1f} s in all, {t['overhead_mean_s']:.2f} s per stage "
              f"(start-up + other {t['stage_overhead_s']:.1f} s, DVC {t['dvc_s']:.1f} s = "
              f"{t['dvc_per_stage_s']:.2f} s per stage)")
    shape = "x".join(map(str, result["image_shape"])) if result["image_shape"] else "?"
    if t["train_images_per_s"]:
        step = (f"{t['step_percent']:.0f}% of the best bare step ({t['best_step_images_per_s']:.0f} images/s, "
                f"32x32x3)" if t["step_percent"] else f"bare step of {t['model']}: n/a (not among --models)")
        stages = f"{t['model_stages']} stage{'s' if t['model_stages'] > 1 else ''}"
        print(f"  training of {t['model']} in {stages}: {t['train_images_per_s']:.0f} images/s "
              f"({shape} images), {step}")
    else:
        print(f"  no stage trained {t['model']} plainly: no images/s to compare")


# ---------------------------------------------------------------- main

def parser() -> argparse.ArgumentParser:
    models = sorted(ARCHITECTURES)
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    step = p.add_argument_group("bare training step")
    step.add_argument("--models", nargs="+", default=["wrn16-1", "convnet"], choices=models, metavar="MODEL",
                      help=f"models to time ({', '.join(models)}; default wrn16-1 convnet)")
    step.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS),
                      help="default fp32 bf16")
    step.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS),
                      help="memory layouts (default contiguous channels_last)")
    step.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 256], metavar="N",
                      help="default 128 256")
    step.add_argument("--images", type=int, default=1024, help="images per timed run (default 1024)")
    pipe = p.add_argument_group("pipeline")
    pipe.add_argument("--skip-pipeline", action="store_true", help="time the bare step only")
    pipe.add_argument("--config", choices=list(CONFIGS), default="demo",
                      help="the configuration folder to copy: demo/, cifar10-cpu/ (needs ../shared) or the "
                           "repository root (paper scale) (default demo)")
    pipe.add_argument("--targets", nargs="+", default=[], metavar="STAGE",
                      help="dvc repro targets, e.g. train_clean@0 (default: the whole pipeline)")
    pipe.add_argument("--seeds", type=int, metavar="N", help="set the copied params' seeds to [0, ..., N-1]")
    pipe.add_argument("--no-worker", action="store_true",
                      help="plain `dvc repro`: every stage starts its own interpreter and imports torch")
    pipe.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    p.add_argument("--output", type=Path, metavar="FILE",
                   help="where the JSON goes (default benchmarks/results/<machine slug>.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        parser().error("--seeds must be at least 1")
    info = machine()
    print(f"machine: {info['cpu']} ({info['cpu_count']} CPUs), {info['threads']} torch threads, "
          f"bf16 {'native' if info['bf16_native'] else 'not native'}, torch {info['torch']}"
          + (f", GPU {info['gpu']}" if info["gpu"] else ", no GPU"), flush=True)
    report = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), **git_state(),
              "torch": info["torch"], "command": ["python", "-m", "benchmarks.bench", *(argv or sys.argv[1:])],
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "machine": info}
    report["step"] = run_steps(args)
    ok = True
    report["pipeline"] = None
    if not args.skip_pipeline:
        tmp = Path(tempfile.mkdtemp(prefix="backdoorlab-bench-"))
        try:
            report["pipeline"], ok = run_pipeline(args, tmp, report["step"]["best"])
        finally:
            if args.keep:
                print(f"  kept {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    name = slug(info["cpu"], info["threads"], info["gpu"], info["cpu_family_model"])
    output = args.output or RESULTS / f"{name}.json"
    save_json(output, report)
    print(f"written: {output}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

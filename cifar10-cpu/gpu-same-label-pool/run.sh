#!/usr/bin/env bash
# cifar10-cpu/ with seeds 0, 1 and 2 on one CUDA GPU, its stages side by side
# (python -m backdoorlab.parallel), with abl's same_label_pool set to `unsuspicious`
# and, beside it on the same isolations and no-defense models, a third defense entry
# `abl_low_projection`: the same unlearning with `low_projection` (what cifar10-cpu/
# commits). Every other param is cifar10-cpu/params.yaml's.
#
#   bash cifar10-cpu/gpu-same-label-pool/run.sh MIRROR [OUTDIR] [key=value ...]
#
# MIRROR: the CIFAR-10 JPEG mirror (.tar.gz). The table goes to gpu-table/ (or $TABLE) at
# the repository root; SETUP_ONLY=1 only writes that folder's params.yaml and dvc.yaml.
# OUTDIR (if given) gets results.tar.gz (metrics, logs, plots, isolated indices, stage
# logs) and the no-defense, fine-tuned, attacker and surrogate models.
# key=value pairs (dotted params.yaml keys, YAML values) are applied last, e.g. for a
# quick check on a CPU.
#
# The third entry is added to the defense registry of the copy it runs in: it is a
# comparison, not a defense the project ships, so the registry line is written here, and
# this script edits backdoorlab/defenses/__init__.py: run it in a throw-away copy.
# DVC is not needed; dvclive must be importable.
set -euo pipefail
mirror=$(realpath "$1"); out=${2:+$(realpath "$2")}; shift; [ $# -gt 0 ] && shift
cd "$(dirname "$0")/../.."
grep -q '"abl_low_projection"' backdoorlab/defenses/__init__.py ||
  sed -i 's|^    "abl_paper": "abl:ABL",|&\n    "abl_low_projection": "abl:ABL",|' backdoorlab/defenses/__init__.py
table=${TABLE:-gpu-table}
rm -rf "$table" && mkdir "$table" && ln -s ../stages ../backdoorlab "$table"/
python3 - "$mirror" "$table" "$@" <<'EOF'
import copy, sys, yaml
params = yaml.safe_load(open("cifar10-cpu/params.yaml"))
params["seeds"] = [0, 1, 2]
params["data"]["source"] = sys.argv[1]
params["abl"]["same_label_pool"] = "unsuspicious"
params["abl_low_projection"] = {**params["abl"], "same_label_pool": "low_projection"}
for pair in sys.argv[3:]:
    key, value = pair.split("=", 1)
    *path, last = key.split(".")
    node = params
    for part in path:
        node = node[part]
    node[last] = yaml.safe_load(value)
yaml.safe_dump(params, open(f"{sys.argv[2]}/params.yaml", "w"), sort_keys=False)
pipeline = yaml.safe_load(open("cifar10-cpu/dvc.yaml"))
stage = copy.deepcopy(pipeline["stages"]["defend_abl"])
rename = lambda text: text.replace("/abl.", "/abl_low_projection.").replace("logs/abl/", "logs/abl_low_projection/")
stage["cmd"] = stage["cmd"].replace("defend abl ", "defend abl_low_projection ")
stage["params"] = ["abl_low_projection." + p.split(".", 1)[1] if p.startswith("abl.") else p for p in stage["params"]]
for key in ("outs", "metrics", "plots"):
    stage[key] = [rename(e) if isinstance(e, str) else {rename(k): v for k, v in e.items()} for e in stage[key]]
stages = {}
for name, block in pipeline["stages"].items():  # beside defend_abl: it runs before the paper's, seed by seed
    stages[name] = block
    if name == "defend_abl":
        stages["defend_abl_low_projection"] = stage
yaml.safe_dump({**pipeline, "stages": stages}, open(f"{sys.argv[2]}/dvc.yaml", "w"), sort_keys=False)
EOF
grep -c "abl_low_projection" "$table"/dvc.yaml "$table"/params.yaml
[ -n "${SETUP_ONLY:-}" ] && exit 0
python3 -c "import platform, torch; print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
grep -m1 "model name" /proc/cpuinfo; echo "cores: $(nproc)"
(cd "$table" && python3 -c "
import stages.data, stages.poison, stages.surrogate, stages.attacker, stages.train, stages.score_clean
import stages.isolate, stages.defend, stages.report
from backdoorlab.curves import Curves
from backdoorlab.defenses import defense_class
defense_class('abl_low_projection')
with Curves('/tmp/curves-check') as c: c.log({'x': 1.0})
print('imports ok')")
python3 -m backdoorlab.parallel "$table" --jobs "${JOBS:-14}" --stop-launching "${STOP_LAUNCHING:-inf}" \
  --kill "${KILL:-inf}" || echo "some stages failed or were not run"
(cd "$table" && python3 -m stages.report) > "$table"/run-logs/report.log 2>&1 || echo "report failed"
if [ -n "$out" ]; then  # the tables, curves and logs; the no-defense and fine-tuned models apart, per seed
  cd "$table"
  tar czf "$out/results.tar.gz" params.yaml dvc.yaml metrics logs plots run-logs $(ls -d data/isolated 2>/dev/null)
  for seed in 0 1 2; do
    tar cf "$out/models-seed$seed.tar" $(ls models/*/seed$seed/no_defense.pt models/*/seed$seed/finetuned.pt 2>/dev/null) || true
  done
  tar cf "$out/models-attack.tar" $(ls models/attacker.pt models/surrogate.pt 2>/dev/null) || true
fi

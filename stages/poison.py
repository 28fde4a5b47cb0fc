"""Stage `poison_<attack>`: build an attack's poisoned training set and triggered test set.

Reads   data/dataset.npz; params attack.target, attack.seed and the attack's own knobs
        (see `backdoorlab/attacks/<attack>.py`; dvc.yaml lists them per attack), and train.threads
        where the attack computes with a model
Writes  data/poisoned/<attack>/train.npz  x, y (as trained), y_true, poison_indices (ground truth)
        data/poisoned/<attack>/test.npz   x, y (= target), y_true, indices: non-target test images, triggered
        data/poisoned/<attack>/meta.json  attack, target, knobs, counts, classes
        plots/gallery/<attack>.png        clean vs poisoned training images, and the trigger
        plots/gallery/<attack>_*.png      any extra pictures the attack draws (e.g. clean_label_eps.png)
"""
from __future__ import annotations

from pathlib import Path

from backdoorlab import params
from backdoorlab.attacks import attack_class, param_keys
from backdoorlab.dataset import Dataset
from backdoorlab.gallery import trigger_gallery
from backdoorlab.layout import DATASET, gallery_file, poisoned_dir
from backdoorlab.runner import phase, require, run_stage, stage_parser
from backdoorlab.storage import save_arrays, save_figure, save_json


def main(args) -> None:
    cls = attack_class(args.attack)
    name = args.attack
    p = params.load(param_keys(name), extra={f"attack.{k}": spec for k, spec in cls.knobs.items()})
    require(DATASET, *map(Path, cls.inputs))
    data = Dataset.load(DATASET)
    params.check_target(p["attack.target"], data.num_classes)
    knobs = {k: p[f"attack.{k}"] for k in cls.knobs}
    attack = cls(knobs, p["attack.target"], p["attack.seed"])
    attack.load_inputs(p.get("train.threads", 0))
    with phase("poisoning"):
        sets = attack.make_sets(data.x_train, data.y_train, data.x_test, data.y_test)

    out = poisoned_dir(name)
    save_arrays(out / "train.npz", x=sets.x_train, y=sets.y_train, y_true=sets.y_train_true,
                poison_indices=sets.poison_indices)
    save_arrays(out / "test.npz", x=sets.x_test, y=sets.y_test, y_true=sets.y_test_true,
                indices=sets.test_indices)
    save_json(out / "meta.json", {
        "attack": name, "target": attack.target, "clean_label": cls.clean_label, "knobs": knobs,
        "poisoned_train": int(len(sets.poison_indices)), "train": int(len(sets.y_train)),
        "triggered_test": int(len(sets.y_test)), "classes": data.classes})
    shown = sets.poison_indices[:8]
    titles = [f"{data.classes[a]}->{data.classes[b]}" for a, b in zip(sets.y_train_true[shown], sets.y_train[shown])]
    with phase("pictures"):
        gallery = trigger_gallery(data.x_train[shown], sets.x_train[shown], titles,
                                  f"{name}: {len(sets.poison_indices)} of {len(sets.y_train)} training images "
                                  f"poisoned, target {data.classes[attack.target]!r}",
                                  pattern=attack.pattern(data.x_train.shape[1:]))
        for figure_name, figure in {"": gallery, **attack.figures(data.x_train, data.y_train)}.items():
            save_figure(gallery_file(name, figure_name), figure)
    print(f"{name}: poisoned {len(sets.poison_indices)}/{len(sets.y_train)} training images "
          f"({'labels kept' if cls.clean_label else f'relabelled to {attack.target}'}); "
          f"{len(sets.y_test)} triggered test images -> {out}")


if __name__ == "__main__":
    parser = stage_parser("poison", __doc__)
    parser.add_argument("attack", help="a registered attack, e.g. badnets")
    run_stage(main, parser)

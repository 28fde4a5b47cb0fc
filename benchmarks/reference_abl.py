"""Time the reference implementation of ABL (github.com/bboylyg/ABL) on this machine, offline.

    git clone https://github.com/bboylyg/ABL /some/where/ABL       # not part of this project
    python -m benchmarks.reference_abl convert /some/where/ABL \\
        --mirror ../shared/datasets/cifar10-jpeg-mirror.tar.gz --sha256 <the mirror's sha256>
    python -m benchmarks.reference_abl run /some/where/ABL --phases isolate unlearn nodefense

`convert` writes the CIFAR-10 JPEG mirror in torchvision's `cifar-10-batches-py` layout
under the reference code's `data/CIFAR10/`, in one fixed random order: the mirror lists
the images class by class, and the reference isolation reads its training set
unshuffled. `run` runs the reference code on the schedule issue 11 names (WRN-16-1,
all 50,000 images, BadNets 10% on target 0, batch 128, fp32 on the CPU): `isolate`
(its backdoor_isolation.py: 5 LGA epochs, the per-example loss ranking at batch size 1,
writing the isolated and other sets), `unlearn` (its backdoor_unlearning.py: 10
fine-tuning and 5 unlearning epochs, of which the first only evaluates) and `nodefense`
(15 epochs of its own fine-tuning step, augmentation, learning rate and evaluation on
the whole poisoned set: the reference code has no script for the no-defense model).
Each phase prints one JSON line with its wall time and the machine. The reference code
evaluates both test sets after every epoch; that is part of what is timed.

What is patched, in this process only (the reference files are not edited), so that it
runs at all; none of it touches a training step or the isolation rule: torchvision's
CIFAR-10 integrity check and download (offline data); the CPU instead of CUDA (its
flags); its top-k accuracy (newer torch refuses a `view` it takes; `reshape` here);
its save_checkpoint (it joins a path onto the integer `--save` flag; the isolation
model is written once, after the last LGA epoch, where the unlearning script reads
it); the isolation files' names (written as `_isolation..._examples.npy`, read as
`-isolation...-examples.npy`); its np.save of a list of (image, label) pairs (newer numpy
refuses the ragged list; the (n, 2) object array older numpy made is written instead).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np

CHECKPOINT = "weight/isolation-model.tar"
COMMON = ["--cuda", "0", "--device", "cpu", "--batch_size", "128", "--inject_portion", "0.1", "--target_label", "0"]


def convert(abl: Path, mirror: str, sha256: str) -> None:
    from backdoorlab.sources import read_image_archive

    data = read_image_archive(mirror, sha256)
    order = np.random.default_rng(0).permutation(len(data.y_train))
    x, y = data.x_train[order], data.y_train[order]
    out = abl / "data/CIFAR10/cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)

    def write(name: str, images: np.ndarray, labels: np.ndarray) -> None:
        batch = {"data": np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), -1),
                 "labels": [int(v) for v in labels]}
        with open(out / name, "wb") as f:
            pickle.dump(batch, f)

    for i in range(5):
        write(f"data_batch_{i + 1}", x[i * 10000:(i + 1) * 10000], y[i * 10000:(i + 1) * 10000])
    write("test_batch", data.x_test, data.y_test)
    with open(out / "batches.meta", "wb") as f:
        pickle.dump({"label_names": data.classes}, f)
    print(f"wrote {len(y)} training and {len(data.y_test)} test images to {out}")


def accuracy(output, target, topk=(1,)):
    """The reference's top-k accuracy (percent per k), with reshape where it takes a view."""
    _, pred = output.topk(max(topk), 1, True, True)
    correct = pred.t().eq(target.view(1, -1).expand(max(topk), -1))
    return [correct[:k].reshape(-1).float().sum(0).mul_(100.0 / target.size(0)) for k in topk]


class _ObjectListSaving:
    """numpy as the reference's isolation sees it: np.save of a list of (image, label) pairs makes the (n, 2)
    object array older numpy made by itself (newer numpy refuses the ragged list)."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def save(path, items, *args, **kwargs):
        if isinstance(items, list):
            pairs = np.empty((len(items), 2), dtype=object)
            for i, (image, label) in enumerate(items):
                pairs[i, 0], pairs[i, 1] = image, label
            items = pairs
        return np.save(path, items, *args, **kwargs)


def run(abl: Path, phases: list[str], nodefense_epochs: int) -> None:
    os.chdir(abl)
    sys.path.insert(0, str(abl))
    import torch
    import torchvision.datasets as datasets
    import torchvision.datasets.cifar as cifar

    datasets.CIFAR10._check_integrity = lambda self: True
    datasets.CIFAR10.download = lambda self: None
    cifar.check_integrity = lambda *args, **kwargs: True
    from backdoorlab.runtime import cpu_model

    import backdoor_isolation as isolation  # the reference code's modules, from its folder
    import backdoor_unlearning as unlearning
    from config import get_arguments
    from data_loader import Cutout, DatasetBD, get_test_loader
    from models.selector import select_model
    from torch.utils.data import DataLoader
    from torchvision import transforms

    isolation.accuracy = unlearning.accuracy = accuracy
    isolation.np = _ObjectListSaving()
    for folder in ("weight", "isolation_data", "logs"):
        os.makedirs(folder, exist_ok=True)
    cpu = cpu_model()

    def report(phase: str, seconds: float) -> None:
        print(json.dumps({"phase": phase, "seconds": round(seconds, 1), "cpu": cpu, "threads": torch.get_num_threads(),
                          "torch": torch.__version__}), flush=True)

    if "isolate" in phases:
        opt = get_arguments().parse_args(COMMON + ["--tuning_epochs", "5", "--save", "1"])
        isolation.save_checkpoint = lambda *args, **kwargs: None
        start = time.perf_counter()
        poisoned, model = isolation.train(opt)
        trained = time.perf_counter()
        torch.save({"epoch": opt.tuning_epochs, "state_dict": model.state_dict()}, CHECKPOINT)
        order = isolation.compute_loss_value(opt, poisoned, model)
        ranked = time.perf_counter()
        for name in os.listdir("isolation_data"):
            if name.endswith("%_examples.npy"):
                os.remove(os.path.join("isolation_data", name))
        isolation.isolate_data(opt, poisoned, order)
        for kind in ("isolation", "other"):
            for name in os.listdir("isolation_data"):
                if name.startswith(f"{opt.model_name}_{kind}") and name.endswith("%_examples.npy"):
                    renamed = name.replace(f"_{kind}", f"-{kind}").replace("%_examples", "%-examples")
                    os.replace(os.path.join("isolation_data", name), os.path.join("isolation_data", renamed))
        report("isolation: 5 LGA epochs, each evaluated", trained - start)
        report("isolation: per-example loss ranking (batch 1)", ranked - trained)
        report("isolation: writing the isolated and other sets", time.perf_counter() - ranked)
    if "unlearn" in phases:
        opt = get_arguments().parse_args(COMMON + ["--finetuning_epochs", "10", "--unlearning_epochs", "5",
                                                   "--save", "0"])
        opt.checkpoint_root = CHECKPOINT
        start = time.perf_counter()
        unlearning.train(opt)
        report("unlearning script: 10 fine-tuning + 5 unlearning epochs (epoch 0 only evaluates), each evaluated",
               time.perf_counter() - start)
    if "nodefense" in phases:
        opt = get_arguments().parse_args(COMMON)
        model, _ = select_model(dataset="CIFAR10", model_name=opt.model_name, n_classes=10)
        optimizer = torch.optim.SGD(model.parameters(), lr=opt.lr, momentum=opt.momentum,
                                    weight_decay=opt.weight_decay, nesterov=True)
        augment = transforms.Compose([transforms.ToPILImage(), transforms.RandomCrop(32, padding=4),
                                      transforms.RandomHorizontalFlip(), transforms.ToTensor(), Cutout(1, 3)])
        trainset = datasets.CIFAR10(root="data/CIFAR10", train=True, download=False)
        loader = DataLoader(DatasetBD(opt, full_dataset=trainset, inject_portion=opt.inject_portion,
                                      transform=augment, mode="train"), batch_size=opt.batch_size, shuffle=True)
        clean, bad = get_test_loader(opt)
        criterion = torch.nn.CrossEntropyLoss()
        start = time.perf_counter()
        for epoch in range(nodefense_epochs):
            unlearning.learning_rate_finetuning(optimizer, epoch, opt)
            unlearning.train_step_finetuing(opt, loader, model, optimizer, criterion, epoch + 1)
            unlearning.test(opt, clean, bad, model, criterion, epoch + 1)
        report(f"no defense: {nodefense_epochs} epochs, each evaluated", time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reference_abl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    conv = commands.add_parser("convert", help="write the JPEG mirror in torchvision's layout for the reference code")
    conv.add_argument("abl", type=Path, help="a checkout of github.com/bboylyg/ABL")
    conv.add_argument("--mirror", required=True, help="the CIFAR-10 JPEG mirror (.tar.gz)")
    conv.add_argument("--sha256", required=True, help="the mirror's sha256, as in cifar10-cpu/params.yaml")
    go = commands.add_parser("run", help="run and time the reference code's phases")
    go.add_argument("abl", type=Path, help="a checkout of github.com/bboylyg/ABL, converted data inside")
    go.add_argument("--phases", nargs="+", choices=["isolate", "unlearn", "nodefense"],
                    default=["isolate", "unlearn", "nodefense"], help="unlearn needs isolate's files")
    go.add_argument("--nodefense-epochs", type=int, default=15, metavar="N")
    args = parser.parse_args(argv)
    if not (args.abl / "backdoor_isolation.py").is_file():
        parser.exit(2, f"{args.abl}: not a checkout of bboylyg/ABL (no backdoor_isolation.py)\n")
    if args.command == "convert":
        convert(args.abl, args.mirror, args.sha256)
    else:
        if args.nodefense_epochs < 0:
            parser.exit(2, "--nodefense-epochs: an integer >= 0\n")
        if not (args.abl / "data/CIFAR10/cifar-10-batches-py/test_batch").is_file():
            parser.exit(2, f"{args.abl}: no converted data; run `python -m benchmarks.reference_abl convert` first\n")
        run(args.abl.resolve(), args.phases, args.nodefense_epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

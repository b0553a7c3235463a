"""Training throughput: the GPU's ceiling vs our trial loop vs a competition-baseline loop.

    python bench/throughput.py resnet34 --batch-size 128 --img-size 224 --data bench-data

measures, in one run on the same files:

(a) ``pure``: the training step alone on a batch of random tensors resident on the device (bf16
    autocast, channels_last, AdamW, cross entropy): the ceiling;
(b) ``ours``: ``trainer.fit`` itself (decoded cache, loader, device-side augmentation, loss,
    optimizer, scheduler), its own per-epoch training images/s, median over epochs 2..N;
(c) ``seeds_loop``: a loop like the competition baseline's: PIL decode of every JPEG every
    epoch, torchvision Resize/ToTensor/Normalize, DataLoader workers, fp32.

and prints ``RESULT model=... pure=... ours=... seeds_loop=... ours/pure=... ours/seeds=...``.
With no dataset at ``--data`` it first writes one with ``trainer.synth`` (``--people`` people x 7
JPEGs at 512x384, the competition's size).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.config import config_from_dict  # noqa: E402
from trainer.engine import fit, resolve_device  # noqa: E402
from trainer.layout import scan_train  # noqa: E402
from trainer.models import create_model  # noqa: E402
from trainer.synth import make_dataset  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _amp(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def bench_pure(model_name: str, *, batch: int, size: int, steps: int, device) -> float:
    """(a) resident random tensors, bf16 + channels_last: the device's ceiling."""
    from trainer.config import ModelConfig

    model = create_model(ModelConfig(name=model_name, pretrained=False)).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 18, (batch,), device=device)
    warm = max(3, steps // 5)
    for i in range(warm + steps):
        if i == warm:
            _sync(device)
            t0 = time.perf_counter()
        with _amp(device, True):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


def bench_ours(model_name: str, *, data: Path, batch: int, size: int, epochs: int,
               cache_dir: str, out_dir: str, workers: int | None) -> tuple[float, list[float]]:
    """(b) the real trial path, ``trainer.fit``; returns median images/s of epochs 2..N."""
    cfg = config_from_dict({
        "data": {"train_dir": str(data / "train"), "img_size": [size, size], "val_fraction": 0.05,
                 "cache_dir": cache_dir, "augmentation": "basic", "mixup": 0.25, "cutmix": 0.25,
                 "num_workers": workers},
        "model": {"name": model_name, "pretrained": False},
        "optim": {"name": "adamw", "lr": 1e-4},
        "loss": {"weights": {"f1": 0.4, "focal": 0.6}},
        "epochs": epochs, "batch_size": batch, "output_dir": out_dir,
    })
    t0 = time.perf_counter()
    from trainer.engine import prepare_data

    prepared = prepare_data(cfg)  # decode once (timed separately: amortised over all trials)
    cache_seconds = time.perf_counter() - t0
    result = fit(cfg, data=prepared)
    per_epoch = [h["images_per_second"] for h in result.history]
    steady = per_epoch[1:] or per_epoch
    print(f"ours: cache built in {cache_seconds:.1f} s; per-epoch img/s "
          f"{', '.join(f'{v:.0f}' for v in per_epoch)}", flush=True)
    return statistics.median(steady), per_epoch


class _SeedsDataset(torch.utils.data.Dataset):
    """The competition baseline's dataset: PIL decode + torchvision transforms per item."""

    def __init__(self, paths: list[str], labels: list[int], size: int) -> None:
        from torchvision import transforms

        self.paths, self.labels = paths, labels
        self.transform = transforms.Compose([
            transforms.Resize((size, size)),
            transforms.ToTensor(),
            transforms.Normalize(mean=(0.548, 0.504, 0.479), std=(0.237, 0.247, 0.246)),
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB")), self.labels[i]


def bench_seeds(model_name: str, *, data: Path, batch: int, size: int, steps: int, device,
                workers: int) -> float:
    """(c) decode every JPEG every epoch, torchvision transforms, DataLoader workers, fp32."""
    from trainer.config import ModelConfig

    frame = scan_train(data / "train")
    ds = _SeedsDataset(list(frame["path"]), list(frame["label"]), size)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True,
                                         num_workers=workers, pin_memory=device.type == "cuda",
                                         drop_last=True, persistent_workers=workers > 0)
    model = create_model(ModelConfig(name=model_name, pretrained=False)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    warm = max(3, steps // 5)
    done, t0 = 0, None
    while done < warm + steps:
        for x, y in loader:
            if done == warm:
                _sync(device)
                t0 = time.perf_counter()
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            done += 1
            if done >= warm + steps:
                break
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--data", type=Path, default=Path("bench-data"),
                        help="dataset root (made with trainer.synth when missing)")
    parser.add_argument("--people", type=int, default=2700,
                        help="people to generate when --data is missing (x7 images)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps for (a) and (c)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of trainer.fit for (b)")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1),
                        help="loader workers for the baseline loop (c)")
    parser.add_argument("--our-workers", type=int, default=None,
                        help="loader workers for (b) (default: the trainer's choice)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if not (args.data / "train").is_dir():
        t0 = time.perf_counter()
        make_dataset(args.data, people=args.people, eval_people=0, size=(512, 384),
                     workers=os.cpu_count() or 1)
        print(f"made {args.people * 7} JPEGs (512x384) in {time.perf_counter() - t0:.0f} s",
              flush=True)
    n_images = len(scan_train(args.data / "train"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}; {n_images} images; model {args.model}; batch {args.batch_size}; "
          f"{args.img_size}px", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        pure = bench_pure(args.model, batch=args.batch_size, size=args.img_size,
                          steps=args.steps, device=device)
        print(f"pure: {pure:.0f} img/s", flush=True)
        ours, _ = bench_ours(args.model, data=args.data, batch=args.batch_size,
                             size=args.img_size, epochs=args.epochs,
                             cache_dir=args.cache_dir or os.path.join(tmp, "cache"),
                             out_dir=os.path.join(tmp, "run"), workers=args.our_workers)
        print(f"ours: {ours:.0f} img/s", flush=True)
        seeds = bench_seeds(args.model, data=args.data, batch=args.batch_size,
                            size=args.img_size, steps=args.steps, device=device,
                            workers=args.workers)
        print(f"seeds_loop: {seeds:.0f} img/s", flush=True)
    print(f"RESULT model={args.model} pure={pure:.0f} ours={ours:.0f} seeds_loop={seeds:.0f} "
          f"ours/pure={ours / pure:.2f} ours/seeds={ours / seeds:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

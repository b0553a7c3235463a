"""``python -m trainer CONFIG.yaml [--set key=value ...] [--resume last.pt]``: train one model."""
from __future__ import annotations

import argparse
import logging
import sys

import yaml

from trainer.config import load_config, replace_path
from trainer.engine import fit
from trainer.errors import TrainerError


def _parse_value(text: str):
    return yaml.safe_load(text)  # "1e-4" -> float, "[224, 224]" -> list, "true" -> bool


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer",
        description="Train one model on the competition layout and print per-epoch metrics.")
    parser.add_argument("config", help="YAML config (sections data, model, optim, loss)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set optim.lr=1e-4 (repeatable)")
    parser.add_argument("--resume", metavar="LAST_PT", help="continue from a last.pt checkpoint")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        cfg = load_config(args.config)
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise TrainerError(f"--set {item!r} needs the form KEY=VALUE, e.g. optim.lr=1e-4")
            cfg = replace_path(cfg, key.strip(), _parse_value(value))

        def show(epoch: int, m: dict) -> None:
            val = (f"f1 {m['f1']:.4f}  acc {m['accuracy']:.4f}  mask {m['mask_f1']:.3f}  "
                   f"gender {m['gender_f1']:.3f}  age {m['age_f1']:.3f}  "
                   f"val_loss {m['val_loss']:.4f}  " if "f1" in m else "no validation  ")
            print(f"epoch {epoch:3d}/{cfg.epochs}  {val}train_loss {m['train_loss']:.4f}  "
                  f"{m['images_per_second']:.0f} img/s", flush=True)

        result = fit(cfg, on_epoch=show, resume=args.resume)
    except TrainerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted; resume with --resume {cfg.output_dir}/last.pt", file=sys.stderr)
        return 130
    f1 = result.best_metrics.get("f1")
    score = "no validation people" if f1 is None else f"f1 {f1:.4f}"
    print(f"best epoch {result.best_epoch}: {score}; checkpoint {result.best_checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

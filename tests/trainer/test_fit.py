from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import REPO, tiny_raw, trainer_cli
from trainer import (
    METRIC_NAMES,
    DataError,
    TrainingDiverged,
    config_from_dict,
    fit,
    load_checkpoint,
    load_config,
    predict,
    prepare_data,
    scan_train,
    split_frame,
)


def test_one_epoch_fit_returns_every_metric(tiny_cfg):
    cfg = tiny_cfg(loss__weights={"f1": 0.4, "focal": 0.6}, data__mixup=0.35,
                   data__cutmix=0.35, model__head="multitask")
    seen = []
    result = fit(cfg, on_epoch=lambda e, m: seen.append((e, m)))
    assert [e for e, _ in seen] == [1]
    metrics = result.history[0]
    for key in (*METRIC_NAMES, "val_loss", "train_loss", "lr", "images_per_second", "epoch"):
        assert key in metrics and np.isfinite(metrics[key])
    assert 0 <= metrics["f1"] <= 1
    assert result.best_epoch == 1 and result.best_metrics == metrics
    n_val = len(result.val_labels)
    assert result.val_probs.shape == (n_val, 18) and len(result.val_paths) == n_val
    assert np.allclose(result.val_probs.sum(1), 1, atol=1e-4)
    for name in ("best.pt", "last.pt", "config.yaml", "val_probs.npy"):
        assert (result.output_dir / name).is_file()
    assert load_config(result.output_dir / "config.yaml") == cfg
    last = load_checkpoint(result.last_checkpoint)  # weights_only=True inside
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "epoch"} <= set(last)
    assert last["epoch"] == 1


def test_validation_people_never_train(tiny_cfg):
    data = prepare_data(tiny_cfg())
    person = [p.split("/")[-2] for p in data.paths]
    train = {person[i] for i in data.train_rows}
    val = {person[i] for i in data.val_rows}
    assert train and val and train.isdisjoint(val)


def test_resume_equals_an_uninterrupted_run(tiny_cfg, tmp_path):
    kwargs = {"epochs": 3, "data__augmentation": "teams", "data__mixup": 0.5,
              "data__cutmix": 0.3, "optim__warmup_epochs": 1, "model__drop_rate": 0.2}
    straight = fit(tiny_cfg(output_dir=str(tmp_path / "a"), **kwargs))

    class Crash(Exception):
        pass

    def crash_after_two(epoch, metrics):
        if epoch == 2:
            raise Crash
    first = tiny_cfg(output_dir=str(tmp_path / "b"), **kwargs)
    with pytest.raises(Crash):
        fit(first, on_epoch=crash_after_two)
    resumed_epochs = []
    resumed = fit(first, resume=tmp_path / "b" / "last.pt",
                  on_epoch=lambda e, m: resumed_epochs.append(e))
    assert resumed_epochs == [3]  # finished epochs are not redone
    keys = ("f1", "val_loss", "train_loss")
    assert [[h[k] for k in keys] for h in resumed.history] == \
        [[h[k] for k in keys] for h in straight.history]
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert np.array_equal(resumed.val_probs, straight.val_probs)


def test_without_holdout_every_person_trains_and_the_last_epoch_is_the_model(tiny_cfg,
                                                                              tmp_path):
    """``data.holdout: false`` (hpo refit --full): all people train, none validates, best.pt is
    the last epoch's model, and a resumed run ends as a straight one."""
    with_holdout = prepare_data(tiny_cfg())
    data = prepare_data(tiny_cfg(data__holdout=False, data__fold=1, data__n_folds=3))
    assert len(data.val_rows) == 0
    assert len(data.train_rows) == len(with_holdout.train_rows) + len(with_holdout.val_rows)
    folds = [prepare_data(tiny_cfg(data__fold=k, data__n_folds=3)) for k in range(3)]
    # one decoded cache for the search's split, every fold and the full model
    assert {data.cache_path, with_holdout.cache_path} == {f.cache_path for f in folds}
    assert [with_holdout.paths[i] for i in with_holdout.val_rows] == \
        list(split_frame(scan_train(tiny_cfg().data.train_dir), val_fraction=0.34)[1]["path"])
    seen = []
    straight = fit(tiny_cfg(epochs=2, data__holdout=False, output_dir=str(tmp_path / "a")),
                   on_epoch=lambda e, m: seen.append(m))
    assert [m["epoch"] for m in seen] == [1, 2] and all("f1" not in m for m in seen)
    assert straight.best_epoch == 2 and straight.best_metrics == straight.history[-1]
    assert straight.val_probs.shape == (0, 18) and straight.val_paths == []
    assert load_checkpoint(straight.best_checkpoint)["epoch"] == 2

    class Crash(Exception):
        pass

    def crash(epoch, metrics):
        raise Crash
    cfg = tiny_cfg(epochs=2, data__holdout=False, output_dir=str(tmp_path / "b"))
    with pytest.raises(Crash):
        fit(cfg, on_epoch=crash)
    resumed = fit(cfg, resume=tmp_path / "b" / "last.pt")
    assert resumed.best_epoch == 2
    a = torch.load(tmp_path / "a" / "best.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_on_epoch_can_stop_and_early_stopping(tiny_cfg, tmp_path):
    result = fit(tiny_cfg(epochs=4), on_epoch=lambda e, m: e == 2)
    assert len(result.history) == 2 and result.stopped_early
    # lr so small nothing improves after epoch 1: patience 1 stops at epoch 2
    result = fit(tiny_cfg(epochs=5, early_stop_patience=1, optim__lr=1e-12,
                          output_dir=str(tmp_path / "es")))
    assert len(result.history) == 2 and result.stopped_early


@pytest.mark.parametrize("opt", ["sgd", "adam", "momentum"])
@pytest.mark.parametrize("sched", ["cosine", "step", "none"])
def test_optimizers_and_schedulers(tiny_cfg, opt, sched):
    cfg = tiny_cfg(epochs=2, optim__name=opt, optim__scheduler=sched, optim__warmup_epochs=1,
                   optim__accum_steps=2, optim__clip_grad=1.0, data__balanced_sampler=True)
    result = fit(cfg)
    assert len(result.history) == 2
    if sched == "cosine":
        assert result.history[1]["lr"] != result.history[0]["lr"]


def test_nan_loss_is_reported(tiny_cfg):
    with pytest.raises(TrainingDiverged, match="training loss became NaN or infinite in epoch 1"):
        fit(tiny_cfg(optim__name="sgd", optim__lr=1e30, optim__weight_decay=0.0))


def test_predict_with_flip_tta(tiny_cfg, tiny_data):
    result = fit(tiny_cfg(epochs=1))
    paths = sorted(str(p) for p in (tiny_data / "eval" / "images").iterdir())
    probs = predict(result.best_checkpoint, paths, batch_size=7, device="cpu")
    assert probs.shape == (len(paths), 18) and np.allclose(probs.sum(1), 1, atol=1e-4)
    tta = predict(result.best_checkpoint, paths, tta_flip=True, device="cpu")
    assert tta.shape == probs.shape and not np.allclose(tta, probs)
    # validation images scored through predict match what fit reported for them
    again = predict(result.best_checkpoint, result.val_paths, device="cpu")
    assert np.allclose(again, result.val_probs, atol=1e-5)
    with pytest.raises(DataError, match="does not exist"):
        predict(result.best_checkpoint, [paths[0], "/no/such.jpg"], device="cpu")


def test_cli_trains_and_prints_epochs(tiny_data, tmp_path):
    # `python -m trainer` itself, as a real process
    raw = tiny_raw(tiny_data / "train", tmp_path / "run", tmp_path / "cache", epochs=2)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    out = subprocess.run([sys.executable, "-m", "trainer", str(tmp_path / "cfg.yaml"),
                          "--set", "optim.lr=1e-3"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2 and "f1" in lines[0] and "img/s" in lines[0]
    assert "best epoch" in out.stdout
    assert config_from_dict(yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())) \
        .optim.lr == 1e-3


@pytest.mark.parametrize(("edit", "message"), [
    ({"loss": {"weights": {"focall": 1.0}}}, "error: unknown loss 'focall'; valid losses"),
    ({"model": {"name": "resnet_34"}}, "error: model.name is 'resnet_34', which is not a timm"),
    ({"data": {"augmentation": "heavy"}}, "error: data.augmentation is 'heavy'"),
    ({"optim": {"lrr": 1}}, "error: unknown key 'optim.lrr'"),
    ({"data": {"train_dir": "/no/such/dir"}}, "error: data folder /no/such/dir does not exist"),
])
def test_cli_bad_input_is_one_line(tiny_data, tmp_path, edit, message):
    raw = tiny_raw(tiny_data / "train", tmp_path / "run", tmp_path / "cache")
    for section, values in edit.items():
        raw.setdefault(section, {}).update(values)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    out = trainer_cli(str(tmp_path / "cfg.yaml"))  # in-process, as strict as a process
    assert out.returncode == 1
    assert out.stderr.startswith(message), out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_loader_workers_give_the_same_run(tiny_cfg, tmp_path):
    """Each batch's augmentation is seeded from (seed, epoch, batch), not from the process."""
    kwargs = {"epochs": 2, "data__augmentation": "teams", "data__mixup": 0.5}
    inline = fit(tiny_cfg(output_dir=str(tmp_path / "a"), data__num_workers=0, **kwargs))
    workers = fit(tiny_cfg(output_dir=str(tmp_path / "b"), data__num_workers=2, **kwargs))
    assert [h["train_loss"] for h in inline.history] == [h["train_loss"] for h in workers.history]
    assert np.array_equal(inline.val_probs, workers.val_probs)

"""RunState into and out of last.pt, and the checkpoint helpers fit builds on."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from trainer import ConfigError, DataError, fit, load_checkpoint
from trainer.checkpoint import (
    atomic_save,
    check_resumable,
    model_checkpoint,
    rng_state,
    set_rng_state,
)
from trainer.models import create_model
from trainer.state import RunState


def _state(cfg, **over) -> RunState:
    torch.manual_seed(0)
    model = create_model(cfg.model)
    state = RunState.create(cfg, model, updates_per_epoch=4, amp_dtype=None)
    for key, value in over.items():
        setattr(state, key, value)
    return state


def test_run_state_round_trips_through_a_weights_only_file(tiny_cfg, tmp_path):
    cfg = tiny_cfg(optim__warmup_epochs=1)
    probs = np.random.default_rng(0).random((5, 18)).astype(np.float32)
    history = [{"epoch": 1, "f1": 0.5}, {"epoch": 2, "f1": 0.4}]
    state = _state(cfg, history=history, best_f1=0.5, best_epoch=1, best_probs=probs,
                   bad_epochs=1, num_updates=8)
    state.model(torch.randn(2, 3, 32, 24)).sum().backward()
    state.step(clip_grad=1.0)  # gives the optimiser some state to save
    atomic_save(state.to_checkpoint(cfg, epoch=2, mean=(0.5,) * 3, std=(0.25,) * 3),
                tmp_path / "last.pt")
    ckpt = load_checkpoint(tmp_path / "last.pt")
    check_resumable(cfg, ckpt, tmp_path / "last.pt")
    back = RunState.from_checkpoint(ckpt, cfg, create_model(cfg.model), updates_per_epoch=4,
                                    amp_dtype=None)
    assert back.first_epoch == 3 and back.history == history
    assert (back.best_f1, back.best_epoch, back.bad_epochs, back.num_updates) == (0.5, 1, 1, 9)
    assert np.array_equal(back.best_probs, probs)
    a, b = state.model.state_dict(), back.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved, restored = state.optimizer.state_dict()["state"], back.optimizer.state_dict()["state"]
    assert saved and saved.keys() == restored.keys()
    assert all(torch.equal(saved[k]["exp_avg"], restored[k]["exp_avg"]) for k in saved)
    assert back.scheduler.state_dict() == state.scheduler.state_dict()


def test_record_tracks_the_best_epoch(tiny_cfg):
    state = _state(tiny_cfg())
    probs = [np.full((2, 18), k, np.float32) for k in range(3)]
    assert state.record({"epoch": 1, "f1": 0.3}, probs[0])
    assert not state.record({"epoch": 2, "f1": 0.3}, probs[1])  # a tie is no improvement
    assert state.record({"epoch": 3, "f1": 0.6}, probs[2])
    assert (state.best_epoch, state.best_f1, state.bad_epochs) == (3, 0.6, 0)
    assert state.best_probs is probs[2] and [h["epoch"] for h in state.history] == [1, 2, 3]


def test_rng_state_restores_every_generator():
    saved = rng_state()
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(saved)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws


def test_best_checkpoint_cannot_resume_and_other_settings_refuse(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    best = model_checkpoint(create_model(cfg.model), cfg, epoch=1, history=[], mean=(0,) * 3,
                            std=(1,) * 3, best=True)
    with pytest.raises(ConfigError, match="it is a best checkpoint; resume from last.pt"):
        check_resumable(cfg, best, "best.pt")
    with pytest.raises(ConfigError, match="its optim settings differ"):
        check_resumable(tiny_cfg(optim__lr=1e-5), best, "best.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot be loaded"):
        load_checkpoint(tmp_path / "junk.pt")


def test_resume_in_another_folder_brings_the_best_checkpoint(tiny_cfg, tmp_path):
    """A retried trial resumes from the failed one's last.pt into its own folder."""
    first = fit(tiny_cfg(epochs=1, output_dir=str(tmp_path / "a")))
    second = tiny_cfg(epochs=2, output_dir=str(tmp_path / "b"))
    # epochs differ, which resuming allows: only model/data/loss/optim must match
    result = fit(second, resume=first.last_checkpoint)
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert (tmp_path / "b" / "best.pt").is_file() and (tmp_path / "b" / "val_probs.npy").is_file()
    if result.best_epoch == 1:
        assert np.array_equal(np.load(tmp_path / "b" / "val_probs.npy"), first.val_probs)

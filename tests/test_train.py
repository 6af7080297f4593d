import pytest
import torch
from torch import nn
from torch.nn import functional as F

from indistill_lab.data import Loader
from indistill_lab.models import build_model
from indistill_lab.train import Callback, Trainer, cross_entropy, lr_for_epoch


def _weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _trainer(tmp_path=None, **kw) -> Trainer:
    torch.manual_seed(0)
    ckpt = tmp_path / "run.pt" if tmp_path is not None else None
    return Trainer(build_model("student"), device="cpu", progress=False, checkpoint=ckpt, seed=0, **kw)


def test_training_is_deterministic_and_learns(tiny_split):
    a, b = _trainer(lr=1e-2), _trainer(lr=1e-2)
    ha = a.fit(Loader(tiny_split, 16, seed=1), 8, eval_data=Loader(tiny_split, 64, shuffle=False))
    b.fit(Loader(tiny_split, 16, seed=1), 8)
    assert torch.equal(_weights(a.model), _weights(b.model))
    losses = ha.series("ce")
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert ha.series("val_acc")[-1] > 0.3  # 10 classes, chance is 0.1


def test_resume_continues_exactly(tmp_path, tiny_split):
    straight = _trainer()
    straight.fit(Loader(tiny_split, 16, seed=1), 2)
    first = _trainer(tmp_path)
    first.fit(Loader(tiny_split, 16, seed=1), 1)
    resumed = _trainer(tmp_path)
    assert resumed.resume() and resumed.epoch == 1
    history = resumed.fit(Loader(tiny_split, 16, seed=1), 2)
    assert len(history.epochs) == 2
    assert torch.allclose(_weights(straight.model), _weights(resumed.model), atol=1e-6)


def test_nan_loss_stops_and_keeps_last_good_epoch(tmp_path, tiny_split):
    def poisoned(model, x, y, epoch):
        terms = cross_entropy(model, x, y, epoch)
        if epoch == 1:
            terms["ce"] = terms["ce"] * float("nan")
        return terms

    trainer = _trainer(tmp_path, objective=poisoned)
    with pytest.warns(UserWarning, match="non-finite loss"):
        history = trainer.fit(Loader(tiny_split, 16, seed=1), 3)
    assert "non-finite loss (nan) at epoch 2" in history.stopped
    assert trainer.epoch == 1 and len(history.epochs) == 1
    saved = torch.load(tmp_path / "run.pt", weights_only=False)
    assert saved["epoch"] == 1
    assert torch.equal(_weights(trainer.model), torch.cat([v.flatten() for k, v in saved["model"].items()
                                                          if "running" not in k and "num_batches" not in k]))
    assert torch.isfinite(_weights(trainer.model)).all()


def test_interrupt_returns_to_last_epoch(tmp_path, tiny_split):
    class StopMidway(Callback):
        def on_batch_end(self, trainer, logs):
            if trainer.epoch == 1 and trainer.step == 6:
                raise KeyboardInterrupt

    trainer = _trainer(tmp_path, callbacks=[StopMidway()])
    with pytest.warns(UserWarning, match="interrupted during epoch 2"):
        history = trainer.fit(Loader(tiny_split, 16, seed=1), 3)
    assert history.stopped == "interrupted during epoch 2" and trainer.epoch == 1 and trainer.step == 4
    assert torch.load(tmp_path / "run.pt", weights_only=False)["epoch"] == 1


def test_lr_schedule_and_extra_parameters(tiny_split):
    assert [lr_for_epoch({2: 1e-4, 4: 1e-5}, 1e-3, e) for e in range(5)] == [1e-3, 1e-3, 1e-4, 1e-4, 1e-5]

    class WithConnector(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def trainable_parameters(self):
            return [self.scale]

        def forward(self, model, x, y, epoch):
            return {"ce": F.cross_entropy(model(x) * self.scale, y)}

    objective = WithConnector()
    trainer = _trainer(objective=objective, lr_schedule={1: 0.0})
    history = trainer.fit(Loader(tiny_split, 16, seed=1), 2)
    assert objective.scale.item() != 1.0
    assert [e["lr"] for e in history.epochs] == [1e-3, 0.0]


def test_bad_epochs():
    with pytest.raises(ValueError, match="epochs must be >= 0"):
        _trainer().fit(Loader.__new__(Loader), -1)


def test_optimizer_names_choose_nesterov_or_plain_momentum():
    from indistill_lab.train import make_optimizer

    params = [nn.Parameter(torch.zeros(2))]
    assert make_optimizer(params, "sgd", 0.1).param_groups[0]["nesterov"] is True
    assert make_optimizer(params, "momentum", 0.1).param_groups[0]["nesterov"] is False
    with pytest.raises(ValueError, match="'momentum' \\(plain momentum\\)"):
        make_optimizer(params, "rmsprop")


def test_a_torch_dataloader_trains_like_the_same_batches_from_a_loader(tiny_split):
    """Any re-iterable of (x, y) works: a DataLoader over the same examples in the same order gives the same weights."""
    from torch.utils.data import DataLoader, TensorDataset

    kit, plain = _trainer(lr=1e-2), _trainer(lr=1e-2)
    kit.fit(Loader(tiny_split, 16, shuffle=False), 2)
    history = plain.fit(DataLoader(TensorDataset(tiny_split.x, tiny_split.y), batch_size=16), 2)
    assert len(history.epochs) == 2 and history.stopped is None
    assert torch.equal(_weights(kit.model), _weights(plain.model))
    listed = _trainer(lr=1e-2)
    listed.fit([(tiny_split.x[i:i + 16], tiny_split.y[i:i + 16]) for i in range(0, 64, 16)], 2)
    assert torch.equal(_weights(kit.model), _weights(listed.model))


def test_training_data_that_cannot_work_says_what_is_needed(tiny_split):
    batches = ((tiny_split.x[i:i + 16], tiny_split.y[i:i + 16]) for i in range(0, 64, 16))
    with pytest.raises(TypeError, match="one-shot iterator.*re-iterable"):
        _trainer().fit(batches, 2)
    with pytest.raises(TypeError, match=r"pair \(x, y\) of tensors.*got a tuple of 3 items"):
        _trainer().fit([(tiny_split.x, tiny_split.y, tiny_split.y)], 1)
    with pytest.raises(TypeError, match=r"pair \(x, y\) of tensors.*got a Tensor"):
        _trainer().fit([tiny_split.x], 1)
    with pytest.raises(ValueError, match="gives no batch"):
        _trainer().fit([], 1)


def test_a_callback_stops_training_with_its_reason(tmp_path, tiny_split):
    class EarlyStop(Callback):
        def on_epoch_end(self, trainer, logs):
            if trainer.epoch == 2:
                trainer.stop("ce below target")

    trainer = _trainer(tmp_path, callbacks=[EarlyStop()])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a requested stop is not a warning
        history = trainer.fit(Loader(tiny_split, 16, seed=1), 5)
    assert history.stopped == "ce below target" and history.requested
    assert trainer.epoch == 2 and len(history.epochs) == 2  # the epoch that asked is kept
    assert torch.load(tmp_path / "run.pt", weights_only=False)["epoch"] == 2

    class MidEpoch(Callback):
        def on_batch_end(self, trainer, logs):
            if trainer.step == 6:
                trainer.stop("budget of 6 steps")

    trainer = _trainer(callbacks=[MidEpoch()])
    history = trainer.fit(Loader(tiny_split, 16, seed=1), 3)
    # stopped after step 6 (epoch 2, batch 2): the unfinished epoch is undone, as in a checkpoint
    assert history.stopped == "budget of 6 steps" and trainer.epoch == 1 and trainer.step == 4
    with pytest.raises(ValueError, match="needs a reason"):
        trainer.stop("")


def test_a_per_sample_loss_term_is_named_in_the_error(tiny_split):
    def per_sample(model, x, y, epoch):
        return {"ce": F.cross_entropy(model(x), y), "my_term": F.cross_entropy(model(x), y, reduction="none")}

    with pytest.raises(ValueError, match=r"Loss term 'my_term' has shape \(16,\), not a single number.*\.mean\(\)"):
        _trainer(objective=per_sample).fit(Loader(tiny_split, 16, seed=1), 1)
    with pytest.raises(TypeError, match="Loss term 'ce' is a float"):
        _trainer(objective=lambda m, x, y, e: {"ce": 1.0}).fit(Loader(tiny_split, 16, seed=1), 1)


def test_resume_with_a_shuffling_dataloader_repeats_the_uninterrupted_run(tmp_path, tiny_split):
    """The checkpoint keeps torch's generator, from which a shuffling DataLoader draws each epoch's order."""
    from torch.utils.data import DataLoader, TensorDataset

    def data():
        return DataLoader(TensorDataset(tiny_split.x, tiny_split.y), batch_size=16, shuffle=True)

    straight = _trainer()
    straight.fit(data(), 3)
    first = _trainer(tmp_path)
    first.fit(data(), 1)
    resumed = _trainer(tmp_path)
    assert resumed.resume() and resumed.epoch == 1
    resumed.fit(data(), 3)
    assert torch.equal(_weights(straight.model), _weights(resumed.model))

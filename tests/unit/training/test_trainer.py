import pytest
import torch
import torch.nn.functional as F

from common.config.concepts import TrainConfig
from common.data.batches import ChunkedBatches, RowBatches
from common.errors import UserError
from common.models.sae import TopKSAE
from common.store.model_files import load_weights
from common.store.stage_files import WEIGHTS_FILE
from common.training.trainer import Trainer, lr_factor

CPU = torch.device("cpu")


def test_paper_schedule_decays_linearly_over_80_percent_then_flat():
    cfg = TrainConfig(train_steps=1000)
    assert lr_factor(0, cfg) == 1.0
    assert lr_factor(400, cfg) == pytest.approx(1 - 0.9 * 0.5)
    assert lr_factor(800, cfg) == pytest.approx(0.1)
    assert lr_factor(999, cfg) == pytest.approx(0.1)
    original = TrainConfig(train_steps=1000, schedule="original", original_decay_steps=40)
    assert lr_factor(20, original) == pytest.approx(0.55) and lr_factor(40, original) == pytest.approx(0.1)
    with pytest.raises(UserError):
        lr_factor(0, TrainConfig(schedule="cosine"))


def _run(out_dir, stop_at=None, resume=False, crash_at=None, steps=40):
    torch.manual_seed(123)  # the same init for every run
    model = TopKSAE(16, 64, 4)
    data = torch.randn(512, 16)
    batches = RowBatches((data,), 32, seed=7, device=CPU)
    cfg = TrainConfig(train_steps=steps, stop_at_step=stop_at, val_every=10, checkpoint_every=10, log_every=5, lr=1e-2)

    def loss_fn(m, batch):
        if crash_at is not None and trainer.step == crash_at:
            raise KeyboardInterrupt
        return F.mse_loss(m(batch[0]).recon, batch[0]), {}

    def validate(m):
        return {"loss": float(F.mse_loss(m(data[:128]).recon, data[:128]))}

    trainer = Trainer(model, cfg, out_dir, CPU, "fp32", loss_fn, batches, validate)
    history = trainer.fit(resume=resume)
    return trainer, history


def test_loss_goes_down(tmp_path):
    _, history = _run(tmp_path)
    assert history["train"][-1]["loss"] < 0.8 * history["train"][0]["loss"]
    assert history["val"][-1]["loss"] < history["val"][0]["loss"]
    assert (tmp_path / WEIGHTS_FILE).is_file()


def test_stop_then_resume_equals_uninterrupted(tmp_path):
    full, _ = _run(tmp_path / "full")
    _run(tmp_path / "split", stop_at=20)
    resumed, _ = _run(tmp_path / "split", resume=True)
    assert resumed.step == full.step == 40
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_kill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    full, _ = _run(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "killed", crash_at=27)  # last checkpoint at step 20
    resumed, _ = _run(tmp_path / "killed", resume=True)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(load_weights(tmp_path / "full")["W_dec"], load_weights(tmp_path / "killed")["W_dec"])


def test_row_batches_are_a_function_of_the_step():
    data = torch.arange(100).float().unsqueeze(1)
    a, b = RowBatches((data,), 10, 3, CPU), RowBatches((data,), 10, 3, CPU)
    first_epoch = torch.cat([a.batch(s)[0] for s in range(10)]).flatten()
    assert sorted(first_epoch.tolist()) == list(range(100))  # an epoch visits every row once
    assert torch.equal(b.batch(13)[0], a.batch(13)[0])
    assert not torch.equal(a.batch(0)[0], a.batch(10)[0])  # a new permutation each epoch


def test_chunked_batches_walk_chunks_in_order_and_stop_at_the_end():
    loaded = []

    def load(c):
        loaded.append(c)
        return None if c == 2 else (torch.full((20, 1), float(c)),)

    batches = ChunkedBatches(load, lambda c: 20, num_chunks=3, epochs=2, batch_size=10, seed=0, device=CPU)
    assert batches.total_steps == 12
    values = [float(batches.batch(s)[0][0]) for s in range(8)]
    assert values == [0.0] * 4 + [1.0] * 4
    assert batches.batch(8) is None and loaded == [0, 1, 2]


@pytest.mark.parametrize("scale", [1e-3, 1e3], ids=["under_the_clip", "clipped"])
def test_clip_gradients_equals_clip_grad_norm(tmp_path, scale):
    """The CPU shortcut (no rescaling pass when the factor is 1) changes no bit of the gradients or the norm."""
    torch.manual_seed(0)
    model = TopKSAE(16, 64, 4)
    grads = [torch.randn_like(p) * scale for p in model.parameters()]
    trainer = Trainer(model, TrainConfig(grad_clip=1.0), tmp_path, CPU, "fp32", None, None, None)
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    norm = trainer.clip_gradients()
    clipped = [p.grad.clone() for p in model.parameters()]
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    reference_norm = torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
    assert torch.equal(norm, reference_norm)
    assert all(torch.equal(a, p.grad) for a, p in zip(clipped, model.parameters()))
    assert (float(norm) > 1.0) == (scale > 1)

"""Two CPU processes (gloo, DDP) compute the loss and gradients of one process on the same global batch."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from tests.test_lewm import SMALL, small_model
from world_models.lewm.model import LeWM
from world_models.lewm.train import local_slice, sigreg_generator, train_step, wrap_distributed

CFG = SMALL  # the small model of the model tests
GLOBAL_BATCH = 8


def make_model() -> LeWM:
    model = small_model()
    # Non-zero adaLN gates, so the action path carries gradient too.
    for block in model.predictor.blocks:
        torch.nn.init.normal_(block.modulation[1].weight, std=0.02)
    return model


def make_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (GLOBAL_BATCH, CFG.history + 1, 64, 64, 3), dtype=torch.uint8, generator=gen)
    actions = torch.rand(GLOBAL_BATCH, CFG.history + 1, 2, generator=gen) * 2 - 1
    return pixels, actions


def grads_of(model: LeWM) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = make_model()
        pixels, actions = make_batch()
        part = local_slice(GLOBAL_BATCH, rank, world)
        out = train_step(wrap_distributed(model), pixels[part], actions[part], sigreg_generator(0, 7))
        losses = torch.stack([out["loss"].detach(), out["prediction"].detach(), out["sigreg"].detach()])
        save_file({**grads_of(model), "__losses": losses}, f"{out_dir}/rank{rank}.safetensors")
        dist.barrier()  # both ranks done before either tears gloo down (a race aborted a loaded run)
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one(tmp_path):
    model = make_model()
    pixels, actions = make_batch()
    single = train_step(model, pixels, actions, sigreg_generator(0, 7))
    expected = grads_of(model)

    mp.spawn(worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    losses = torch.stack([r.pop("__losses") for r in ranks])
    # SIGReg saw the global batch in both processes; the MSE halves average to the global MSE.
    torch.testing.assert_close(losses[:, 2], single["sigreg"].detach().expand(2), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses[:, 1].mean(), single["prediction"].detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(losses[:, 0].mean(), single["loss"].detach(), rtol=1e-5, atol=1e-7)
    assert set(ranks[0]) == set(expected)
    scale = max(float(g.abs().max()) for g in expected.values())
    for name, grad in expected.items():
        assert grad.abs().max() > 0, name
        # DDP left the same averaged gradient in both processes: the single-process one.
        torch.testing.assert_close(ranks[0][name], ranks[1][name])
        # Summation order differs between one and two processes: allow float32 rounding relative to
        # the gradients' scale (biases feeding BatchNorm have ~0 gradient, pure rounding noise).
        torch.testing.assert_close(ranks[0][name], grad, rtol=1e-4, atol=1e-5 * scale)


def test_sigreg_on_local_batches_would_differ():
    """The property above is not vacuous: SIGReg of half a batch is not SIGReg of the whole."""
    from world_models.lewm.model import sigreg

    z = torch.randn(GLOBAL_BATCH, 16, generator=torch.Generator().manual_seed(0))
    whole = sigreg(z, 32, 17, sigreg_generator(0, 7))
    halves = [sigreg(z[s], 32, 17, sigreg_generator(0, 7)) for s in (slice(0, 4), slice(4, 8))]
    assert not torch.allclose(whole, torch.stack(halves).mean(), rtol=1e-3)

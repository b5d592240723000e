"""A 2-D toy trained by ddkit.Trainer samples at 10 model evaluations about as well as guided-diffusion's
own training (training_losses + AdamW + its EMA, as its TrainLoop.run_step) sampled with DDPM-1000.

Same network (ddkit-models' MLP, same initial weights), same data, batch, learning rate and number
of steps. ddkit keeps its defaults (AdamW, weight decay 0, uniform timesteps, EMA 0.9999 with
warm-up, sampling with the EMA weights). guided-diffusion's EMA uses the fixed rate 0.9999 and
so is still near the initial weights after a short run: its reference is the better of its EMA
and raw weights. Both use the default clipping of x_0 to [-1, 1] (the toy lies inside it).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import pytest
import torch

import ddkit
from ddkit import data

gd_script = pytest.importorskip("guided_diffusion.script_util")
gd_resample = pytest.importorskip("guided_diffusion.resample")
gd_nn = pytest.importorskip("guided_diffusion.nn")

pytestmark = [pytest.mark.parity, pytest.mark.slow]

STEPS, BATCH, LR, HIDDEN = 1500, 256, 1e-3, 64
N_SAMPLES = 1500


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_ten_step_samples_match_guided_diffusion_ddpm_1000() -> None:
    torch.manual_seed(0)
    pipe = ddkit.Pipeline.from_config({"model": {"name": "mlp", "dim": 2, "hidden": HIDDEN, "depth": 3}})
    initial = copy.deepcopy(pipe.model)
    dataset = data.load("gaussians", n=10_000, seed=0)
    truth, _ = data.sampler("gaussians")(3000, torch.Generator().manual_seed(123))

    # ddkit: the Trainer's defaults, then 10 model evaluations of DPM-Solver++ with the EMA weights.
    trainer = ddkit.Trainer(pipe, dataset, batch_size=BATCH, lr=LR, seed=0, log_every=STEPS)
    trainer.train(STEPS)
    assert pipe.use_ema
    fast = pipe.with_sampler("dpm-solver++", steps=10)
    ours = fast.sample(N_SAMPLES, generator=torch.Generator().manual_seed(1))
    sw_ours = data.sliced_wasserstein(ours, truth)

    # guided-diffusion: its TrainLoop.run_step without MPI (uniform sampler, training_losses,
    # loss = (losses * weights).mean(), AdamW, update_ema at 0.9999), then DDPM over 1000 steps.
    diffusion = gd_script.create_gaussian_diffusion(steps=1000, noise_schedule="linear", sigma_small=True)
    model = initial
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    ema_params = copy.deepcopy(list(model.parameters()))
    schedule_sampler = gd_resample.UniformSampler(diffusion)
    np.random.seed(0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        batch = dataset.samples[torch.randint(0, len(dataset), (BATCH,), generator=gen)]
        opt.zero_grad()
        t, weights = schedule_sampler.sample(BATCH, "cpu")
        losses = diffusion.training_losses(model, batch, t)
        (losses["loss"] * weights).mean().backward()
        opt.step()
        gd_nn.update_ema(ema_params, list(model.parameters()), rate=0.9999)
    ema_model = copy.deepcopy(model)
    for p, e in zip(ema_model.parameters(), ema_params):
        p.data.copy_(e)
    reference = {}
    for name, net in (("raw", model), ("ema", ema_model)):
        torch.manual_seed(5)
        with torch.no_grad():
            theirs = diffusion.p_sample_loop(net, (N_SAMPLES, 2), clip_denoised=True)
        reference[name] = data.sliced_wasserstein(theirs, truth)
    sw_theirs = min(reference.values())

    floor = data.sliced_wasserstein(dataset.samples[:N_SAMPLES], truth)
    report = f"ddkit 10-step {sw_ours:.4f}, guided-diffusion DDPM-1000 {reference}, data-vs-data {floor:.4f}"
    print(report)
    assert sw_ours <= 1.5 * sw_theirs, report
    assert sw_ours < 3 * floor, report  # and both are close to the data, not equally bad

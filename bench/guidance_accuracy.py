"""Classifier-free and classifier guidance: class accuracy of generated samples against the guidance scale.

On a 2-D toy whose classes overlap (8 Gaussians on a circle, std 0.22, so even the Bayes
classifier errs on about a fifth of the true points), this trains, all on the CPU:

- a class-conditional ``mlp`` denoiser with ``ddkit.Pipeline`` + ``ddkit.Trainer`` and
  condition dropout (the null class makes the same network unconditional);
- a clean-data classifier (the judge of every sample), and
- a noisy-data classifier ``p(y | x_t, t)`` (an ``mlp`` with 8 outputs) for classifier guidance.

Then for each scale s it draws samples for balanced labels from the same starting noise:
classifier-free guidance with w = s on the conditional network, and classifier guidance with
scale s on the *unconditional* network (null label), so that both give unconditional samples
at 0 and (ideally) conditional samples at 1. Reported per scale: the accuracy of the clean
classifier on the samples (how often a sample lands in its label's class) and the sliced
Wasserstein distance of the samples to the true distribution (what the accuracy costs).

    python bench/guidance_accuracy.py [--quick] [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import ddkit
from ddkit.data import ArrayDataset, sample_toy, sliced_wasserstein

TOY = "gaussians"
TOY_PARAMS: dict[str, float] = {"std": 0.22, "radius": 0.75}
NUM_CLASSES = 8
SCALES = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0)


class NullLabel(nn.Module):
    """The conditional network with the null label: the unconditional model classifier guidance steers.

    Its spec declares no classes, so the pipeline passes the labels to the guidance only.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model
        inner_spec = ddkit.model_spec(model)
        self.spec = ddkit.ModelSpec(
            in_channels=inner_spec.in_channels,
            out_channels=inner_spec.out_channels,
            sample_shape=inner_spec.sample_shape,
        )

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        out: Tensor = self.inner(x, t)  # no label: the model's null class
        return out


def bayes_labels(x: Tensor) -> Tensor:
    """The Bayes-optimal label: equal priors and equal isotropic covariances make it the nearest centre."""
    angle = torch.arange(NUM_CLASSES, dtype=torch.float64) * (2 * math.pi / NUM_CLASSES)
    centers = TOY_PARAMS["radius"] * torch.stack([angle.cos(), angle.sin()], dim=1)
    return torch.cdist(x.double(), centers).argmin(dim=1)


def train_clean_classifier(steps: int, seed: int) -> tuple[nn.Module, float]:
    """A small MLP classifier on fresh clean draws; returns it and its accuracy on held-out true data."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(2, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, NUM_CLASSES)
    )
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y = sample_toy(TOY, 50_000, seed=seed + 1, **TOY_PARAMS)
    assert y is not None
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (512,), generator=g)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval().requires_grad_(False)
    xt, yt = sample_toy(TOY, 20_000, seed=seed + 2, **TOY_PARAMS)
    assert yt is not None
    return net, float((net(xt).argmax(1) == yt).float().mean())


def train_noisy_classifier(pipeline: Any, steps: int, seed: int) -> tuple[nn.Module, float]:
    """p(y | x_t, t): an ``mlp`` with one output per class, trained on x_t at uniform t of the chain."""
    torch.manual_seed(seed)
    net: nn.Module = ddkit.create("model", "mlp", hidden=128, depth=2, out_dim=NUM_CLASSES)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    x, y = sample_toy(TOY, 50_000, seed=seed + 3, **TOY_PARAMS)
    assert y is not None
    process = pipeline.process
    T = int(process.num_timesteps)
    g = torch.Generator().manual_seed(seed + 4)
    loss = torch.zeros(())
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (512,), generator=g)
        t = torch.randint(0, T, (512,), generator=g)
        x_t = process.q_sample(x[idx], t, torch.randn(512, 2, generator=g))
        loss = F.cross_entropy(net(x_t, t), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval().requires_grad_(False)
    return net, float(loss.detach())


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    timings: dict[str, float] = {}
    start = time.perf_counter()

    x, y = sample_toy(TOY, 20_000, seed=args.seed, **TOY_PARAMS)
    data = ArrayDataset(x, y, num_classes=NUM_CLASSES)
    pipe = ddkit.Pipeline.from_config(
        {
            "schedule": {"name": "linear", "timesteps": 1000},
            "parameterization": {"name": "epsilon", "clip_denoised": False},
            "model": {"name": "mlp", "hidden": 128, "depth": 3, "num_classes": NUM_CLASSES},
            "sampler": {"name": "ddpm", "steps": args.sample_steps},
        }
    )
    trainer = ddkit.Trainer(
        pipe,
        data,
        batch_size=256,
        lr=2e-3,
        lr_warmup_steps=100,
        cond_dropout=0.15,
        ema_rates=(0.999,),
        seed=args.seed,
        log_every=max(args.train_steps // 4, 1),
    )
    pipe = trainer.train(args.train_steps)
    timings["train_denoiser_s"] = time.perf_counter() - start
    final_loss = trainer.history[-1].get("loss") if trainer.history else None

    t0 = time.perf_counter()
    clean, clean_acc = train_clean_classifier(args.classifier_steps, args.seed)
    noisy, noisy_loss = train_noisy_classifier(pipe, args.classifier_steps, args.seed)
    timings["train_classifiers_s"] = time.perf_counter() - t0

    xt, yt = sample_toy(TOY, 20_000, seed=args.seed + 5, **TOY_PARAMS)
    assert yt is not None
    bayes_acc = float((bayes_labels(xt) == yt).float().mean())
    clean_vs_bayes = float((clean(xt).argmax(1) == bayes_labels(xt)).float().mean())
    truth, _ = sample_toy(TOY, args.samples, seed=args.seed + 6, **TOY_PARAMS)

    labels = torch.arange(args.samples) % NUM_CLASSES
    x_T = torch.randn(args.samples, 2, generator=torch.Generator().manual_seed(args.seed + 7))
    cg_pipe = _unconditional_pipeline(pipe)

    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for method in ("classifier-free", "classifier"):
        for scale in args.scales:
            if method == "classifier-free":
                guided = pipe.with_guidance([{"name": "classifier-free", "scale": scale}])
            else:
                guided = cg_pipe.with_guidance([{"name": "classifier", "classifier": noisy, "scale": scale}])
            gen = torch.Generator().manual_seed(args.seed + 8)
            s0 = time.perf_counter()
            samples = guided.sample(x_T=x_T.clone(), y=labels, generator=gen)
            seconds = time.perf_counter() - s0
            finite = bool(torch.isfinite(samples).all())
            acc = float((clean(samples).argmax(1) == labels).float().mean()) if finite else float("nan")
            sw = sliced_wasserstein(samples, truth) if finite else float("inf")
            rows.append(
                {"method": method, "scale": scale, "accuracy": acc, "sliced_w2": sw, "seconds": seconds}
            )
            print(
                f"  {method:15s} scale {scale:4.1f}: accuracy {acc:.3f}  SW {sw:.4f}  ({seconds:.1f} s)",
                flush=True,
            )
    timings["sampling_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start

    baseline = sliced_wasserstein(sample_toy(TOY, args.samples, seed=args.seed + 9, **TOY_PARAMS)[0], truth)
    return {
        "benchmark": "guidance_accuracy",
        "toy": TOY,
        "toy_params": TOY_PARAMS,
        "num_classes": NUM_CLASSES,
        "train_steps": args.train_steps,
        "classifier_steps": args.classifier_steps,
        "sampler": f"ddpm, {args.sample_steps} steps",
        "samples": args.samples,
        "denoiser_final_loss": final_loss,
        "clean_classifier_accuracy": clean_acc,
        "clean_classifier_agreement_with_bayes": clean_vs_bayes,
        "bayes_accuracy": bayes_acc,
        "noisy_classifier_final_loss": noisy_loss,
        "true_data_sliced_w2": baseline,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "timings": timings,
        "rows": rows,
    }


def _unconditional_pipeline(pipe: Any) -> Any:
    """The trained pipeline sampling its EMA network with the null label (for classifier guidance)."""
    return ddkit.Pipeline(
        model=NullLabel(pipe.sampling_model),
        schedule=pipe.schedule,
        parameterization=pipe.parameterization,
        sampler=pipe.sampler,
        process=pipe.process,
        config=pipe.config,
    )


def plot(result: dict[str, Any], path: str) -> None:
    """Accuracy and sliced W2 against the scale, one line per guidance method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_sw) = plt.subplots(1, 2, figsize=(10, 3.8))
    for method, marker in (("classifier-free", "o"), ("classifier", "s")):
        rows = [r for r in result["rows"] if r["method"] == method]
        scales = [r["scale"] for r in rows]
        ax_acc.plot(scales, [r["accuracy"] for r in rows], marker=marker, label=f"{method} guidance")
        ax_sw.plot(scales, [r["sliced_w2"] for r in rows], marker=marker, label=f"{method} guidance")
    ax_acc.axhline(result["bayes_accuracy"], color="gray", ls="--", lw=1, label="Bayes accuracy on true data")
    ax_acc.axhline(1 / result["num_classes"], color="gray", ls=":", lw=1, label="chance")
    ax_acc.set(xlabel="guidance scale", ylabel="accuracy (clean classifier)", ylim=(0, 1.02))
    ax_acc.set_title("Samples in their label's class")
    ax_sw.axhline(result["true_data_sliced_w2"], color="gray", ls="--", lw=1, label="true data (2nd draw)")
    ax_sw.set(xlabel="guidance scale", ylabel="sliced W2 to the true distribution")
    ax_sw.set_title("Distance to the data distribution")
    for ax in (ax_acc, ax_sw):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict[str, Any]) -> str:
    """The result as a Markdown table (scales down, the two methods across)."""
    by = {(r["method"], r["scale"]): r for r in result["rows"]}
    scales = sorted({r["scale"] for r in result["rows"]})
    lines = [
        "| scale | CFG accuracy | CFG sliced W2 | classifier accuracy | classifier sliced W2 |",
        "|---:|---:|---:|---:|---:|",
    ]
    for s in scales:
        cells = []
        for method in ("classifier-free", "classifier"):
            r = by.get((method, s))
            cells += ["—", "—"] if r is None else [f"{r['accuracy']:.3f}", f"{r['sliced_w2']:.4f}"]
        lines.append(f"| {s:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run (numbers not meaningful)")
    parser.add_argument(
        "--train-steps", type=int, default=None, help="denoiser training steps (default 2500)"
    )
    parser.add_argument(
        "--classifier-steps", type=int, default=None, help="steps per classifier (default 1500)"
    )
    parser.add_argument("--sample-steps", type=int, default=None, help="DDPM sampling steps (default 100)")
    parser.add_argument("--samples", type=int, default=None, help="samples per scale (default 2000)")
    parser.add_argument("--scales", type=float, nargs="+", default=list(SCALES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the results to this file")
    parser.add_argument("--plot", default=None, help="write the plot (PNG) to this file")
    args = parser.parse_args(argv)
    quick = args.quick
    for name, full, short in (
        ("train_steps", 2500, 150),
        ("classifier_steps", 1500, 100),
        ("sample_steps", 100, 20),
        ("samples", 2000, 400),
    ):
        if getattr(args, name) is None:
            setattr(args, name, short if quick else full)
    result = run(args)
    result["quick"] = quick
    print()
    print(
        f"Bayes accuracy on true data {result['bayes_accuracy']:.3f}; clean classifier accuracy "
        f"{result['clean_classifier_accuracy']:.3f}; true-data sliced W2 {result['true_data_sliced_w2']:.4f}"
    )
    print(markdown(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if args.plot:
        plot(result, args.plot)


if __name__ == "__main__":
    main()

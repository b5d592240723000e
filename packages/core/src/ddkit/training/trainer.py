"""The training loop: resampled timesteps, EMA, accumulation, mixed precision, checkpoints, DDP.

One step (guided-diffusion's ``run_step``, made resumable and world-size independent):
take the next global batch from the seeded :class:`~ddkit.training.stream.BatchStream`;
draw the whole global batch's timesteps (from the pipeline's resampler), noise and
condition-dropout mask from generators seeded by (seed, step), and keep this rank's
slice; per micro-batch, ``loss = (losses["loss"] * weights).mean()``, backward (DDP
averages gradients across ranks); clip; AdamW (torch's fused kernel where it has one);
update every EMA; report the per-sample losses to the resampler. Because every random
draw is a function of (seed, step) and the stream state, a run resumed from a checkpoint
repeats, bit for bit on the CPU, what the uninterrupted run would have done, provided torch
uses as many CPU threads (``torch.get_num_threads()``, recorded in each checkpoint's meta as
``cpu_threads``; a resume with another count is logged): some CPU kernels, LayerNorm's backward
among them, split their sums per thread, so another thread count rounds differently. With
another world size a run sees the same batches, timesteps and noise, and differs only by the
rounding of the gradient all-reduce.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import math
import secrets
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ddkit.diffusion.resample import to_chain_steps
from ddkit.errors import ConfigError, IntegrityError
from ddkit.protocols import model_spec
from ddkit.training import checkpoint as ckpt
from ddkit.training import distributed
from ddkit.training.ema import EmaPairs, ema_decay, make_ema_copy, rate_key
from ddkit.training.guard import NonFiniteTrainingError, all_finite, describe_nonfinite
from ddkit.training.lock import RunDirectoryLock, RunLockedError
from ddkit.training.logging import QuartileLog, append_jsonl, truncate_jsonl
from ddkit.training.optim import can_fuse, make_adamw, set_implementation
from ddkit.training.options import TrainOptions
from ddkit.training.precision import (
    autocast,
    check_precision,
    enable_gradient_checkpointing,
    make_grad_scaler,
)
from ddkit.training.rng import capture_rng_state, derive_seed, restore_rng_state, seed_everything
from ddkit.training.stream import BatchStream, in_memory, resolve_data, split_item

__all__ = ["Trainer"]

log = logging.getLogger("ddkit.training")

LOG_FILE = "log.jsonl"
_MODEL_FILE = "model.safetensors"
_OPTIMIZER_FILE = "optimizer.pt"
_STATE_FILE = "state.pt"


def _ema_file(key: str) -> str:
    return f"ema-{key}.safetensors"


def _shapes(state: Mapping[str, Tensor]) -> dict[str, list[int]]:
    return {name: list(t.shape) for name, t in state.items()}


class Trainer:
    """Trains ``pipeline.model`` on ``data``; ``train(steps)`` runs until the run has done ``steps`` steps.

    ``data`` is a tensor of samples ``[N, ...]``, a torch ``Dataset`` or ``DataLoader`` (items
    ``x`` or ``(x, int label)``), the name of a built-in dataset (``ddkit.data.names()``) or a
    table ``{"name": ..., **params}``. Labels are passed to the model as ``y=`` when the model
    is class-conditional (its :class:`~ddkit.ModelSpec` has ``num_classes``).

    ``batch_size`` is the GLOBAL batch: under ``torchrun`` each of the W ranks trains on
    ``batch_size / W`` samples per step (it must divide), and the run sees the same batches,
    timesteps and noise as a single process with the same ``batch_size``. ``grad_accum``
    splits each rank's share into that many sequential micro-batches.

    Defaults follow guided-diffusion: AdamW with ``lr=1e-4``, ``weight_decay=0``, constant
    learning rate (``lr_warmup_steps`` ramps it up linearly), EMA at 0.9999; unlike
    guided-diffusion the EMA decay is warmed up (``ema_warmup``: ``True``/``"fraction"``,
    min(rate, (1+n)/(10+n)); ``"inverse-gamma"``, k-diffusion's 1-(1+n)^-``ema_power``;
    ``False``/``"none"``, guided-diffusion's fixed rate). After training the pipeline
    samples with the EMA weights unless ``use_ema=False`` (``pipeline.use_ema`` switches back).

    ``cond_dropout=p`` replaces each label by the model's null class with probability p
    (classifier-free guidance). Items ``(x, {keyword: tensor})`` pass other conditioning
    (``encoder_hidden_states``, ...) to the model; ``null_cond={keyword: null}`` drops those
    too, with the same probability and for the same samples, replacing them by ``null`` (a
    tensor of one sample's shape, or a number) or, for ``"learned"``, by a learned null
    embedding: a parameter trained with the model that lives on it as ``model.ddkit_null``
    (see :mod:`ddkit.conditioning`), so it is averaged by the EMA, checkpointed, saved in
    ``model.safetensors`` and used by classifier-free guidance when sampling.

    A latent pipeline (one with an autoencoder) trains in latent space: each batch is
    encoded by the frozen autoencoder (no gradients) before noise is added.

    ``precision``: ``fp32``, ``bf16`` (autocast, CPU or GPU) or
    ``fp16`` (autocast and a gradient scaler; GPU only). ``gradient_checkpointing`` and
    ``channels_last`` are passed to the model.

    With ``out_dir``, rank 0 writes ``log.jsonl`` (loss by timestep quartile every
    ``log_every`` steps; also kept in :attr:`history`) and checkpoints every
    ``checkpoint_every`` steps and at the end, keeping the newest ``keep_checkpoints``.
    ``resume=True`` continues from the newest intact checkpoint in ``out_dir`` (a damaged
    one is reported by name and the next older one tried; an empty ``out_dir`` starts
    afresh); without it, an ``out_dir`` that holds checkpoints is refused. ``seed`` fixes
    the data order and every random draw (``None``: a random seed, recorded in checkpoints).
    The trainer holds an exclusive lock on ``out_dir`` (:mod:`ddkit.training.lock`) until
    :meth:`close` (or until it is garbage-collected or its process dies): a second trainer on the
    same directory is refused at once. A resume first puts back complete checkpoints that a
    kill during a rewrite left under temporary names.

    ``on_nonfinite``: a step whose loss or gradient norm is NaN or infinite raises
    :class:`~ddkit.training.guard.NonFiniteTrainingError` naming the step (``"stop"``, the
    default: the weights and the checkpoints stay as they were before that step), or is
    dropped with its batch (``"skip"``; counted in :attr:`nonfinite_skips` and as
    ``nonfinite_skips`` in the log). A checkpoint of non-finite weights is never written.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        pipeline: Any,
        data: Any,
        *,
        batch_size: int,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        lr_warmup_steps: int = 0,
        grad_clip: float | None = None,
        grad_accum: int = 1,
        ema_rates: Sequence[float] | float = (0.9999,),
        ema_warmup: bool | str = True,
        ema_power: float = 2 / 3,
        use_ema: bool = True,
        cond_dropout: float = 0.0,
        null_cond: Mapping[str, Any] | None = None,
        precision: str = "fp32",
        gradient_checkpointing: bool = False,
        channels_last: bool = False,
        device: str | torch.device | None = None,
        seed: int | None = None,
        out_dir: str | Path | None = None,
        checkpoint_every: int | None = None,
        keep_checkpoints: int = 3,
        resume: bool = False,
        log_every: int = 100,
        progress: bool = False,
        on_nonfinite: str = "stop",
    ) -> None:
        self.options = opts = TrainOptions(
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            lr_warmup_steps=lr_warmup_steps,
            grad_clip=grad_clip,
            grad_accum=grad_accum,
            ema_rates=ema_rates,
            ema_warmup=ema_warmup,
            ema_power=ema_power,
            use_ema=use_ema,
            cond_dropout=cond_dropout,
            null_cond=null_cond,
            precision=precision,
            gradient_checkpointing=gradient_checkpointing,
            channels_last=channels_last,
            seed=seed,
            out_dir=out_dir,
            checkpoint_every=checkpoint_every,
            keep_checkpoints=keep_checkpoints,
            resume=resume,
            log_every=log_every,
            progress=progress,
            on_nonfinite=on_nonfinite,
        )
        self.pipeline = pipeline
        model = getattr(pipeline, "model", None)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"the pipeline's model must be a torch nn.Module (got {type(model).__name__})")
        self.model: nn.Module = model
        self.resampler = pipeline.resampler
        self.num_timesteps = int(pipeline.process.num_timesteps)

        self.distributed = distributed.init_from_env()
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        if batch_size % (self.world_size * opts.grad_accum):
            raise ConfigError(
                f"batch_size {batch_size} is the global batch and must be divisible by world size "
                f"{self.world_size} × grad_accum {opts.grad_accum}; choose a multiple of "
                f"{self.world_size * opts.grad_accum}"
            )
        self.local_batch = batch_size // self.world_size
        self.device = self._resolve_device(device)
        check_precision(opts.precision, self.device)

        self.out_dir = opts.out_dir
        self._lock: RunDirectoryLock | None = None
        existing = self._open_out_dir()
        self.dataset, loader = resolve_data(data)
        self._check_data_against_model()

        # -- the model and what trains it ----------------------------------------------
        mover = getattr(pipeline, "to", None)
        if callable(mover):
            mover(self.device)  # the model and any EMA copies it already holds
        self.model.to(self.device)
        if opts.channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if opts.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        self.optimizer = make_adamw(self.model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
        self._fused = can_fuse(self.model.parameters())
        self._params: list[nn.Parameter] = []  # the trained ones; set by train()
        self.scaler = make_grad_scaler(opts.precision, self.device)
        self.step = 0
        self.ema_updates = 0
        self.history: list[dict[str, Any]] = []
        self.skipped_checkpoints: list[tuple[str, str]] = []
        self.nonfinite_skips = 0
        self._last_saved = -1
        self._qlog = QuartileLog(self.num_timesteps)
        self._null_class = model_spec(self.model).null_class
        self._gen_cpu = torch.Generator()
        self._gen_device = torch.Generator(device=self.device) if self.device.type != "cpu" else self._gen_cpu

        self.seed = (
            opts.seed if opts.seed is not None else int(distributed.broadcast_object(secrets.randbits(62)))
        )
        self.stream = BatchStream(
            self.dataset,
            batch_size=batch_size,
            seed=self.seed,
            rank=self.rank,
            world_size=self.world_size,
            loader=loader,
        )
        resumed = self._resume() if opts.resume and existing else False
        if not resumed:
            seed_everything(derive_seed(self.seed, "global", self.rank))
            self._fresh_ema()
            if self.out_dir is not None and self.rank == 0:
                truncate_jsonl(self.out_dir / LOG_FILE, 0)
        self._ddp = self._wrap_ddp()
        if self.distributed:
            distributed.barrier()
        if self._lock is not None:
            self._lock.claimed = True  # until now a failed __init__ leaves a lock a new Trainer may take

    # -- setup ------------------------------------------------------------------------

    def _open_out_dir(self) -> list[tuple[int, Path]]:
        """Lock ``out_dir`` (rank 0), put back checkpoints a kill left aside (resume), list them."""
        if self.out_dir is None:
            return []
        problem: str | None = None
        if self.rank == 0:
            self._lock = RunDirectoryLock(self.out_dir, provisional=True)
            try:
                self._lock.acquire(record_pid=False)  # a trainer that refuses the directory writes nothing
                problem = self._check_out_dir()
            except RunLockedError as exc:
                problem = str(exc)
            if problem is None:
                self._lock.record_pid()
            else:
                self._lock.release()
        problem = distributed.broadcast_object(problem)
        if problem is not None:
            raise (RunLockedError if "in use by" in problem else ConfigError)(problem)
        return ckpt.list_checkpoints(self.out_dir)

    def _check_out_dir(self) -> str | None:
        """Under the lock: recover interrupted rewrites (resume) or refuse to overwrite a run."""
        assert self.out_dir is not None
        if self.options.resume:
            for name in ckpt.recover_checkpoints(self.out_dir):
                log.warning("put back %s, left aside by an interrupted checkpoint rewrite", name)
            return None
        existing = ckpt.list_checkpoints(self.out_dir)
        stranded = ckpt.stranded_checkpoints(self.out_dir)
        if existing or stranded:
            newest = existing[0][1].name if existing else stranded[0].name
            return (
                f"{self.out_dir} already holds checkpoints ({newest} is the newest); pass "
                "--resume (resume=True) to continue that run, or choose another output directory: "
                "nothing was overwritten"
            )
        return None

    def close(self) -> None:
        """Release ``out_dir`` for another trainer; a later ``train()`` takes it again if it is free."""
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """``with Trainer(...) as trainer:`` releases ``out_dir`` at the end of the block."""
        self.close()

    def _hold_out_dir(self) -> None:
        """Take ``out_dir`` again after :meth:`close`, unless another run has written to it since."""
        if self._lock is None or self._lock.held:
            return
        assert self.out_dir is not None
        self._lock.acquire()
        newest = ckpt.list_checkpoints(self.out_dir)
        if newest and newest[0][0] > self._last_saved:
            self._lock.release()
            raise ConfigError(
                f"{self.out_dir} holds {newest[0][1].name}, written by another run after this trainer was "
                "closed; continue from it with a new Trainer(..., resume=True)"
            )

    def _resolve_device(self, device: str | torch.device | None) -> torch.device:
        if device is not None:
            try:
                dev = torch.device(device)
            except (RuntimeError, TypeError):
                raise ConfigError(
                    f"'device' must name a torch device such as cpu, cuda or cuda:1 (got {device!r})"
                ) from None
            if dev.type == "cuda" and not torch.cuda.is_available():
                raise ConfigError(f"'device' is {device!r}, but CUDA is not available here; use device 'cpu'")
            if dev.type == "cuda" and dev.index is None and self.distributed:
                dev = distributed.default_device()
            return dev
        if self.distributed:
            return distributed.default_device()
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def _dataset_labels(self) -> tuple[bool, int | None]:
        """Whether items carry labels, and the largest label where cheaply known."""
        memory = in_memory(self.dataset)
        if memory is not None:
            labels = memory[1]
            if labels is None:
                return False, None
            return True, int(labels.max().item()) if labels.numel() else None
        _, y = split_item(self.dataset[0])
        if isinstance(y, dict):
            return "y" in y, None
        return y is not None, None

    def _check_data_against_model(self) -> None:
        spec = model_spec(self.model)
        has_labels, max_label = self._dataset_labels()
        self._pass_labels = has_labels and spec.num_classes is not None
        if spec.num_classes is not None and not has_labels:
            raise ConfigError(
                f"the model is class-conditional (num_classes={spec.num_classes}) but the data has no class "
                "labels; use data whose items are (x, label), or an unconditional model"
            )
        if (
            self._pass_labels
            and max_label is not None
            and spec.num_classes is not None
            and max_label >= spec.num_classes
        ):
            raise ConfigError(
                f"the data has class label {max_label} but the model takes num_classes={spec.num_classes} "
                f"(labels 0..{spec.num_classes - 1}); build the model with num_classes >= {max_label + 1}"
            )
        if getattr(self.pipeline, "autoencoder", None) is not None:
            self._check_latent_shape(spec.sample_shape)
        if self.options.null_cond:
            self._check_null_cond()
        if self.options.cond_dropout > 0 and (not self.options.null_cond or self._pass_labels):
            if spec.null_class is None:
                raise ConfigError(
                    f"cond_dropout={self.options.cond_dropout} replaces labels with the model's null class, "
                    f"but the model ({type(self.model).__name__}) has none (ModelSpec.null_class is None); "
                    "build a class-conditional model with a null class (e.g. mlp or adm-unet with "
                    "num_classes), or set cond_dropout=0"
                )
            if not self._pass_labels:
                raise ConfigError(f"cond_dropout={self.options.cond_dropout} needs class labels in the data")

    def _check_latent_shape(self, want: tuple[int, ...] | None) -> None:
        """The autoencoder's latents of one data item have the shape the model takes."""
        memory = in_memory(self.dataset)
        item = memory[0][:1] if memory is not None else split_item(self.dataset[0])[0].unsqueeze(0)
        got = tuple(self.pipeline.encode(item.float()).shape[1:])
        if want is not None and got != tuple(want):
            raise ConfigError(
                f"the autoencoder turns data of shape {list(item.shape[1:])} into latents of shape "
                f"{list(got)}, but the model takes {list(want)}; change the model's input shape or the "
                "autoencoder"
            )

    def _check_null_cond(self) -> None:
        """Every keyword to drop is in the data; attach a learned null embedding where asked."""
        from ddkit.conditioning import attach_null_embeddings

        _, item = split_item(self.dataset[0])
        keys = set(item) if isinstance(item, dict) else set()
        missing = sorted(set(self.options.null_cond) - keys)
        if missing:
            raise ConfigError(
                f"'null_cond' drops {missing}, but the data items carry {sorted(keys) or 'no conditioning'}; "
                "use items (x, {keyword: tensor}) with those keywords"
            )
        assert isinstance(item, dict)
        learned = {k: tuple(item[k].shape) for k, v in self.options.null_cond.items() if isinstance(v, str)}
        if learned:
            attach_null_embeddings(self.model, learned)

    def _drop_conditioning(self, cond: dict[str, Tensor], drop: Tensor) -> dict[str, Tensor]:
        """``cond`` with each keyword of ``null_cond`` replaced by its null value where ``drop``."""
        from ddkit.conditioning import null_embeddings

        learned = null_embeddings(self.model)
        out = dict(cond)
        for key, null in self.options.null_cond.items():
            value = cond[key]
            nv = learned[key] if isinstance(null, str) else null.to(device=value.device)
            where = drop.to(value.device).view(-1, *([1] * (value.ndim - 1)))
            out[key] = torch.where(where, nv.to(value.dtype), value)
        return out

    def _fresh_ema(self) -> None:
        self.ema: dict[str, nn.Module] = {
            rate_key(r): make_ema_copy(self.model) for r in self.options.ema_rates
        }
        self._publish_ema()

    def _publish_ema(self) -> None:
        self._ema_pairs = {key: EmaPairs(ema, self.model) for key, ema in self.ema.items()}
        target = getattr(self.pipeline, "ema", None)
        if isinstance(target, dict):
            target.clear()
            target.update(self.ema)
        else:
            self.pipeline.ema = dict(self.ema)

    def _wrap_ddp(self) -> DistributedDataParallel | None:
        """DistributedDataParallel around the model (it broadcasts rank 0's weights); None in one process."""
        if not self.distributed:
            return None
        try:
            params = inspect.signature(self.pipeline.loss).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        if "model" not in params:
            raise ConfigError(
                "training under torchrun calls pipeline.loss(x0, t=..., noise=..., model=<DDP wrapper>), "
                f"but {type(self.pipeline).__name__}.loss takes no 'model' argument; use ddkit.Pipeline"
            )
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=device_ids)

    # -- the loop ---------------------------------------------------------------------

    def train(self, steps: int) -> Any:
        """Train until the run has done ``steps`` steps in all (a resumed run counts its earlier ones).

        Returns the pipeline, which now samples with the EMA weights (unless ``use_ema=False``).
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ConfigError(f"'steps' must be an int >= 0, the run's total number of steps (got {steps!r})")
        opts = self.options
        bar = None
        if opts.progress and self.rank == 0 and steps > self.step:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, initial=self.step, desc="train", dynamic_ncols=True)
        started, first = time.perf_counter(), self.step
        self._hold_out_dir()
        # Set once per call, not per step: walking the module tree costs milliseconds, and
        # nothing inside the loop changes train/eval modes or which parameters train.
        self.model.train()
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        try:
            while self.step < steps:
                self._run_step()
                self.step += 1
                if bar is not None:
                    bar.update(1)
                if self.step % opts.log_every == 0 or self.step == steps:
                    record = self._flush_log(started, first)
                    if bar is not None and "loss" in record:
                        bar.set_postfix(loss=f"{record['loss']:.4g}")
                if opts.checkpoint_every is not None and self.step % opts.checkpoint_every == 0:
                    self.save_checkpoint()
            if self.out_dir is not None and self._last_saved != self.step:
                self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        if self.distributed:
            distributed.barrier()
        if hasattr(self.pipeline, "use_ema"):
            self.pipeline.use_ema = opts.use_ema and bool(self.ema)
        return self.pipeline

    def _lr_at(self, step: int) -> float:
        warm = self.options.lr_warmup_steps
        return self.options.lr * min(1.0, (step + 1) / warm) if warm else self.options.lr

    def _draws(self, sample_shape: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """This rank's slice of the global batch's timesteps, weights, noise and dropout mask."""
        b, lo = self.local_batch, self.rank * self.local_batch
        batch = self.options.batch_size
        self._gen_cpu.manual_seed(derive_seed(self.seed, "timesteps", self.step))
        t, w = self.resampler.sample(batch, "cpu", self._gen_cpu)
        t = to_chain_steps(self.pipeline.process, self.resampler, t)
        drop = None
        if self.options.cond_dropout > 0:
            self._gen_cpu.manual_seed(derive_seed(self.seed, "cond-dropout", self.step))
            drop = (torch.rand(batch, generator=self._gen_cpu) < self.options.cond_dropout)[lo : lo + b]
        self._gen_device.manual_seed(derive_seed(self.seed, "noise", self.step))
        shape = (batch, *sample_shape)
        noise = torch.randn(shape, generator=self._gen_device, device=self.device)[lo : lo + b]
        return t[lo : lo + b].to(self.device), w[lo : lo + b].to(self.device), noise, drop

    def _run_step(self) -> None:
        opts = self.options
        x, y = self.stream.next()
        extra: dict[str, Tensor] = {}
        if isinstance(y, dict):
            extra = {k: v.to(self.device, non_blocking=True) for k, v in y.items()}
            y = extra.pop("y", None)
        x = x.to(self.device, non_blocking=True).float()
        if getattr(self.pipeline, "autoencoder", None) is not None:
            x = self.pipeline.encode(x)  # latent pipeline: train on the frozen autoencoder's latents
        t, w, noise, drop = self._draws(tuple(x.shape[1:]))
        if drop is not None and self.options.null_cond:
            extra = self._drop_conditioning(extra, drop)
        if opts.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
            noise = noise.contiguous(memory_format=torch.channels_last)
        if y is not None and self._pass_labels:
            y = y.to(self.device)
            if drop is not None:
                y = torch.where(drop.to(self.device), torch.full_like(y, self._null_class or 0), y)
        else:
            y = None
        lr = self._lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

        self.optimizer.zero_grad(set_to_none=True)
        accum = opts.grad_accum
        micro = self.local_batch // accum
        per_sample: list[dict[str, Tensor]] = []
        step_loss = torch.zeros((), device=self.device)
        for k in range(accum):
            sl = slice(k * micro, (k + 1) * micro)
            cond = {"y": y[sl]} if y is not None else {}
            cond.update({key: value[sl] for key, value in extra.items()})
            sync = self._ddp is None or k == accum - 1
            with contextlib.ExitStack() as stack:
                if not sync and self._ddp is not None:
                    stack.enter_context(self._ddp.no_sync())
                with autocast(opts.precision, self.device):
                    if self._ddp is not None:
                        losses = self.pipeline.loss(x[sl], t=t[sl], noise=noise[sl], model=self._ddp, **cond)
                    else:
                        losses = self.pipeline.loss(x[sl], t=t[sl], noise=noise[sl], **cond)
                    loss = (losses["loss"] * w[sl]).mean() / accum
                step_loss = step_loss + loss.detach()
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            per_sample.append({key: v.detach().float() for key, v in losses.items() if v.ndim == 1})

        params = self._params
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in params if p.grad is not None]
        if opts.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        if not self._step_is_finite(step_loss, grad_norm):
            self._drop_nonfinite_step(step_loss, grad_norm)  # raises under on_nonfinite="stop"
            return
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            took_step = self.scaler.get_scale() >= scale
        else:
            self.optimizer.step()
            took_step = True
        if took_step:
            for key, pairs in self._ema_pairs.items():
                pairs.update(ema_decay(float(key), self.ema_updates, opts.ema_warmup, power=opts.ema_power))
            self.ema_updates += 1

        keys = sorted(set.intersection(*(set(d) for d in per_sample)))
        terms = {key: torch.cat([d[key] for d in per_sample]) for key in keys}
        if "loss" in terms:
            self.resampler.update(t, terms["loss"])
        # Each rank sums its own samples; the sums are added across ranks at the log line only.
        self._qlog.add(t, terms, w)
        self._qlog.add_scalar("grad_norm", grad_norm)
        self._qlog.add_scalar("lr", lr)

    def _step_is_finite(self, loss: Tensor, grad_norm: Tensor) -> bool:
        """One fused isfinite over the step's loss and gradient norm, read once, before the update.

        Under a gradient scaler (fp16) an infinite gradient is the scaler's business (it skips
        the step and lowers the scale), so only the loss is checked. Every rank must decide
        alike: under torchrun the gradient norm (of the all-reduced gradients, so the same on
        every rank, and non-finite wherever one rank's loss was) is checked alone, with no
        collective; with a scaler the losses are summed over the ranks.
        """
        if self.scaler is None:
            checked = grad_norm.float() if self.distributed else loss.float() + grad_norm.float()
        else:
            checked = loss.float()
            if self.distributed:
                checked = distributed.all_reduce_sum(checked.reshape(1))
        return bool(torch.isfinite(checked).all())

    def _drop_nonfinite_step(self, loss: Tensor, grad_norm: Tensor) -> None:
        """Forget the step's gradients; raise (``"stop"``) or count the skip (``"skip"``)."""
        number = self.step + 1
        what = describe_nonfinite(loss, None if self.scaler is not None else grad_norm)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.update()  # closes the unscale_ of this step
        if self.options.on_nonfinite == "stop":
            kept = (
                f"; the newest checkpoint, {ckpt.checkpoint_name(self._last_saved)}, is intact"
                if self.out_dir is not None and self._last_saved >= 0
                else ""
            )
            raise NonFiniteTrainingError(
                f"training stopped at step {number}: {what}. The weights are those after step "
                f"{self.step} and nothing non-finite was checkpointed{kept}. Look for NaN or inf in the "
                "data (the batch of that step), or lower 'lr' or set 'grad_clip'; "
                'on_nonfinite="skip" drops such batches and goes on',
                step=number,
            )
        self.nonfinite_skips += 1
        log.warning("step %d: %s; batch skipped (%d skipped so far)", number, what, self.nonfinite_skips)

    def _flush_log(self, started: float, first: int) -> dict[str, Any]:
        values = self._qlog.flush(reduce=distributed.all_reduce_sum if self.distributed else None)
        if self.rank != 0:
            return {}
        elapsed = time.perf_counter() - started
        record: dict[str, Any] = {"step": self.step, "samples": self.step * self.options.batch_size}
        record.update(values)
        if self.nonfinite_skips:
            record["nonfinite_skips"] = self.nonfinite_skips
        record["steps_per_sec"] = (self.step - first) / elapsed if elapsed > 0 else math.nan
        self.history.append(record)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            append_jsonl(self.out_dir / LOG_FILE, record)
        log.info("step %d: %s", self.step, json.dumps(values))
        return record

    # -- checkpoints ------------------------------------------------------------------

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step to ``out_dir`` (rank 0 writes; every rank must call)."""
        if self.out_dir is None:
            raise ConfigError("save_checkpoint() needs the trainer's 'out_dir'")
        weights = [*self.model.parameters(), *(p for ema in self.ema.values() for p in ema.parameters())]
        if not all_finite(weights):
            raise NonFiniteTrainingError(
                f"the weights after step {self.step} are not finite (NaN or inf); no checkpoint was written "
                "and the existing ones are kept. Lower 'lr' or set 'grad_clip'",
                step=self.step,
            )
        self._hold_out_dir()
        generators = {"cpu": self._gen_cpu}
        if self._gen_device is not self._gen_cpu:
            generators["device"] = self._gen_device
        rng = capture_rng_state(generators)
        if self.distributed:
            per_rank: list[Any] = [None] * self.world_size
            dist.all_gather_object(per_rank, rng)
        else:
            per_rank = [rng]
        self._last_saved = self.step
        if self.rank != 0:
            return None
        model_state = self.model.state_dict()
        files = {
            _MODEL_FILE: ckpt.tensors_bytes(model_state),
            _OPTIMIZER_FILE: ckpt.state_bytes(self.optimizer.state_dict()),
            _STATE_FILE: ckpt.state_bytes(
                {
                    "step": self.step,
                    "ema_updates": self.ema_updates,
                    "nonfinite_skips": self.nonfinite_skips,
                    "seed": self.seed,
                    "data": self.stream.state_dict(),
                    "resampler": self.resampler.state_dict(),
                    "rng": per_rank,
                    "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                }
            ),
        }
        for key, ema in self.ema.items():
            files[_ema_file(key)] = ckpt.tensors_bytes(ema.state_dict())
        meta = {
            "step": self.step,
            "seed": self.seed,
            "batch_size": self.options.batch_size,
            "world_size": self.world_size,
            "ema_rates": list(self.ema),
            "precision": self.options.precision,
            "cpu_threads": torch.get_num_threads(),  # bit-identical resumes on the CPU need the same count
            "model": type(self.model).__name__,
            "params": _shapes(model_state),
        }
        path = ckpt.write_checkpoint(self.out_dir, self.step, files, meta=meta)
        ckpt.prune_checkpoints(self.out_dir, self.options.keep_checkpoints)
        return path

    def _resume(self) -> bool:
        """Load the newest intact checkpoint of ``out_dir``; warn about each one skipped."""
        assert self.out_dir is not None
        failures: list[str] = []
        chosen: str | None = None
        loaded: dict[str, Any] | None = None
        if self.rank == 0:
            for _, path in ckpt.list_checkpoints(self.out_dir):
                try:
                    loaded = self._read_checkpoint(path)
                except Exception as exc:  # any unreadable checkpoint is skipped, not fatal
                    reason = (
                        str(exc) if isinstance(exc, IntegrityError) else f"checkpoint {path.name}: {exc!r}"
                    )
                    failures.append(reason)
                    self.skipped_checkpoints.append((path.name, reason))
                    warnings.warn(
                        f"skipping {reason}; trying the next older one", RuntimeWarning, stacklevel=3
                    )
                    continue
                chosen = path.name
                break
        chosen, failures = distributed.broadcast_object((chosen, failures))
        if chosen is None:
            raise IntegrityError(
                f"no checkpoint in {self.out_dir} could be loaded:\n  "
                + "\n  ".join(failures)
                + "\nremove the damaged ones or start a new run in another directory"
            )
        if self.rank != 0:
            loaded = self._read_checkpoint(self.out_dir / chosen)
        assert loaded is not None
        self._apply_checkpoint(loaded)
        log.info("resumed from %s at step %d", chosen, self.step)
        return True

    def _read_checkpoint(self, path: Path) -> dict[str, Any]:
        """Read and check everything of a checkpoint; nothing of the trainer is changed yet."""
        manifest = ckpt.verify_checkpoint(path)
        model_state = ckpt.load_tensors(path / _MODEL_FILE)
        want = _shapes(self.model.state_dict())
        got = _shapes(model_state)
        if want != got:
            missing = sorted(set(want) - set(got))
            extra = sorted(set(got) - set(want))
            differ = [n for n in want if n in got and want[n] != got[n]]
            detail = []
            if missing:
                detail.append(f"missing {', '.join(missing[:5])}")
            if extra:
                detail.append(f"unexpected {', '.join(extra[:5])}")
            if differ:
                n = differ[0]
                detail.append(f"{n} has shape {got[n]} there, {want[n]} in this model")
            raise IntegrityError(
                f"checkpoint {path.name} is from an incompatible configuration ({'; '.join(detail)})"
            )
        emas = {}
        for key in self.options.ema_rates:
            name = _ema_file(rate_key(key))
            if name in manifest["files"]:
                emas[rate_key(key)] = ckpt.load_tensors(path / name)
        optim = ckpt.load_state(path / _OPTIMIZER_FILE)
        groups = optim.get("param_groups", [])
        mine = self.optimizer.param_groups
        if len(groups) != len(mine) or any(
            len(g["params"]) != len(m["params"]) for g, m in zip(groups, mine)
        ):
            raise IntegrityError(
                f"checkpoint {path.name}: its optimizer state does not fit this model's parameters"
            )
        state = ckpt.load_state(path / _STATE_FILE)
        probe = copy.deepcopy(self.resampler)
        try:
            probe.load_state_dict(state["resampler"])
        except Exception as exc:
            raise IntegrityError(
                f"checkpoint {path.name}: the resampler state does not fit ({exc})"
            ) from None
        if int(state["data"]["length"]) != self.stream.length:
            raise IntegrityError(
                f"checkpoint {path.name} was trained on {state['data']['length']} items, this data has "
                f"{self.stream.length}; resume with the same data"
            )
        return {
            "name": path.name,
            "model": model_state,
            "ema": emas,
            "optimizer": optim,
            "state": state,
            "meta": manifest.get("meta") or {},
        }

    def _apply_checkpoint(self, loaded: Mapping[str, Any]) -> None:
        state = loaded["state"]
        if self.options.seed is not None and self.options.seed != int(state["seed"]):
            warnings.warn(
                f"seed {self.options.seed} differs from the resumed run's seed {state['seed']}; the run "
                "continues with its own seed so that it finishes as it began",
                RuntimeWarning,
                stacklevel=4,
            )
        self.seed = int(state["seed"])
        self.stream.seed = self.seed
        self.model.load_state_dict(loaded["model"])
        self.ema = {}
        for rate in self.options.ema_rates:
            key = rate_key(rate)
            ema = make_ema_copy(self.model)
            if key in loaded["ema"]:
                ema.load_state_dict(loaded["ema"][key])
            else:
                warnings.warn(
                    f"checkpoint {loaded['name']} has no EMA at rate {key}; "
                    "it starts from the current weights",
                    RuntimeWarning,
                    stacklevel=4,
                )
            self.ema[key] = ema
        self._publish_ema()
        self.optimizer.load_state_dict(loaded["optimizer"])
        set_implementation(self.optimizer, self._fused)
        self.resampler.load_state_dict(state["resampler"])
        saved_batch = int(state["data"]["batch_size"])
        if saved_batch != self.options.batch_size:
            warnings.warn(
                f"the run was trained with batch_size {saved_batch} "
                f"and continues with {self.options.batch_size}",
                RuntimeWarning,
                stacklevel=4,
            )
        self.stream.load_state_dict(state["data"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.ema_updates = int(state["ema_updates"])
        self.nonfinite_skips = int(state.get("nonfinite_skips", 0))
        self._last_saved = self.step
        rngs = state["rng"]
        generators = {"cpu": self._gen_cpu}
        if self._gen_device is not self._gen_cpu:
            generators["device"] = self._gen_device
        if self.rank < len(rngs):
            restore_rng_state(rngs[self.rank], generators)
        else:
            seed_everything(derive_seed(self.seed, "global", self.rank, self.step))
        threads = loaded.get("meta", {}).get("cpu_threads")
        if self.device.type == "cpu" and isinstance(threads, int) and threads != torch.get_num_threads():
            log.warning(
                "%s was trained with %d CPU threads and the run continues with %d: it will not be "
                "bit-identical to an uninterrupted run (set torch.set_num_threads(%d) or OMP_NUM_THREADS=%d "
                "for that)",
                loaded["name"],
                threads,
                torch.get_num_threads(),
                threads,
                threads,
            )
        if self.out_dir is not None and self.rank == 0:
            truncate_jsonl(self.out_dir / LOG_FILE, self.step)
            path = self.out_dir / LOG_FILE
            if path.exists():
                self.history = [
                    json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line
                ]

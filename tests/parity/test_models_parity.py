"""Parity of ddkit-models with guided-diffusion's networks (guided-diffusion-sdk).

For each configuration both libraries build the network from the same flags; a random
state dict of guided-diffusion's network loads into ddkit's with ``strict=True`` (and back),
and both give the same float32 output for the same input to 1e-5 (absolute and relative)
with ``memory_format="preserve"``, the reference's activation layout. ddkit's default
(``"auto"``: channels-last activations for CPU inference) sums convolutions in another
order; it is held to 5e-5: the reference itself moves by about 1e-5 when run channels-last.
Networks are small (32 channels, one residual block per level) so the file runs in seconds.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import ddkit

gd_unet = pytest.importorskip("guided_diffusion.unet")
gd_nn = pytest.importorskip("guided_diffusion.nn")
gd_script = pytest.importorskip("guided_diffusion.script_util")

pytestmark = pytest.mark.parity
torch.set_num_threads(1)

ATOL = RTOL = 1e-5
#: For ddkit's default channels-last CPU inference (float32 summation order differs).
LAYOUT_ATOL = 5e-5

# (id, flags) — guided-diffusion create_model flags; every switch is on in one and off in another.
UNET_CASES: list[tuple[str, dict[str, Any]]] = [
    (
        "32px-cond-sigma-film-updown-new",
        {
            "image_size": 32,
            "channel_mult": "1,2,2",
            "attention_resolutions": "16,8",
            "class_cond": True,
            "learn_sigma": True,
            "use_scale_shift_norm": True,
            "resblock_updown": True,
            "use_new_attention_order": True,
            "num_head_channels": 16,
        },
    ),
    (
        "32px-uncond-plain-legacy",
        {
            "image_size": 32,
            "channel_mult": "1,2",
            "attention_resolutions": "16",
            "class_cond": False,
            "learn_sigma": False,
            "use_scale_shift_norm": False,
            "resblock_updown": False,
            "use_new_attention_order": False,
            "num_heads": 2,
        },
    ),
    (
        "64px-cond-film-legacy-upsample-heads",
        {
            "image_size": 64,
            "channel_mult": "",
            "attention_resolutions": "16,8",
            "class_cond": True,
            "learn_sigma": False,
            "use_scale_shift_norm": True,
            "resblock_updown": False,
            "use_new_attention_order": False,
            "num_heads": 4,
            "num_heads_upsample": 2,
        },
    ),
    (
        "64px-uncond-sigma-updown-new-dropout",
        {
            "image_size": 64,
            "channel_mult": "1,2,2",
            "attention_resolutions": "32,16",
            "class_cond": False,
            "learn_sigma": True,
            "use_scale_shift_norm": False,
            "resblock_updown": True,
            "use_new_attention_order": True,
            "num_head_channels": 32,
            "dropout": 0.1,
        },
    ),
]


def perturbed_state(module: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """The module's initial state plus noise: zero-initialized outputs and unit norms would
    hide differences in the layers they gate."""
    gen = torch.Generator().manual_seed(seed)
    return {
        k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
        for k, v in module.state_dict().items()
    }


def gd_model(flags: dict[str, Any]) -> nn.Module:
    defaults = {k: v for k, v in gd_script.model_and_diffusion_defaults().items() if k in _CREATE_MODEL_ARGS}
    return gd_script.create_model(**{**defaults, "num_channels": 32, "num_res_blocks": 1, **flags})


_CREATE_MODEL_ARGS = {
    "image_size",
    "num_channels",
    "num_res_blocks",
    "channel_mult",
    "learn_sigma",
    "class_cond",
    "use_checkpoint",
    "attention_resolutions",
    "num_heads",
    "num_head_channels",
    "num_heads_upsample",
    "use_scale_shift_norm",
    "dropout",
    "resblock_updown",
    "use_fp16",
    "use_new_attention_order",
}


def paired(flags: dict[str, Any], memory_format: str = "preserve") -> tuple[nn.Module, nn.Module]:
    ref = gd_model(flags)
    ours = ddkit.create(
        "model",
        "adm-unet",
        **{"num_channels": 32, "num_res_blocks": 1, "memory_format": memory_format, **flags},
    )
    state = perturbed_state(ref)
    ref.load_state_dict(state, strict=True)
    ours.load_state_dict(state, strict=True)
    return ref.eval(), ours.eval()


def inputs(size: int, batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=gen)
    t = torch.tensor([3.0, 871.5])[:batch]
    y = torch.randint(0, 1000, (batch,), generator=gen)
    return x, t, y


def assert_same(ours: torch.Tensor, ref: torch.Tensor, atol: float = ATOL, rtol: float = RTOL) -> None:
    assert ours.shape == ref.shape
    assert ours.dtype == ref.dtype
    diff = (ours.double() - ref.double()).abs()
    assert bool((diff <= atol + rtol * ref.double().abs()).all()), f"max abs diff {diff.max().item():.3g}"


@pytest.mark.parametrize(("name", "flags"), UNET_CASES, ids=[c[0] for c in UNET_CASES])
def test_unet_state_dict_and_output(name: str, flags: dict[str, Any]) -> None:
    ref, ours = paired(flags)
    assert list(ours.state_dict()) == list(ref.state_dict())  # same names, same order
    x, t, y = inputs(flags["image_size"])
    cond = {"y": y} if flags["class_cond"] else {}
    with torch.no_grad():
        expected = ref(x, t, **cond)
        assert_same(ours(x, t, **cond), expected)
        ours.set_attention_backend("math")
        assert_same(ours(x, t, **cond), expected)
        ours.memory_format = "auto"  # the default: channels-last CPU inference
        assert_same(ours(x, t, **cond), expected, atol=LAYOUT_ATOL)
    # and back: ddkit's state dict loads strictly into guided-diffusion's network
    gd_model(flags).load_state_dict(ours.state_dict(), strict=True)


def test_unet_input_gradients_match() -> None:
    ref, ours = paired(UNET_CASES[0][1])
    x, t, y = inputs(32)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref(x_ref, t, y=y).square().sum().backward()
    ours(x_ours, t, y=y).square().sum().backward()
    assert x_ref.grad is not None
    assert x_ours.grad is not None
    assert_same(x_ours.grad, x_ref.grad, atol=1e-4, rtol=1e-4)


def test_unet_fp16_torso_matches() -> None:
    flags = {**UNET_CASES[1][1], "use_fp16": True}
    ref, ours = paired(flags)
    ref.convert_to_fp16()  # load_state_dict kept the dtypes; re-cast the torsos
    ours.convert_to_fp16()
    x, t, _ = inputs(32)
    with torch.no_grad():
        expected = ref(x, t)
        got = ours(x, t)
    assert got.dtype == expected.dtype == torch.float32
    # ours normalizes and modulates in float32 where the reference rounds to float16 between
    # steps: agreement is to float16 precision
    assert float((got - expected).norm() / expected.norm()) < 5e-3


def test_timestep_embedding_is_identical() -> None:
    from ddkit_models.nn import timestep_embedding

    t = torch.tensor([0.0, 1.0, 17.25, 500.0, 999.0])
    for dim in (32, 33, 128):
        assert torch.equal(timestep_embedding(t, dim), gd_nn.timestep_embedding(t, dim))


@pytest.mark.parametrize("new_order", [False, True])
def test_qkv_attention_modules(new_order: bool) -> None:
    from ddkit_models.attention import QKVAttention

    ref = gd_unet.QKVAttention(4) if new_order else gd_unet.QKVAttentionLegacy(4)
    qkv = torch.randn(2, 3 * 64, 37)
    for backend in ("sdpa", "math"):
        ours = QKVAttention(4, "new" if new_order else "legacy", backend)
        assert_same(ours(qkv), ref(qkv))


# -- classifier ------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["adaptive", "attention", "spatial", "spatial_v2"])
def test_classifier_each_pool(pool: str) -> None:
    # create_classifier(image_size, use_fp16, width, depth, attention_resolutions, scale_shift, updown, pool)
    updown = pool in ("attention", "spatial_v2")
    ref = gd_script.create_classifier(64, False, 64, 1, "32,16,8", pool != "spatial", updown, pool)
    ours = ddkit.create(
        "model",
        "adm-classifier",
        image_size=64,
        classifier_width=64,
        classifier_depth=1,
        classifier_attention_resolutions="32,16,8",
        classifier_use_scale_shift_norm=pool != "spatial",
        classifier_resblock_updown=updown,
        classifier_pool=pool,
        memory_format="preserve",
    )
    state = perturbed_state(ref)
    ref.load_state_dict(state, strict=True)
    ours.load_state_dict(state, strict=True)
    x, t, _ = inputs(64)
    with torch.no_grad():
        expected = ref.eval()(x, t)
        assert_same(ours.eval()(x, t), expected)
        ours.memory_format = "auto"
        assert_same(ours(x, t), expected, atol=LAYOUT_ATOL)


# -- super-resolution -------------------------------------------------------------------------


@pytest.mark.parametrize("class_cond", [False, True])
def test_superres(class_cond: bool) -> None:
    sr_flags: dict[str, Any] = {
        "num_channels": 32,
        "num_res_blocks": 1,
        "learn_sigma": True,
        "class_cond": class_cond,
        "use_checkpoint": False,
        "attention_resolutions": "16,8",
        "num_heads": 2,
        "num_head_channels": -1,
        "num_heads_upsample": -1,
        "use_scale_shift_norm": True,
        "dropout": 0.0,
        "resblock_updown": class_cond,
        "use_fp16": False,
    }
    ref = gd_script.sr_create_model(64, 16, **sr_flags)
    ours = ddkit.create(
        "model", "adm-superres", large_size=64, small_size=16, memory_format="preserve", **sr_flags
    )
    state = perturbed_state(ref)
    ref.load_state_dict(state, strict=True)
    ours.load_state_dict(state, strict=True)
    x, t, y = inputs(64)
    low = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    cond = {"y": y} if class_cond else {}
    with torch.no_grad():
        expected = ref.eval()(x, t, low_res=low, **cond)
        assert_same(ours.eval()(x, t, low_res=low, **cond), expected)
        ours.memory_format = "auto"
        assert_same(ours(x, t, low_res=low, **cond), expected, atol=LAYOUT_ATOL)


def test_loader_builds_the_released_flag_strings_layout(tmp_path: Any) -> None:
    # The released 64x64 model's flags (channels cut from 192 to 64 to stay small):
    # guided-diffusion's network saved, ddkit's loader rebuilds it from the README line.
    from ddkit_models import from_guided_diffusion

    flags = (
        "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 "
        "--image_size 64 --learn_sigma True --noise_schedule cosine --num_channels 64 "
        "--num_head_channels 64 --num_res_blocks 1 --resblock_updown True --use_new_attention_order True "
        "--use_fp16 False --use_scale_shift_norm True"
    )
    args = dict(gd_script.model_and_diffusion_defaults())
    args.update(
        attention_resolutions="32,16,8",
        class_cond=True,
        dropout=0.1,
        image_size=64,
        learn_sigma=True,
        noise_schedule="cosine",
        num_channels=64,
        num_head_channels=64,
        num_res_blocks=1,
        resblock_updown=True,
        use_new_attention_order=True,
        use_scale_shift_norm=True,
    )
    ref, _ = gd_script.create_model_and_diffusion(**args)
    ref.load_state_dict(perturbed_state(ref))
    path = tmp_path / "64x64_diffusion.pt"
    torch.save(ref.state_dict(), path)
    ours = from_guided_diffusion(path, flags, memory_format="preserve")
    x, t, y = inputs(64)
    with torch.no_grad():
        assert_same(ours(x, t, y=y), ref.eval()(x, t, y=y))

"""What the network predicts, and how its output becomes a :class:`~ddkit.Prediction`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import torch
from torch import Tensor

from ddkit.diffusion.process import Coef, GaussianProcess, Step
from ddkit.prediction import Linear, Prediction

__all__ = [
    "PREDICTIONS",
    "VARIANCES",
    "EDMParameterization",
    "GaussianParameterization",
    "edm",
    "epsilon",
    "output_channel_error",
    "p_mean_variance",
    "previous_x",
    "v",
    "velocity",
    "x0",
]

#: What a network can predict for the mean: noise, clean data, the previous step's mean, v, a path's
#: velocity dα/dt·x_0 + dσ/dt·ε, or EDM's preconditioned output F.
PREDICTIONS: tuple[str, ...] = ("epsilon", "x0", "previous-x", "v", "velocity", "edm")
#: How the reverse-step variance is given.
VARIANCES: tuple[str, ...] = ("fixed-small", "fixed-large", "learned", "learned-range")


def _one_of(options: tuple[str, ...], what: str) -> Callable[[object, attrs.Attribute[str], str], None]:
    def check(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
        if value not in options:
            import difflib

            close = difflib.get_close_matches(str(value), options, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"'{attribute.name}' must be one of {', '.join(options)} for {what} (got {value!r}){hint}"
            )

    return check


def output_channel_error(param: GaussianParameterization, data_channels: int, got: int) -> str:
    """The message for a network whose output channels do not fit the variance mode."""
    want = param.output_channels(data_channels)
    why = (
        f"variance={param.variance!r} learns the variance, so the network outputs the mean part and "
        f"the variance part ({data_channels} + {data_channels} channels)"
        if param.learned_variance
        else f"variance={param.variance!r} is fixed, so the network outputs only the mean part"
    )
    fix = "set learn_sigma to match, or choose another variance mode"
    return f"the model outputs {got} channels but {want} were expected: {why}; {fix}"


#: Variance modes whose network outputs the mean part only.
_FIXED_VARIANCES = ("fixed-small", "fixed-large")


@attrs.frozen
class GaussianParameterization:
    """A parameterization of the reverse process (guided-diffusion's mean and variance types).

    ``prediction`` says what the mean part of the output is; ``variance`` how the step
    variance is chosen. ``clip_denoised`` clamps the predicted x_0 to [-1, 1] (image data);
    ``denoised_fn`` runs on x_0 before clipping.

    .. versionadded:: 0.1.0
    """

    prediction: str = attrs.field(default="epsilon", validator=_one_of(PREDICTIONS, "the prediction"))
    variance: str = attrs.field(default="fixed-small", validator=_one_of(VARIANCES, "the variance mode"))
    clip_denoised: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))

    @property
    def learned_variance(self) -> bool:
        """Whether the network outputs the variance too (doubling its channels)."""
        return self.variance in ("learned", "learned-range")

    @property
    def name(self) -> str:
        """The registered name of this parameterization (its prediction)."""
        return self.prediction

    def output_channels(self, channels: int) -> int:
        """Output channels a network needs for data with ``channels`` channels."""
        return 2 * channels if self.learned_variance else channels

    def split(self, output: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor | None]:
        """Split a raw output into its mean part and (for learned variances) its variance part."""
        if output.shape == x_t.shape and self.variance in _FIXED_VARIANCES:
            return output, None  # the common case, once per model evaluation: one comparison
        channels = x_t.shape[1]
        want = self.output_channels(channels)
        if output.shape[1] != want or output.shape[0] != x_t.shape[0] or output.shape[2:] != x_t.shape[2:]:
            if output.shape[1] != want:
                raise ValueError(output_channel_error(self, channels, output.shape[1]))
            raise ValueError(
                f"the model output has shape {tuple(output.shape)}, which does not match x_t "
                f"{tuple(x_t.shape)} outside the channel dimension"
            )
        if not self.learned_variance:
            return output, None
        mean_part, var_part = torch.split(output, channels, dim=1)
        return mean_part, var_part

    def variance_of(
        self, process: GaussianProcess, var_part: Tensor | None, t: Step, like: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Variance and log-variance of p(x_{t-1} | x_t), each shaped like ``like``."""
        if self.variance == "learned":
            assert var_part is not None
            return torch.exp(var_part), var_part
        if self.variance == "learned-range":
            assert var_part is not None
            min_log = process.coef("posterior_log_variance_clipped", t, like)
            max_log = process.coef("log_betas", t, like)
            # The output in [-1, 1] interpolates between the two fixed variances in log space.
            frac = (var_part + 1) / 2
            log_var = frac * max_log + (1 - frac) * min_log
            return torch.exp(log_var), log_var
        if self.variance == "fixed-large":
            var_name, log_name = "fixed_large_variance", "fixed_large_log_variance"
        else:
            var_name, log_name = "posterior_variance", "posterior_log_variance_clipped"
        ones = torch.ones_like(like)
        return process.coef(var_name, t, like) * ones, process.coef(log_name, t, like) * ones

    def check_process(self, process: GaussianProcess) -> None:
        """Raise ``ValueError`` for a chain this parameterization cannot read (before any work)."""
        if self.prediction == "velocity" and process.path is None:
            raise ValueError(
                "parameterization 'velocity' predicts dα/dt·x_0 + dσ/dt·ε, which needs a continuous path "
                "(schedule 'rectified-flow', 'vp-continuous', 'edm' or a plugin's); on a discrete chain of "
                "betas use 'v', 'epsilon' or 'x0'"
            )

    def model_input(
        self, process: GaussianProcess, x: Tensor, t: Step, alpha_bar: Coef | None = None
    ) -> tuple[Tensor, Tensor]:
        """What the network is called with for the chain's ``x`` at step ``t``: the path's x_t and time."""
        scale = process.scale(t, x)
        x_in = x if type(scale) is float and scale == 1.0 else x * scale
        return x_in, process.model_timesteps(t, x.shape[0], x.device)

    def forms(
        self, process: GaussianProcess, mean_part: Tensor, x_t: Tensor, t: Step, alpha_bar: Coef | None
    ) -> tuple[Tensor | Linear, Tensor | Linear]:
        """x̂_0 and ε̂ read from the mean part of the output, as linear forms where they are linear."""
        if self.prediction == "epsilon":
            return process.linear_x0_from_eps(x_t, t, mean_part, alpha_bar), mean_part
        if self.prediction == "v":
            return (
                process.linear_x0_from_v(x_t, t, mean_part, alpha_bar),
                process.linear_eps_from_v(x_t, t, mean_part, alpha_bar),
            )
        if self.prediction == "velocity":
            # Solve x_path = α·x_0 + σ·ε, v = α'·x_0 + σ'·ε for x_0 and ε, with x_path = k·x_t.
            a, s, da, ds = process.path_coefs(t, x_t)
            k = process.scale(t, x_t) if isinstance(t, Tensor) else (a * a + s * s) ** 0.5
            det = a * ds - s * da
            return Linear(ds * k / det, x_t, -s / det, mean_part), Linear(
                -da * k / det, x_t, a / det, mean_part
            )
        if self.prediction == "x0":
            return mean_part, process.linear_eps_from_x0(x_t, t, mean_part, alpha_bar)
        if self.prediction == "edm":
            raise ValueError(
                "prediction 'edm' needs its preconditioning: build it with "
                "ddkit.create('parameterization', 'edm')"
            )
        raise ValueError(
            "a 'previous-x' model predicts a discrete step; it cannot be read at a continuous noise level"
        )

    def predict(
        self,
        process: GaussianProcess,
        output: Tensor,
        x_t: Tensor,
        t: Step,
        *,
        clip_denoised: bool | None = None,
        denoised_fn: Callable[[Tensor], Tensor] | None = None,
        alpha_bar: Coef | None = None,
        posterior: bool = True,
    ) -> Prediction:
        """Read ``output`` as a :class:`Prediction` for ``x_t`` at step ``t`` (p_mean_variance).

        ``alpha_bar`` overrides the noise level (continuous-time samplers); the posterior
        (mean, variance) is only defined at integer steps of ``process``.
        """
        clip = self.clip_denoised if clip_denoised is None else clip_denoised
        mean_part, var_part = self.split(output, x_t)
        x0: Tensor | Linear
        eps: Tensor | Linear
        if denoised_fn is None and not clip and self.prediction != "previous-x":
            # x_0 and ε are linear in (x_t, output): keep them as forms, computed when read.
            x0, eps = self.forms(process, mean_part, x_t, t, alpha_bar)
        else:
            x0 = self._raw_x0(process, mean_part, x_t, t, alpha_bar)
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            if clip:
                x0 = x0.clamp(-1, 1)
            eps = process.linear_eps_from_x0(x_t, t, x0, alpha_bar)
        pred = Prediction(x0=x0, eps=eps, model_output=output)
        if posterior:
            if self.prediction == "previous-x":
                pred.mean = mean_part
            else:
                pred.mean = process.q_posterior_mean(pred.x0, x_t, t)
            pred.variance, pred.log_variance = self.variance_of(process, var_part, t, x_t)
        return pred

    def _raw_x0(
        self, process: GaussianProcess, mean_part: Tensor, x_t: Tensor, t: Step, alpha_bar: Coef | None
    ) -> Tensor:
        if self.prediction == "previous-x" and alpha_bar is None:
            return process.x0_from_xprev(x_t, t, mean_part)
        x0 = self.forms(process, mean_part, x_t, t, alpha_bar)[0]
        return x0.value() if isinstance(x0, Linear) else x0

    def target(self, process: GaussianProcess, x0: Tensor, x_t: Tensor, t: Step, noise: Tensor) -> Tensor:
        """The regression target for the mean part of the output (guided-diffusion's training target)."""
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "x0":
            return x0
        if self.prediction == "v":
            return process.v_from_x0_eps(x0, noise, t)
        if self.prediction == "velocity":
            _, _, da, ds = process.path_coefs(t, x0)
            return da * x0 + ds * noise
        return process.q_posterior_mean(x0, x_t, t)


@attrs.frozen
class EDMParameterization(GaussianParameterization):
    """EDM's preconditioning (Karras et al. 2022, Table 1) around the network F, on any path.

    In the variance-exploding view x/α with σ = sqrt((1 − ᾱ)/ᾱ): D(x; σ) = c_skip·x + c_out·F(c_in·x;
    c_noise) with c_skip = σ_d²/(σ² + σ_d²), c_out = σ·σ_d/sqrt(σ² + σ_d²), c_in = 1/sqrt(σ² + σ_d²),
    c_noise = ln(σ)/4. Written in ᾱ every coefficient stays finite, so it reads the chain's x
    directly; the loss regresses F onto (x_0 − c_skip·x)/c_out, which is EDM's λ(σ)-weighted loss.

    .. versionadded:: 0.2.0
    """

    sigma_data: float = attrs.field(default=0.5)

    @sigma_data.validator
    def _check_sigma_data(self, attribute: attrs.Attribute[float], value: float) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (math.isfinite(value) and value > 0)
        ):
            raise ValueError(f"'sigma_data' must be a positive finite number, the data's std (got {value!r})")

    def _d(
        self, process: GaussianProcess, t: Step, like: Tensor, alpha_bar: Coef | None
    ) -> tuple[Coef, Coef]:
        ab = process.alpha_bar(t, like) if alpha_bar is None else alpha_bar
        if isinstance(ab, Tensor):
            ab = ab.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))
        return ab, 1.0 - ab + ab * self.sigma_data**2

    def model_input(
        self, process: GaussianProcess, x: Tensor, t: Step, alpha_bar: Coef | None = None
    ) -> tuple[Tensor, Tensor]:
        ab, d = self._d(process, t, x, alpha_bar)
        if isinstance(ab, Tensor):
            log_sigma = 0.5 * (torch.log1p(-ab) - torch.log(ab)).reshape(-1)
            return x * d.rsqrt(), (log_sigma / 4).to(torch.float64).expand(x.shape[0])  # type: ignore[union-attr]
        if ab <= 0.0:
            raise ValueError("the 'edm' parameterization has no c_noise at ᾱ = 0 (σ = ∞); start below it")
        c_noise = 0.25 * 0.5 * (math.log1p(-ab) - math.log(ab))
        return x * float(1.0 / math.sqrt(d)), torch.full(
            (x.shape[0],), c_noise, dtype=torch.float64, device=x.device
        )

    def forms(
        self, process: GaussianProcess, mean_part: Tensor, x_t: Tensor, t: Step, alpha_bar: Coef | None
    ) -> tuple[Tensor | Linear, Tensor | Linear]:
        ab, d = self._d(process, t, x_t, alpha_bar)
        sd = self.sigma_data
        if isinstance(ab, Tensor):
            assert isinstance(d, Tensor)
            root_d = d.sqrt()
            x0 = Linear(sd * sd * ab.sqrt() / d, x_t, sd * (1.0 - ab).sqrt() / root_d, mean_part)
            eps = Linear((1.0 - ab).sqrt() / d, x_t, -sd * ab.sqrt() / root_d, mean_part)
            return x0, eps
        assert isinstance(d, float)
        root = math.sqrt(d)
        x0 = Linear(sd * sd * math.sqrt(ab) / d, x_t, sd * math.sqrt(1.0 - ab) / root, mean_part)
        eps = Linear(math.sqrt(1.0 - ab) / d, x_t, -sd * math.sqrt(ab) / root, mean_part)
        return x0, eps

    def target(self, process: GaussianProcess, x0: Tensor, x_t: Tensor, t: Step, noise: Tensor) -> Tensor:
        ab, d = self._d(process, t, x_t, None)
        sd = self.sigma_data
        if isinstance(ab, Tensor):
            assert isinstance(d, Tensor)
            return (x0 - sd * sd * ab.sqrt() / d * x_t) / (sd * (1.0 - ab).sqrt() / d.sqrt())
        assert isinstance(d, float)
        return (x0 - (sd * sd * math.sqrt(ab) / d) * x_t) / (sd * math.sqrt(1.0 - ab) / math.sqrt(d))


def p_mean_variance(
    process: GaussianProcess,
    parameterization: GaussianParameterization,
    model_fn: Callable[..., Tensor],
    x_t: Tensor,
    t: Step,
    *,
    clip_denoised: bool | None = None,
    denoised_fn: Callable[[Tensor], Tensor] | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> Prediction:
    """Call the network on ``x_t`` at step ``t`` of ``process`` and read p(x_{t-1} | x_t) from it.

    The network sees :meth:`GaussianProcess.model_timesteps` (training indices, rescaled if
    the chain says so), as guided-diffusion's ``p_mean_variance`` feeds it.
    """
    x_in, model_t = parameterization.model_input(process, x_t, t)
    output = model_fn(x_in, model_t, **(model_kwargs or {}))
    return parameterization.predict(
        process, output, x_t, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn, posterior=True
    )


# -- registered factories (kind "parameterization") ---------------------------------------


def epsilon(variance: str = "fixed-small", clip_denoised: bool = True) -> GaussianParameterization:
    """The network predicts the added noise (Ho et al. 2020)."""
    return GaussianParameterization("epsilon", variance, clip_denoised)


def x0(variance: str = "fixed-small", clip_denoised: bool = True) -> GaussianParameterization:
    """The network predicts the clean sample."""
    return GaussianParameterization("x0", variance, clip_denoised)


def previous_x(variance: str = "fixed-small", clip_denoised: bool = True) -> GaussianParameterization:
    """The network predicts the mean of x_{t-1} (Ho et al. 2020's third option)."""
    return GaussianParameterization("previous-x", variance, clip_denoised)


def v(variance: str = "fixed-small", clip_denoised: bool = True) -> GaussianParameterization:
    """The network predicts v = sqrt(ᾱ)·eps − sqrt(1 − ᾱ)·x_0 (Salimans & Ho 2022)."""
    return GaussianParameterization("v", variance, clip_denoised)


def velocity(variance: str = "fixed-small", clip_denoised: bool = False) -> GaussianParameterization:
    """The network predicts a path's velocity dα/dt·x_0 + dσ/dt·ε (ε − x_0 on rectified flow)."""
    return GaussianParameterization("velocity", variance, clip_denoised)


def edm(
    sigma_data: float = 0.5, variance: str = "fixed-small", clip_denoised: bool = False
) -> EDMParameterization:
    """EDM's preconditioning with ``sigma_data`` (Karras et al. 2022): c_skip, c_out, c_in, c_noise."""
    return EDMParameterization("edm", variance, clip_denoised, sigma_data=sigma_data)

"""ddkit-guidance: classifier guidance and classifier-free guidance for ddkit samplers.

Both register under the ``guidance`` kind (``ddkit.create("guidance", "classifier-free", scale=3)``);
the denoiser applies them in core's documented order (model form, then score, then mean).
"""

from __future__ import annotations

from ddkit_guidance.classifier import ClassifierGuidance, ClassifierLike
from ddkit_guidance.classifier_free import ClassifierFreeGuidance, rescale_guided
from ddkit_guidance.dropout import drop_labels
from ddkit_guidance.scales import GuidanceScale, ScaleLike

__version__ = "0.1.0"

__all__ = [
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "ClassifierLike",
    "GuidanceScale",
    "ScaleLike",
    "drop_labels",
    "rescale_guided",
]

"""clara-rag: CLaRa (Continuous Latent Reasoning) retrieval-augmented generation.

Public API::

    from clara import ClaraConfig, ClaraModel, differentiable_topk
"""

from .config import ClaraConfig
from .model import ClaraModel
from .topk import differentiable_topk

__all__ = ["ClaraConfig", "ClaraModel", "differentiable_topk"]
__version__ = "0.1.0"

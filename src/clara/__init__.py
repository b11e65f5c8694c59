"""clara-rag: CLaRa (Continuous Latent Reasoning) retrieval-augmented generation.

Public API::

    from clara import ClaraConfig, ClaraModel, differentiable_topk
    from clara import ClaraRAG, MemoryIndex        # answer questions over a compressed corpus
"""

from .config import ClaraConfig
from .model import ClaraModel
from .index import MemoryIndex
from .rag import ClaraRAG
from .topk import differentiable_topk

__all__ = ["ClaraConfig", "ClaraModel", "ClaraRAG", "MemoryIndex", "differentiable_topk"]
__version__ = "0.1.0"

"""Training: the three CLaRa stages over one accelerate loop.

    from clara.train import TrainConfig, train
    train(TrainConfig.load("configs/scp.yaml", ["lr=5e-4"]))
"""

from .config import TrainConfig
from .run import train

__all__ = ["TrainConfig", "train"]

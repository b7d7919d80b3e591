"""fusedrnn: fused GRU/LSTM kernels behind drop-in torch.nn.GRU / torch.nn.LSTM modules."""

from . import functional
from .version import __version__

__all__ = ["functional", "__version__"]

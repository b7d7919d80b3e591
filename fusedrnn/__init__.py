"""fusedrnn: fused GRU/LSTM kernels behind drop-in torch.nn.GRU / torch.nn.LSTM modules.

    import fusedrnn
    rnn = fusedrnn.LSTM(256, 256, num_layers=4, residual=True)   # was torch.nn.LSTM(...)
    model = fusedrnn.convert(model)                              # or swap every GRU/LSTM in a model
"""

from . import functional
from .modules import GRU, LSTM, convert
from .version import __version__

__all__ = ["GRU", "LSTM", "convert", "functional", "__version__"]

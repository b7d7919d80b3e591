"""fusedrnn: fused GRU/LSTM/RNN kernels behind drop-in torch.nn.GRU / torch.nn.LSTM / torch.nn.RNN modules.

    import fusedrnn
    rnn = fusedrnn.LSTM(256, 256, num_layers=4, residual=True)   # was torch.nn.LSTM(...)
    model = fusedrnn.convert(model)                              # or swap every GRU/LSTM/RNN in a model
    model = fusedrnn.unconvert(model)                            # and back to torch.nn's classes
"""

import torch as _torch

from . import functional
from .modules import GRU, LSTM, RNN, LayerNormGRU, LayerNormLSTM, convert, unconvert
from .version import __version__

# torch.load's weights-only default (torch >= 2.6) accepts only allowlisted classes. A fusedrnn
# module pickles as its class plus torch.nn's state and its own extras (residual: bool or int,
# _residual_layers: tuple of ints, backend: str), all of types that unpickler accepts, so
# allowlisting the classes makes a whole-model checkpoint load wherever the program
# allowlists the torch.nn classes around them.
_torch.serialization.add_safe_globals([GRU, LSTM, RNN, LayerNormGRU, LayerNormLSTM])

__all__ = ["GRU", "LSTM", "RNN", "LayerNormGRU", "LayerNormLSTM", "convert", "unconvert", "functional", "__version__"]

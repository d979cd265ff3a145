"""sddit_oracle: PyTorch runs to and from sddit-oracle exchange files (SPEC section 7).

    Recorder(student, teacher, cfg, ...)     records one training step (activations by
                                             hooks, losses, gradients, after-step state)
    load_exchange(path)                      config, state_dicts, inputs, results of a file
    write_exchange(path, cfg, params, ...)   writes the layout atomically, checked
    check_file(path)                         [problem, ...]; empty when the layout is right
    assert_conforms(path, against="ref")     pytest: `oracle diff --json`, AssertionError on FAIL
    convert_state_dict(sd, cfg, ...)         a state_dict -> {SPEC key: float64 array}

Modules by job: spec (configs, shapes, names), convert (state_dicts, checkpoints),
exchange (writing, reading), check (validation), hooks and record (PyTorch), conform
(the oracle binary), cli (python -m sddit_oracle). numpy and h5py are required; torch is
imported only by the PyTorch parts.
"""

from ._version import NAME, __version__
from .check import check_file, config_defaults_used
from .conform import OracleError, assert_conforms, find_oracle
from .convert import (capture, convert_part, convert_state_dict, load_checkpoint, normalize_key,
                      select_state_dict, to_numpy)
from .exchange import Exchange, load_exchange, write_exchange
from .hooks import register_sddit_hooks
from .record import Recorder
from .spec import (DEFAULTED_CONFIG_KEYS, FIXED_KEYS, FORMAT, INPUT_FLOAT, INPUT_INT, INT_CONFIG_KEYS,
                   LOSS_NAMES, PRECISION_MODES, PRESETS, REAL_CONFIG_KEYS, REQUIRED_CONFIG_KEYS,
                   STRIP_PREFIXES, ExchangeError, StateDictError, activation_names, activation_shapes,
                   config_problems, grad_shapes, load_config, param_shapes, preset)

__all__ = [n for n in dir() if not n.startswith("_")] + ["__version__"]

"""What each framework's own recurrent layer cannot compute, without importing the framework.

The ``layers`` backends' :meth:`~multirnn.backends.base.Backend.unsupported` read these rules, and
``compare`` and ``sweep`` read them too, to refuse such a row in the parent process: a worker that
would import a framework only to refuse the model costs seconds and reports a misleading peak memory.
"""

from __future__ import annotations

from ..cells import Model

# flax's cells: one Dense per gate and side, only one of the two biased.
_FLAX_ONE_BIAS = {
    "rnn": "flax.linen.SimpleCell has one bias (its input Dense 'i'; the recurrent Dense 'h' has "
           "none): a trained second bias b_hh has nowhere to live",
    "gru-reset-after": "flax.linen.GRUCell's recurrent Dense 'hr' and 'hz' have no bias (only 'hn', "
                       "which holds b_hn): trained second biases b_hr, b_hz have nowhere to live",
    "lstm": "flax.linen.LSTMCell has one bias per gate (on the recurrent Dense 'hi', 'hf', 'hg', "
            "'ho'; the input Dense have none): a trained second bias has nowhere to live",
}
_KERAS_LAYER = {"rnn": "SimpleRNN", "gru": "GRU(reset_after=False)", "lstm": "LSTM"}
_RESET_AFTER = {
    "torch": "torch.nn.GRU applies the reset gate after the recurrent matmul (cuDNN's formula)",
    "mxnet": "Gluon's rnn.GRU (MXNet's fused RNN operator) applies the reset gate after the recurrent matmul "
             "(cuDNN's formula)",
    "jax": "flax.linen.GRUCell applies the reset gate after the recurrent matmul "
           "(n = tanh(x W_in + b_in + r * (h W_hn + b_hn)), cuDNN's formula)",
}


def layers_unsupported(framework: str, model: Model) -> str | None:
    """Why ``framework``'s own layer cannot compute ``model`` (None if it can)."""
    if framework in _RESET_AFTER and model.cell.name == "gru":
        return f"{_RESET_AFTER[framework]}; d2l's GRU applies it before: use --cell gru-reset-after"
    if not model.second_bias:
        return None
    instead = "; use --second-bias frozen (d2l's model), or --impl scratch for the two-bias model"
    if framework == "jax":
        return _FLAX_ONE_BIAS[model.cell.name] + instead
    if framework == "tensorflow" and model.cell.name != "gru-reset-after":  # reset_after=True has a bias row
        return (f"keras.layers.{_KERAS_LAYER[model.cell.name]} has one bias per gate: a trained second "
                "(hidden-side) bias has nowhere to live" + instead)
    return None  # torch's and MXNet's layers have two biases per gate


def layers_known_issue(framework: str, model: Model, dtype: str) -> str | None:
    """A framework bug that makes its own layer's row disagree although the layer computes the model (the
    verdict is right to say so; this says whose bug it is), or None."""
    if framework == "mxnet" and model.cell.name == "rnn" and model.num_layers >= 3 and dtype == "float64":
        # measured (tests/test_mxnet_backend.py): W_xh_l1's gradient off by 1.2x its largest entry, every other
        # gradient and the forward within 1e-15; float32 runs oneDNN's kernel, which is right
        return ("Gluon's rnn.RNN in float64 runs MXNet 1.9.1's native RNN kernel, whose backward gets the input "
                "weights' gradients of the middle layers wrong for the tanh RNN with 3 or more layers (the bug "
                "apache/mxnet#18203 fixed for GRU and LSTM only): expect this row to disagree; float32 (oneDNN's "
                "kernel) and --impl scratch compute them right")
    return None

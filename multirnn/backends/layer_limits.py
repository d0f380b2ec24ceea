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


# Rows of logits per step (batch x steps) from which a Dense layer's float32 bias-gradient sum may leave
# the float32 band by itself: the step's gradient norm was 0.73 of the band at 131,072 rows (MXNet's
# FullyConnected, d2l ed. 2 at batch 4096) and 1.5x at 262,144 in the tanh RNN, and 0.72 already at
# 99,840 in a 3-layer LSTM (batch 3120; 2.2e-4 at 32,768), so the note starts at half that.
MANY_ROWS = 50_000
# b_q's gradient and the step's gradient norm off their float64 values at 262,144 rows (d2l ed. 2, batch
# 8192, the first step), for each framework's own Dense layer (tests/test_many_rows.py measures them, and
# holds the scratch rows, which sum accurately, to 1e-5).
_DENSE_SUM = {"mxnet": ("Gluon's nn.Dense (MXNet's FullyConnected)", "1.6e-3", "4.3e-4"),
              "tensorflow": ("keras.layers.Dense (BiasAdd)", "7.1e-4", "3.1e-4")}


def layers_known_issue(framework: str, model: Model, dtype: str, rows_per_step: int = 0) -> str | None:
    """A framework bug or limit that makes its own layer's row disagree although the layer computes the
    model (the verdict is right to say so; this says whose it is), or None. ``rows_per_step``: batch x
    steps, the rows a Dense layer sums its bias gradient over."""
    if framework == "mxnet" and model.cell.name == "rnn" and model.num_layers >= 3 and dtype == "float64":
        # measured (tests/test_mxnet_backend.py): W_xh_l1's gradient off by 1.2x its largest entry, every other
        # gradient and the forward within 1e-15; float32 runs oneDNN's kernel, which is right
        return ("Gluon's rnn.RNN in float64 runs MXNet 1.9.1's native RNN kernel, whose backward gets the input "
                "weights' gradients of the middle layers wrong for the tanh RNN with 3 or more layers (the bug "
                "apache/mxnet#18203 fixed for GRU and LSTM only): expect this row to disagree; float32 (oneDNN's "
                "kernel) and --impl scratch compute them right")
    if framework in _DENSE_SUM and dtype == "float32" and rows_per_step >= MANY_ROWS:
        layer, bias, norm = _DENSE_SUM[framework]
        return (f"{layer} sums its bias gradient over the batch x steps rows in a float32 accumulator, "
                f"which drops part of each small term once the sum is large: at 262,144 rows b_q's gradient was "
                f"{bias} and the step's gradient norm {norm} off their float64 values, more with more rows; at this "
                f"run's {rows_per_step:,} rows this row may leave the float32 band from that alone (the scratch "
                "rows sum them accurately; --dtype float64 or fewer rows per step avoid it)")
    return None


# MXNet's fused RNN operator (Gluon's rnn layers, and the scratch fast path's rnn, gru-reset-after and lstm)
# sums its bias gradients over batch x steps rows in float32 too: b_h's gradient 5.5e-5 off its float64
# value at 262,144 rows; at 2,560,000 (d2l ed. 2, batch 10000 x 256 steps) a probe's b_h update left the
# band (1.69e-3 against 1e-3) and correct MXNet was called DISAGREES.
FUSED_MANY_ROWS = 1_000_000
_MXNET_FUSED_CELLS = ("rnn", "gru-reset-after", "lstm")


def mxnet_fused_sum_issue(impl: str, mode: str, model: Model, dtype: str, rows_per_step: int) -> str | None:
    """The note for an MXNet row whose fused RNN operator sums its bias gradients over very many rows in
    float32 (None where the row does not run that operator, or the rows are few)."""
    fused = impl == "layers" or (mode == "fast" and model.cell.name in _MXNET_FUSED_CELLS)
    if not fused or dtype != "float32" or rows_per_step < FUSED_MANY_ROWS:
        return None
    return (f"MXNet's fused RNN operator sums its bias gradients over the batch x steps rows in a float32 "
            f"accumulator: at 262,144 rows b_h's gradient was 5.5e-5 off its float64 value, and at 2,560,000 a "
            f"probe's b_h update left the band (1.69e-3); at this run's {rows_per_step:,} rows this row may "
            "leave it from that alone (--mode eager for the scratch row, --dtype float64 or fewer rows per step "
            "avoid it)")


def row_issues(framework: str, impl: str, mode: str, model: Model, dtype: str, rows_per_step: int) -> list[str]:
    """Every known framework bug or float32 limit a row may run into (compare's notes, said per row):
    its own layer's (:func:`layers_known_issue`) and MXNet's fused operator's (:func:`mxnet_fused_sum_issue`)."""
    found = [layers_known_issue(framework, model, dtype, rows_per_step) if impl == "layers" else None,
             mxnet_fused_sum_issue(impl, mode, model, dtype, rows_per_step) if framework == "mxnet" else None]
    return [issue for issue in found if issue]


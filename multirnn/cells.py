"""Recurrent cells and stacked models, as small declared things that every layer of the code reads.

A :class:`Cell` declares its gates (d2l's letters, in d2l's order), its state and its formula; a
:class:`Model` is a cell stacked ``num_layers`` deep with the output layer on top, optionally with
the second (hidden-side) bias per gate that cuDNN-style layers carry. From these two, and nothing
else, come the parameter names and shapes, the initial weights, the state's structure, the shape
check and the report: no code asks ``if cell == "lstm"`` except where the maths itself differs
(each backend's cell step and the NumPy oracle's backward pass).

Parameter names are d2l's: per gate ``g`` an input weight ``W_x{g}`` ``(inputs, H)``, a
recurrent weight ``W_h{g}`` ``(H, H)`` and a bias ``b_{g}`` ``(H,)``; a hidden-side bias is
``b_h{g}`` (cuDNN's ``b_hh``; the reset-after GRU's ``b_hn``); the output layer is ``W_hq``
``(H, V)`` and ``b_q`` ``(V,)``. Layer ``l > 0`` adds the suffix ``_l{l}`` (its inputs are the
``H`` outputs of the layer below). The tanh RNN with one layer keeps exactly d2l's five names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

OUTPUT_PARAMS = ("W_hq", "b_q")


@dataclass(frozen=True)
class Cell:
    """One recurrent cell: which gates it has, what state it carries, what it computes."""

    name: str
    gates: tuple[str, ...]  # d2l's gate letters in d2l's order; the tanh candidate is last
    state: tuple[str, ...]  # the state of one layer: ("H",) or ("H", "C")
    formula: str  # for reports and --help
    hidden_bias_gates: tuple[str, ...] = ()  # gates whose hidden-side bias is part of the formula
    book: str = ""  # where d2l builds it

    @property
    def candidate(self) -> str:
        return self.gates[-1]


CELLS: dict[str, Cell] = {
    "rnn": Cell("rnn", ("h",), ("H",), "H = tanh(X W_xh + H W_hh + b_h)", book="d2l ed. 1 ch. 8.5 / ed. 2 ch. 9.5"),
    "gru": Cell(
        "gru", ("z", "r", "h"), ("H",),
        "Z, R = σ(X W_x· + H W_h· + b_·); H̃ = tanh(X W_xh + (R ⊙ H) W_hh + b_h); H = Z ⊙ H + (1 - Z) ⊙ H̃",
        book="d2l ed. 1 ch. 9.1 / ed. 2 ch. 10.2 (reset before the recurrent matmul)",
    ),
    "gru-reset-after": Cell(
        "gru-reset-after", ("z", "r", "n"), ("H",),
        "Z, R = σ(X W_x· + H W_h· + b_·); N = tanh(X W_xn + b_n + R ⊙ (H W_hn + b_hn)); H = Z ⊙ H + (1 - Z) ⊙ N",
        hidden_bias_gates=("n",),
        book="cuDNN / torch.nn.GRU / ONNX linear_before_reset (reset after the recurrent matmul)",
    ),
    "lstm": Cell(
        "lstm", ("i", "f", "o", "c"), ("H", "C"),
        "I, F, O = σ(X W_x· + H W_h· + b_·); C̃ = tanh(X W_xc + H W_hc + b_c); C = F ⊙ C + I ⊙ C̃; H = O ⊙ tanh(C)",
        book="d2l ed. 1 ch. 9.2 / ed. 2 ch. 10.1",
    ),
}


def get_cell(name: str) -> Cell:
    if name not in CELLS:
        raise ValueError(f"Unknown cell {name!r}; expected one of {list(CELLS)}.")
    return CELLS[name]


def layer_suffix(layer: int) -> str:
    return "" if layer == 0 else f"_l{layer}"


@dataclass(frozen=True)
class Model:
    """A cell stacked ``num_layers`` deep, with the output layer; ``second_bias`` adds the
    hidden-side bias ``b_h{g}`` to every gate (the book's concise torch and Gluon layers train it)."""

    cell: Cell = field(default_factory=lambda: CELLS["rnn"])
    num_layers: int = 1
    second_bias: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.cell, str):
            object.__setattr__(self, "cell", get_cell(self.cell))
        if not isinstance(self.num_layers, int) or isinstance(self.num_layers, bool) or not 1 <= self.num_layers <= 16:
            raise ValueError(f"num_layers must be an integer from 1 to 16, got {self.num_layers!r}.")
        # any truthy value built the two-bias model: Model("rnn", second_bias="frozen") too
        if not isinstance(self.second_bias, bool):
            raise TypeError(f"second_bias must be True or False, got {self.second_bias!r} (TrainConfig and "
                            "preset() spell it 'trained' or 'frozen'; Model takes the bool).")

    @property
    def name(self) -> str:
        """e.g. ``lstm``, ``gru x2``, ``rnn (two biases)``."""
        out = self.cell.name + (f" x{self.num_layers}" if self.num_layers > 1 else "")
        return out + (" (two biases)" if self.second_bias else "")

    def hidden_bias_gates(self) -> tuple[str, ...]:
        return self.cell.gates if self.second_bias else self.cell.hidden_bias_gates

    def layer_param_names(self, layer: int) -> tuple[str, ...]:
        s = layer_suffix(layer)
        names = [f"{kind}{g}{s}" for g in self.cell.gates for kind in ("W_x", "W_h", "b_")]
        names += [f"b_h{g}{s}" for g in self.hidden_bias_gates()]
        return tuple(names)

    def param_names(self) -> tuple[str, ...]:
        return tuple(n for layer in range(self.num_layers) for n in self.layer_param_names(layer)) + OUTPUT_PARAMS

    def param_shapes(self, vocab_size: int, num_hiddens: int) -> dict[str, tuple[int, ...]]:
        """Every parameter's shape, in the canonical order (which is also the order weights are drawn)."""
        V, H = vocab_size, num_hiddens
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in range(self.num_layers):
            inputs, s = (V if layer == 0 else H), layer_suffix(layer)
            for g in self.cell.gates:
                shapes[f"W_x{g}{s}"] = (inputs, H)
                shapes[f"W_h{g}{s}"] = (H, H)
                shapes[f"b_{g}{s}"] = (H,)
            for g in self.hidden_bias_gates():
                shapes[f"b_h{g}{s}"] = (H,)
        shapes["W_hq"], shapes["b_q"] = (H, V), (V,)
        return shapes

    def state_names(self) -> tuple[str, ...]:
        """The state tuple's entries: ``("H",)`` for one tanh layer; ``("H", "C", "H_l1", "C_l1")`` for two LSTM layers."""
        return tuple(f"{s}{layer_suffix(layer)}" for layer in range(self.num_layers) for s in self.cell.state)

    def flops_per_token(self, vocab_size: int, num_hiddens: int) -> float:
        """Multiply-adds x 2 of one training step per token, as the fast paths compute it: the first
        layer's input product is a row gather (no FLOPs), every other product counts forward
        once and backward twice (input and weight gradients), except the first layer's input
        weights (one scatter-add backward)."""
        H, V, G = num_hiddens, vocab_size, len(self.cell.gates)
        recurrent = self.num_layers * G * 2 * H * H * 3  # forward, d input, d weight
        inputs = (self.num_layers - 1) * G * 2 * H * H * 3
        output = 2 * H * V * 3
        return float(recurrent + inputs + output)


RNN = Model()

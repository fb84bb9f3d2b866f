"""How every figure draws a variant: one colour per attention variant, one line style per quant mode.

Shared by the evaluation figures (``icl.analysis.figures``) and the benchmark figures (``icl.analysis.bench_figures``),
so a variant looks the same in all of them. Unknown names get a stable extra colour / style.
"""

from __future__ import annotations

import seaborn as sns

# One colour per attention variant in every figure (colour-blind palette without its grey, which is left to
# the baselines); unknown names get a stable extra colour.
_PALETTE = sns.color_palette("colorblind", 10)
ATTN_COLORS: dict[str, tuple[float, float, float]] = {
    name: _PALETTE[i] for name, i in [("softmax", 0), ("relu", 1), ("relu_causal", 2), ("linear", 3),
                                      ("sigmoid", 4), ("performer", 5), ("nystrom", 6), ("combiner", 9)]}
_DARK = sns.color_palette("dark", 10)
ATTN_COLORS |= {  # the sequence mixers: fixed too (from their name's hash, deltanet and sliding_window shared one),
    # and far from softmax's blue and from each other: they share the mixers' chart
    "mamba": _DARK[5], "mamba2": _PALETTE[8], "deltanet": _DARK[3], "retnet": _DARK[6],
    "sliding_window": _DARK[4], "bigbird": _DARK[2]}
# One line style (dashes) and marker per quant mode; "" = solid.
QUANT_STYLES: dict[str, tuple[tuple[float, ...], str]] = {
    "none": ((), "o"), "int8_weight": ((5, 2), "s"), "int8_dynamic": ((2, 1.5), "^"),
    "qat_int8": ((6, 2, 1.5, 2), "D"), "bf16": ((1, 1.5), "v"), "int4_weight": ((8, 2, 2, 2, 2, 2), "P"),
    "int8_fbgemm": ((4, 1, 1, 1, 1, 1), "p"), "intx_weight": ((8, 1.5), "h"),
}


def attn_color(name: str) -> tuple[float, float, float]:
    """The fixed colour of an attention variant (unknown names: a stable extra colour from their hash)."""
    if name in ATTN_COLORS:
        return ATTN_COLORS[name]
    extra = [c for c in (*_DARK, *sns.color_palette("pastel", 10))
             if c not in ATTN_COLORS.values() and max(c) - min(c) > 0.05]  # no greys: those are the baselines'
    return extra[sum(map(ord, name)) % len(extra)]


def quant_style(name: str) -> tuple[tuple[float, ...], str]:
    """A quant label's style: its own, else its mode's (``intx_weight_w4_pc`` → ``intx_weight``), else a default."""
    mode = next((m for m in QUANT_STYLES if name.startswith(m + "_")), None)
    return QUANT_STYLES.get(name) or QUANT_STYLES.get(mode, ((3, 1, 1, 1), "X"))

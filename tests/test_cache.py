"""The baseline cache: entries verified on read; a damaged one is moved aside with a warning and recomputed."""

import logging

import numpy as np
import pytest
import torch

from icl.cache import BaselineCache


def damage(path, how):
    data = path.read_bytes()
    if how == "rewritten":  # a whole, readable file whose numbers no longer match the checksum stored with them
        with np.load(path) as entry:
            arrays = {k: entry[k] for k in entry.files}
        arrays["preds"] = arrays["preds"] + 1
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # one flipped byte in the middle: still a loadable file, with wrong numbers
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1:])


@pytest.mark.parametrize("how", ["truncated", "flipped", "rewritten"])
def test_a_damaged_entry_is_moved_aside_and_recomputed(tmp_path, caplog, how):
    preds = torch.arange(600, dtype=torch.float32).reshape(20, 30) / 7
    calls = []

    def compute():
        calls.append(1)
        return preds.clone()

    parts = {"task": "linear", "baseline": "least_squares"}
    BaselineCache(tmp_path).get(parts, compute)
    (entry,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert torch.equal(BaselineCache(tmp_path).get(parts, compute), preds) and len(calls) == 1  # a hit
    damage(entry, how)
    with caplog.at_level(logging.WARNING, logger="icl.cache"):
        got = BaselineCache(tmp_path).get(parts, compute)
    assert torch.equal(got, preds) and len(calls) == 2  # recomputed, never the damaged numbers
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(entry) in warnings[0]
    aside = [p for p in tmp_path.iterdir() if p != entry and not p.name.startswith(".")]
    assert len(aside) == 1 and aside[0].name.startswith(entry.name) and aside[0].name in warnings[0]
    assert torch.equal(BaselineCache(tmp_path).get(parts, compute), preds) and len(calls) == 2  # healed: a hit again

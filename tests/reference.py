"""Reference implementations used only by tests: the plain, slow versions the library's fast paths are checked
against (the batched baselines' loops are ``icl.lab.reference.LOOPS``, also used by ``icl.bench.eval``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor


def quadratic_linear_attention(phi_q: Tensor, phi_k: Tensor, v: Tensor) -> Tensor:
    """Kernelised attention through its explicit masked (T × T) matrix: the O(T²) reference of
    ``icl.attention.causal_linear_attention``."""
    weights = (phi_q @ phi_k.transpose(-2, -1)).tril()
    return (weights @ v) / weights.sum(-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)


def direct_step(model: Any, state: np.ndarray, action: np.ndarray, frame_skip: int) -> np.ndarray:
    """One transition with plain ``mujoco.mj_step`` on a fresh MjData: the reference for ``Simulator.step``."""
    import mujoco

    data = mujoco.MjData(model)
    nq = model.nq
    data.qpos[:], data.qvel[:], data.ctrl[:] = state[:nq], state[nq:], action
    for _ in range(frame_skip):
        mujoco.mj_step(model, data)
    return np.concatenate([data.qpos, data.qvel])

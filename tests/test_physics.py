"""The MuJoCo tasks (issue 18): the simulator against closed forms and plain mj_step, the prior, seeding, the
nominal baseline, and a short train + evaluate with vector outputs."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("mujoco")

from icl import baselines as bl
from icl import physics
from icl.curriculum import Curriculum
from icl.data import PromptStream
from icl.tasks import TASKS, PromptSampler, build_task, seeded
from tests.reference import direct_step

MUJOCO = {"mujoco_pendulum": 3, "mujoco_cartpole": 5, "mujoco_reacher": 6}  # task -> n_dims (state + action)


def draw(system: physics.System, B: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parameters from the prior, states and actions from the input distribution (numpy, float64)."""
    rng = np.random.default_rng(seed)
    low, high = (np.array([getattr(p, s) for p in system.prior]) for s in ("low", "high"))
    params = low + (high - low) * rng.random((B, len(low)))
    states = (2 * rng.random((B, n, system.state_dim)) - 1) * np.array(system.state_range)
    return params, states, 2 * rng.random((B, n, system.n_action)) - 1


def test_every_mujoco_task_is_registered():
    assert set(TASKS.where(simulator="mujoco")) == set(MUJOCO)


@pytest.mark.parametrize("name", sorted(physics.SYSTEMS))
def test_batched_transitions_match_plain_mj_step_on_the_compiled_mjcf(name):
    """Writing parameters into one compiled model (what sampling does) = compiling the MJCF with those values,
    and the batched mujoco.rollout = a plain mj_step loop, for every prompt and point."""
    system = physics.SYSTEMS[name]
    params, states, actions = draw(system, 5, 4)
    nxt = physics.Simulator(system, 0.01).step(params, states, actions, 5)
    for b in range(5):
        model = system.compile(params[b], 0.01)
        for i in range(4):
            np.testing.assert_allclose(nxt[b, i], direct_step(model, states[b, i], actions[b, i], 5),
                                       rtol=0, atol=1e-12)
    assert np.abs(nxt - states).min(axis=(0, 1)).max() > 0  # every coordinate moves somewhere


def pendulum(mass=1.0, length=1.0, damping=0.0, gravity=9.81, gear=1.0, timestep=0.01):
    return physics.SYSTEMS["pendulum"].compile(np.array([mass, length, damping, gravity, gear]), timestep)


def test_pendulum_step_is_the_documented_equation():
    """One semi-implicit Euler step of I θ'' = −m g l sin θ − b ω + k u, I = m l² + I0, damping implicit:
    ω' = ω + h (−m g l sin θ − b ω + k u) / (I + h b), θ' = θ + h ω'. Checks every parameter's wiring."""
    rng = np.random.default_rng(1)
    h = 0.01
    for _ in range(20):
        m, r, b, g, k = 0.5 + rng.random(), 0.5 + rng.random(), 0.2 * rng.random(), 5 + 10 * rng.random(), 2 * rng.random()
        theta, omega, u = rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(-1, 1)
        inertia = m * r * r + physics.POINT_INERTIA  # r: the length l
        omega1 = omega + h * (-m * g * r * math.sin(theta) - b * omega + k * u) / (inertia + h * b)
        out = direct_step(pendulum(m, r, b, g, k, h), np.array([theta, omega]), np.array([u]), 1)
        np.testing.assert_allclose(out, [theta + h * omega1, omega1], rtol=1e-12, atol=1e-12)


def test_small_angle_pendulum_follows_the_closed_form():
    """θ(t) = θ0 cos(Ω t), Ω² = m g l / I, for a small swing without damping (timestep 1e-4, 1 s)."""
    m, r, g, theta0 = 0.8, 1.2, 9.81, 1e-3
    model = pendulum(m, r, 0.0, g, 1.0, timestep=1e-4)
    out = direct_step(model, np.array([theta0, 0.0]), np.array([0.0]), 10_000)
    omega = math.sqrt(m * g * r / (m * r * r + physics.POINT_INERTIA))
    np.testing.assert_allclose(out, [theta0 * math.cos(omega), -theta0 * omega * math.sin(omega)], rtol=0, atol=3e-6)


def test_pendulum_energy_is_conserved_without_damping_and_lost_with_it():
    def energies(damping: float) -> np.ndarray:
        m, r, g = 1.0, 1.0, 9.81
        model, state, out = pendulum(m, r, damping, g, 1.0, timestep=1e-3), np.array([2.0, 0.0]), []
        for _ in range(200):  # 200 transitions of 10 steps: 2 s, about a period
            state = direct_step(model, state, np.array([0.0]), 10)
            out.append(0.5 * (m * r * r + physics.POINT_INERTIA) * state[1] ** 2 - m * g * r * math.cos(state[0]))
        return np.array(out)

    free, damped = energies(0.0), energies(0.2)
    assert np.abs(free - free[0]).max() < 1e-2 * abs(free[0])  # symplectic Euler: bounded, O(h) error
    assert damped[-1] < damped[0] - 1.0 and (np.diff(damped) < 1e-3).all()


# --- the tasks ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MUJOCO))
def test_task_shapes_scale_and_seeding(name):
    d = MUJOCO[name]
    task = build_task(name, d)
    sampler = PromptSampler(task)
    xs, ys = sampler.sample(64, 8, d, seeded(1, 2, 3, 4))
    assert xs.shape == (64, 8, d) and ys.shape == (64, 8, task.y_dim) and task.y_dim == task.system.state_dim
    assert (xs[..., task.system.state_dim:].abs() <= 1).all()  # actions in [-1, 1]
    # standardised per coordinate on a reference draw: a fresh draw has mean square ~ 1 in every coordinate
    np.testing.assert_allclose(ys.pow(2).mean(dim=(0, 1)).numpy(), 1.0, rtol=0.35)
    again = sampler.sample(64, 8, d, seeded(1, 2, 3, 4))
    other = sampler.sample(64, 8, d, seeded(1, 2, 3, 5))
    assert torch.equal(xs, again[0]) and torch.equal(ys, again[1])
    assert not torch.equal(ys, other[1])
    copy = pickle.loads(pickle.dumps(task))  # what a DataLoader worker receives: it rebuilds its simulator
    assert torch.equal(PromptSampler(copy).sample(64, 8, d, seeded(1, 2, 3, 4))[1], ys)


@pytest.mark.parametrize("name", sorted(MUJOCO))
def test_each_prompt_has_its_own_physics(name):
    """Two prompts' dynamics differ at the very same inputs; with prior_scale = 0 they are all the nominal one."""
    d = MUJOCO[name]
    task = build_task(name, d)
    params = task.sample_params(2, d, seeded(7))
    xs = task.sample_xs(1, 6, d, seeded(8)).expand(2, -1, -1)
    ys = task.evaluate(params, xs)
    assert (ys[0] - ys[1]).abs().max() > 1e-2 * ys.abs().max()
    fixed = build_task(name, d, {"prior_scale": 0.0})
    p = fixed.sample_params(5, d, seeded(7))["physics"]
    assert torch.equal(p, p[:1].expand(5, -1))
    xs = fixed.sample_xs(5, 6, d, seeded(8))
    torch.testing.assert_close(fixed.evaluate({"physics": p}, xs), fixed.nominal(xs))


def test_training_stream_is_pure_per_step():
    """The batch of step s is the same from a fresh stream (what an exact resume relies on)."""
    task = build_task("mujoco_cartpole", 5)
    curriculum = Curriculum.from_config({"dims": {"start": 5, "end": 5}, "points": {"start": 9, "end": 9}})
    a = PromptStream(PromptSampler(task), curriculum, 8, seed=3).batch_at(17)
    b = PromptStream(PromptSampler(build_task("mujoco_cartpole", 5)), curriculum, 8, seed=3).batch_at(17)
    assert torch.equal(a["xs"], b["xs"]) and torch.equal(a["ys"], b["ys"])


def test_a_dataloader_worker_draws_the_same_batches():
    """num_workers > 0: the task is pickled into the worker, which builds its own simulator."""
    from icl.data import PromptDataModule

    cfg = {"name": "mujoco_pendulum", "n_dims": 3, "curriculum": {"dims": {"start": 3, "end": 3},
                                                                "points": {"start": 5, "end": 5}}}
    inline = PromptDataModule.from_config(cfg, batch_size=4, num_workers=0, seed=1)
    worker = PromptDataModule.from_config(cfg, batch_size=4, num_workers=1, seed=1)
    a, b = next(iter(inline.train_dataloader())), next(iter(worker.train_dataloader()))
    assert torch.equal(a["xs"], b["xs"]) and torch.equal(a["ys"], b["ys"])


def test_clear_errors():
    with pytest.raises(ValueError, match=r"task.n_dims must be 3 for mujoco_pendulum \(2 state \+ 1 action"):
        build_task("mujoco_pendulum", 4)
    with pytest.raises(ValueError, match="has no dims curriculum"):
        PromptSampler(build_task("mujoco_pendulum", 3)).sample(2, 3, 2, seeded(0))
    with pytest.raises(ValueError, match="0 <= prior_scale <= 1"):
        build_task("mujoco_pendulum", 3, {"prior_scale": 2.0})
    with pytest.raises(ValueError, match="unknown MuJoCo system 'hopper'"):
        physics.system("hopper")


def test_without_mujoco_a_task_fails_in_one_line(monkeypatch):
    """MuJoCo is an optional extra: icl.tasks imports icl.physics only when a mujoco_* task is built."""
    import sys

    import icl

    monkeypatch.setitem(sys.modules, "mujoco", None)  # `import mujoco` now fails, as without the package
    monkeypatch.delitem(sys.modules, "icl.physics")  # so icl.physics is imported afresh, and fails
    monkeypatch.delattr(icl, "physics")
    with pytest.raises(ImportError, match=r"task 'mujoco_reacher' needs MuJoCo: pip install -e '.\[mujoco\]'"):
        build_task("mujoco_reacher", 6)
    build_task("linear", 3)  # everything else works


def test_nominal_baseline_and_the_no_change_predictor():
    """nominal = the simulator at the prior's midpoint, from k = 0; exact when every prompt is that system.
    zero (no change, in delta form) scores exactly 1 by construction."""
    from icl.evaluation import Resampling, score

    task = build_task("mujoco_pendulum", 3)
    xs = task.sample_xs(16, 5, 3, seeded(2))
    ys = task.evaluate(task.sample_params(16, 3, seeded(3)), xs)
    nominal = bl.predict("nominal", xs, ys, task=task)
    assert nominal.shape == ys.shape and (nominal[:, 0] != 0).all()
    torch.testing.assert_close(nominal, task.nominal(xs))
    cfg = Resampling(bootstrap=20, ci=0.95, seed=0)
    np.testing.assert_array_equal(score(task, bl.predict("zero", xs, ys), ys, cfg).error, 1.0)
    err = score(task, nominal, ys, cfg).error
    assert (err > 0).all() and (err < 1).all()


def test_short_training_and_evaluation_with_vector_outputs(tmp_path, caplog):
    """A few steps through the real configs, then every eval strategy: scalar-only baselines are skipped with a
    log line, the rest (and the nominal model) score vector outputs; zero ("no change") scores 1."""
    from icl.run.train import train
    from tests.helpers import compose_train

    cfg = compose_train(["task=mujoco_pendulum", "model.n_layer=1", "data.batch_size=8", "trainer.max_steps=3",
                         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
                         "eval.n_prompts=12", "eval.bootstrap=20", "eval.slow_baseline_prompts=2",
                         "eval.baselines=[zero,nominal,least_squares,knn_3,lasso_0.1]"], tmp_path)
    with caplog.at_level("INFO", logger="icl.evaluation"):
        metrics = train(cfg)
    assert "skipping baseline lasso_0.1: it fits one scalar output and task mujoco_pendulum has y_dim = 2" in caplog.text
    df = pd.read_csv(tmp_path / "eval.csv")
    assert set(df.predictor) == {"transformer", "zero", "nominal", "least_squares", "knn_3"}
    assert {"standard", "scale_x", "noisy_y", "orthogonal_query", "opposite_quadrants"} <= set(df.strategy)
    assert df[df.predictor != "zero"].error.notna().all() and (df[df.predictor == "zero"].error == 1).all()
    assert math.isfinite(metrics["error_at_2d"])

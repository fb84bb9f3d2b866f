"""The run configs of issue 26 the study runner queues (configs/experiment/tune_mixers.yaml,
extended_context_pos.yaml and extended_context_pos_recurrent.yaml): each composes, and its sweep has the cells,
steps and evaluation prompts it promises; every cell's spec is checked as a launch would
(``icl.run.spec.validate``), nothing is trained."""

from collections import Counter

from hydra import compose, initialize_config_dir

from icl.mixers import family
from icl.run.spec import sweep_cells, validate, with_sweeper_params
from tests.helpers import CONFIGS


def composed_cells(experiment: str) -> list:
    """Every job's composed config of ``python -m icl.train experiment=<experiment>`` (its declared sweep)."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
        assert str(cfg.hydra.mode) == "RunMode.MULTIRUN", experiment  # the file alone launches its sweep
        cells = sweep_cells(with_sweeper_params([f"experiment={experiment}"], cfg.hydra.sweeper.params))
        jobs = [compose("train", overrides=cell) for cell in cells]
    for job in jobs:
        job.paths.output_dir = "<job folder>"  # Hydra's per-job folder: not known before a job runs
    return jobs


def test_tune_mixers_grid_is_six_mixers_by_two_lrs_by_two_seeds_on_validation_prompts():
    cells = composed_cells("tune_mixers")
    grid = Counter((c.attn.name, c.optim.lr, c.seed) for c in cells)
    mixers = {"mamba", "mamba2", "deltanet", "retnet", "sliding_window", "bigbird"}
    assert set(grid) == {(m, lr, s) for m in mixers for lr in (3e-4, 1e-3) for s in (0, 1)} and max(grid.values()) == 1
    for c in cells:
        assert c.trainer.max_steps == 15000 and c.eval.seed == 1000 and c.task.name == "linear"
        assert (c.task.n_dims, c.task.curriculum.points.end, c.model.name) == (5, 11, "tiny")  # the smoke scale
        assert (c.optim.warmup_steps, c.model.qk_norm, c.trainer.gradient_clip_val) == (500, False, 1.0)
        assert c.quant.name == "none"
        if c.optim.lr == 1e-3:  # a launch's checks, once per mixer (the lr changes none of them)
            validate(c)
    assert {family(c.attn.name) for c in cells} == {"attention", "recurrent"}


def test_extended_context_pos_grid_pairs_every_pos_with_learned_on_the_reporting_prompts():
    cells = composed_cells("extended_context_pos")
    grid = Counter((c.attn.name, c.model.pos, c.seed) for c in cells)
    assert set(grid) == {(a, p, s) for a in ("softmax", "bigbird") for p in ("learned", "none", "rope", "alibi")
                         for s in (0, 1)} and max(grid.values()) == 1
    for c in cells:
        assert c.trainer.max_steps == 15000 and c.eval.seed == 0 and c.quant.name == "none"
        assert c.task.curriculum.points.end == 11 and c.model.n_positions == 28  # trained on 11, scored to 27
        assert list(c.eval.strategies.long_context) == [None]
        if c.seed == 0:  # a launch's checks, once per mixer and pos (the seed changes none of them)
            validate(c)


def test_extended_context_recurrent_arm_pairs_none_with_learned_and_shares_the_grid_s_models(tmp_path):
    from icl.run.store import fingerprint
    from tests.helpers import compose_train

    cells = composed_cells("extended_context_pos_recurrent")
    grid = Counter((c.attn.name, c.model.pos, c.seed) for c in cells)
    assert set(grid) == {(a, p, s) for a in ("mamba", "mamba2", "deltanet", "retnet") for p in ("learned", "none")
                         for s in (0, 1)} and max(grid.values()) == 1
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):  # one folder with the attention arm
        sweep = compose("train", overrides=["experiment=extended_context_pos_recurrent"], return_hydra_config=True)
    assert sweep.hydra.sweep.dir == "multirun/extended_context_pos"
    for c in cells:
        assert c.trainer.max_steps == 15000 and c.eval.seed == 0 and c.model.n_positions == 28
        assert list(c.eval.strategies.long_context) == [None]
    # the default-pos jobs of both arms are the mixers grid's cells (study=mixers): the same trained model
    extended = {(c.attn.name, c.model.pos, c.seed): c for c in [*cells, *composed_cells("extended_context_pos")]}
    for attn, pos in (("mamba", "none"), ("retnet", "none"), ("softmax", "learned"), ("bigbird", "learned")):
        grid_cell = compose_train(["experiment=seed_study/cpu_cell", "recipe=smoke", "task=linear", f"attn={attn}",
                                   "seed=1"], tmp_path)
        assert fingerprint(extended[(attn, pos, 1)]) == fingerprint(grid_cell), attn
    assert fingerprint(extended[("mamba", "learned", 1)]) != fingerprint(extended[("mamba", "none", 1)])

"""The keys that name a recipe are written once (``icl.lab.tuning.RECIPE_KEYS``): the study's recipe section
(``icl.lab.study.recipes``) groups, names and checks recipes by them."""

import pandas as pd

from icl.lab import tuning
from icl.lab.study.recipes import arm_check, job_table, recipe_text


def test_the_study_names_and_checks_recipes_by_the_tuning_protocol_s_keys(monkeypatch):
    base = {"task": "linear", "n_dims": 5, "attn": "relu", "lr": 1e-4, "qk_norm": True, "gradient_clip_val": 1.0,
            "warmup_steps": 500, "eval_seed": 1000}
    cells = pd.DataFrame([{**base, "seed": 0, "layer_scale": 0.1, "error": 0.05},
                          {**base, "seed": 1, "layer_scale": None, "error": 0.07}])
    chosen = pd.DataFrame([{**base, "seed": 1, "layer_scale": 0.1, "error": 0.07, "jobs": 2, "status": "chosen",
                            "selection": "per variant"}])
    trained = [("relu", {k: base[k] for k in ("lr", "qk_norm", "gradient_clip_val", "warmup_steps")})]
    assert [r["recipe"] for r in job_table(cells)] == ["lr 0.0001, qk_norm True, clip 1.0, warm-up 500"]
    assert "all 1 committed cells trained with it" in arm_check(chosen, trained)
    # a key added to the one list is a recipe key everywhere: the two jobs are two recipes, the cell another recipe
    monkeypatch.setattr(tuning, "RECIPE_KEYS", {**tuning.RECIPE_KEYS, "model.layer_scale": "layer_scale"})
    assert sorted(r["recipe"] for r in job_table(cells)) == [
        "lr 0.0001, qk_norm True, clip 1.0, warm-up 500, layer_scale 0.1",
        "lr 0.0001, qk_norm True, clip 1.0, warm-up 500, layer_scale None"]
    assert "does not use its selection" in arm_check(chosen, trained)
    assert recipe_text({**base, "layer_scale": 0.1}).endswith("layer_scale 0.1")


def test_attention_options_split_recipes_and_a_variant_outside_the_selection_is_named_not_flagged():
    base = {"task": "linear", "n_dims": 5, "lr": 1e-3, "qk_norm": False, "gradient_clip_val": 1.0,
            "warmup_steps": 500, "eval_seed": 1000}
    cells = pd.DataFrame([{**base, "attn": "retnet", "seed": 0, "d_conv": None, "error": 1.0},
                          {**base, "attn": "retnet", "seed": 0, "d_conv": 4.0, "error": 0.02},
                          {**base, "attn": "mamba", "seed": 0, "d_conv": 4.0, "error": 0.04}])
    rows = {r["recipe"]: r for r in job_table(cells)}
    assert sorted(rows) == ["lr 0.001, qk_norm False, clip 1.0, warm-up 500",
                            "lr 0.001, qk_norm False, clip 1.0, warm-up 500, d_conv 4"]
    assert rows["lr 0.001, qk_norm False, clip 1.0, warm-up 500"]["retnet s0"] == 1.0  # not overwritten by the conv
    assert rows["lr 0.001, qk_norm False, clip 1.0, warm-up 500, d_conv 4"]["worst"] == 0.04
    chosen = cells.iloc[1:].assign(jobs=1, status="chosen", selection="per variant")
    recipe = {k: base[k] for k in ("lr", "qk_norm", "gradient_clip_val", "warmup_steps")}
    text = arm_check(chosen, [("retnet", recipe), ("mamba", recipe), ("softmax", {**recipe, "lr": 3e-4})])
    assert "retnet: lr 0.001, qk_norm False, clip 1.0, warm-up 500, d_conv 4" in text
    assert "all 2 committed cells trained with it; softmax: not tuned by this selection" in text
    assert "does not use" in arm_check(chosen, [("mamba", {**recipe, "lr": 3e-4}), ("softmax", recipe)])
    assert "no cell trained with it is committed yet; softmax" in arm_check(chosen, [("softmax", recipe)])
    # a variant the selection searched without choosing (every recipe incomplete) is not "not tuned"
    searching = pd.concat([chosen, cells.iloc[:1].assign(attn="deltanet", jobs=1, status="incomplete",
                                                         selection="per variant")])
    text = arm_check(searching, [("mamba", recipe), ("deltanet", recipe)])
    assert "deltanet: **no recipe chosen yet**" in text and "deltanet: not tuned" not in text

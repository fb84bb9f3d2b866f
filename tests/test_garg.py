"""Garg et al.'s reference (transformers GPT2Model) converts to our model with the same predictions."""

from pathlib import Path

import pytest
import torch

from icl.evaluation import predict_model
from icl.module import ICLModule
from icl.run.evaluate import load_job
from icl.run.garg import GargTransformer, convert, main, write_job
from icl.run.job import JobDir

SIZE = dict(n_dims=5, n_positions=11, n_embd=64, n_layer=3, n_head=2)  # the tiny model


def random_reference(seed: int = 0) -> GargTransformer:
    """A reference with every parameter random (GPT-2's init leaves biases 0 and LayerNorms 1, which would hide a
    wrongly mapped or untransposed bias/gain)."""
    torch.manual_seed(seed)
    ref = GargTransformer(**SIZE)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.1 if p.dim() > 1 else 0.5)
    return ref.eval()


def prompts(batch: int = 16, n: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(batch, n, SIZE["n_dims"], generator=gen), torch.randn(batch, n, generator=gen)


def test_converted_reference_predicts_the_same():
    ref = random_reference()
    ours = convert(ref.state_dict(), n_head=SIZE["n_head"])
    xs, ys = prompts()
    with torch.no_grad():
        expected, got = ref(xs, ys), ours(xs, ys)
    assert expected.abs().mean() > 0.1  # a model that predicts something
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_exact_gelu_is_not_gpt2s():
    """The tanh GELU option is what makes the match: with our default exact GELU the predictions differ."""
    ref = random_reference()
    ours = convert(ref.state_dict(), n_head=SIZE["n_head"])
    for block in ours.blocks:
        block.mlp.net[1].approximate = "none"
    xs, ys = prompts()
    with torch.no_grad():
        assert (ours(xs, ys) - ref(xs, ys)).abs().max() > 1e-5


def test_unmatched_or_missing_keys_are_one_line():
    state = random_reference().state_dict()
    del state["_backbone.h.1.mlp.c_fc.bias"]
    state["_backbone.h.9.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing \['_backbone.h.1.mlp.c_fc.bias'\].*unmatched \['_backbone.h.9"):
        convert(state, n_head=2)
    with pytest.raises(ValueError, match="not a Garg et al"):
        convert({"w": torch.zeros(1)}, n_head=2)


def test_job_folder_evaluates_like_the_reference(tmp_path: Path, tiny_overrides: list[str]):
    ref = random_reference()
    path = tmp_path / "state.pt"
    torch.save({"model_state_dict": ref.state_dict(), "train_step": 5}, path)  # their state.pt layout
    overrides = [o for o in tiny_overrides if not o.startswith(("task.n_dims", "task.curriculum", "model."))]
    out = tmp_path / "job"
    write_job(path, out, ["task.n_dims=5", "task.curriculum.dims.start=5", "task.curriculum.points.end=11",
                          *overrides])
    cfg, module = load_job(JobDir(out))
    assert isinstance(module, ICLModule) and module.model.config.activation == "gelu_tanh"
    assert cfg.model.n_positions == 11 and cfg.task.n_dims == 5
    xs, ys = prompts()
    with torch.no_grad():
        torch.testing.assert_close(predict_model(module.model, xs, ys, 8), ref(xs, ys), atol=1e-5, rtol=1e-5)
    with pytest.raises(SystemExit, match="the checkpoint is 64 wide with 3 layers but model=standard"):
        main([f"checkpoint={path}", f"out_dir={tmp_path / 'bad'}", "task.n_dims=5", "model=standard"])
    with pytest.raises(SystemExit, match="task.n_dims=20: pass task.n_dims=5"):
        main([f"checkpoint={path}", f"out_dir={tmp_path / 'bad'}"])

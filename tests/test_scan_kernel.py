"""The selective scan's compiled CPU kernel (icl/csrc/selective_scan.cpp through icl/scan_kernel.py) against the
log-depth scan's autograd: values and every input's gradient, float32 and float64, with one and two threads (the
batch split across them), odd sizes (D not a multiple of the vector width, N = 1, T = 1); and the
fused scan's fallback to its PyTorch loop when the kernel is switched off or does not build."""

import os
import shutil
import sys

import pytest
import torch
import torch.nn.functional as F

from icl import scan_kernel, scans

pytestmark = pytest.mark.skipif(os.environ.get("ICL_SCAN_KERNEL", "1").lower() in scan_kernel.OFF,
                                reason="ICL_SCAN_KERNEL: the kernel is switched off")
needs_toolchain = pytest.mark.skipif(not (shutil.which("ninja") and shutil.which(os.environ.get("CXX", "c++"))),
                                     reason="no C++ compiler or ninja on the PATH: the kernel cannot build here")


def inputs(batch: int, T: int, D: int, N: int, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x, delta = (torch.randn(batch, T, D, generator=gen, dtype=dtype) for _ in range(2))
    A = -torch.rand(D, N, generator=gen, dtype=dtype) * 6
    B, C = (torch.randn(batch, T, N, generator=gen, dtype=dtype) for _ in range(2))
    return [t.requires_grad_() for t in (x, F.softplus(delta), A, B, C)]


def values_and_grads(scan, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    out = scan(*leaves)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    grads = torch.autograd.grad((out * weights).sum(), leaves, allow_unused=True)  # T = 1: A multiplies nothing
    return [out.detach(), *(torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads))]


@needs_toolchain
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(3, 9, 11, 5), (2, 1, 8, 3), (5, 4, 3, 1), (4, 22, 32, 16)],
                         ids=["odd", "T=1", "N=1", "smoke-like"])
def test_kernel_values_and_gradients_match_the_log_depth_scan(dtype, threads, shape):
    assert scan_kernel.load() is not None, "the selective-scan kernel did not build here (see the warning)"
    leaves = inputs(*shape, dtype=dtype)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = values_and_grads(scan_kernel.KernelSelectiveScan.apply, leaves)
    finally:
        torch.set_num_threads(previous)
    want = values_and_grads(scans.selective_scan, leaves)
    tol = {} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 2e-5}
    for name, g, w in zip(["y", "x", "delta", "A", "B", "C"], got, want):
        torch.testing.assert_close(g, w, **tol, msg=lambda m, name=name: f"{name}: {m}")


@needs_toolchain
def test_kernel_gradcheck():
    leaves = inputs(2, 5, 3, 2, torch.float64, seed=3)
    assert torch.autograd.gradcheck(scan_kernel.KernelSelectiveScan.apply, leaves)


@needs_toolchain
def test_the_fused_scan_runs_the_kernel_on_a_cpu_and_a_second_backward_works():
    """No state is kept between forward and backward (the backward recomputes them): retain_graph is fine."""
    leaves = inputs(2, 6, 4, 3, torch.float32)
    out = scans.selective_scan_fused(*leaves)
    assert out.grad_fn.name() == "KernelSelectiveScanBackward"
    first = torch.autograd.grad(out.sum(), leaves, retain_graph=True)
    for a, b in zip(first, torch.autograd.grad(out.sum(), leaves)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_switched_off_the_fused_scan_runs_its_pytorch_loop(monkeypatch):
    monkeypatch.setenv("ICL_SCAN_KERNEL", "0")
    monkeypatch.setattr(scan_kernel, "_state", {})
    leaves = inputs(2, 6, 4, 3, torch.float32)
    out = scans.selective_scan_fused(*leaves)
    assert scan_kernel.load() is None and out.grad_fn.name() != "KernelSelectiveScanBackward"
    torch.testing.assert_close(out, scans.selective_scan(*leaves))


def test_a_kernel_that_does_not_build_warns_once_and_the_loop_runs(monkeypatch, tmp_path):
    broken = tmp_path / "selective_scan.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(scan_kernel, "SOURCE", broken)
    monkeypatch.setattr(scan_kernel, "_build_options", lambda: ("icl_selective_scan_broken_test", ["-O0"], []))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "build"))
    monkeypatch.setattr(scan_kernel, "_state", {})
    leaves = inputs(2, 6, 4, 3, torch.float32)
    with pytest.warns(RuntimeWarning, match="did not build") as record:
        out = scans.selective_scan_fused(*leaves)
        scans.selective_scan_fused(*leaves)
    assert len([w for w in record if "did not build" in str(w.message)]) == 1 and scan_kernel.load() is None
    torch.testing.assert_close(out, scans.selective_scan(*leaves))


def test_a_build_lock_left_by_a_killed_build_is_removed_under_the_flock(tmp_path, monkeypatch):
    """torch's lock file, left by a build killed mid-way, would make torch wait forever; whoever holds the flock
    (released by the system when its holder dies) knows no build is under way and removes it."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    folder = scan_kernel.build_folder("icl_lock_test")
    assert folder.parent.name == f"icl-{sys.implementation.cache_tag}-torch-{torch.__version__}"
    assert folder.parent.parent == tmp_path and folder.name.startswith("icl_lock_test-")
    (folder / "lock").touch()
    with pytest.warns(RuntimeWarning, match="did not finish"), scan_kernel.build_lock(folder):
        assert not (folder / "lock").exists()


@needs_toolchain
def test_the_kernel_runs_on_torchs_intra_op_threads():
    """at::parallel_for in the kernel runs torch's thread count (it is serial without -fopenmp: compiled from
    headers), and A's gradient, summed per sequence in a fixed order, has the same bits at one and two threads."""
    module = scan_kernel.load()
    assert module is not None
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        if "OpenMP" in torch.__config__.parallel_info():
            assert module.parallel_threads() == torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    leaves = inputs(8, 12, 16, 4, torch.float32, seed=5)
    grads = []
    for threads in (1, 2):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            grads.append(values_and_grads(scan_kernel.KernelSelectiveScan.apply, leaves))
        finally:
            torch.set_num_threads(previous)
    for a, b in zip(*grads):
        assert torch.equal(a, b)


@needs_toolchain
def test_a_float64_mamba_runs_the_kernel_with_its_float32_decays():
    """Mamba passes A and Δ in float32 whatever its activations are: the fused scan promotes all five to one dtype."""
    from icl.mixers import build_mixer

    torch.manual_seed(0)
    mixer = build_mixer("mamba", 16, 2, {"scan": "fused"}).double()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    assert scan_kernel.runs(x)
    parallel = build_mixer("mamba", 16, 2, {"scan": "parallel"}).double()
    parallel.load_state_dict(mixer.state_dict())
    outs = [m(x) for m in (mixer, parallel)]
    assert outs[0].dtype == torch.float64
    torch.testing.assert_close(*outs)
    for out in outs:
        out.square().sum().backward()
    for (name, a), b in zip(mixer.named_parameters(), parallel.parameters()):
        assert a.grad.dtype == a.dtype == torch.float64, name
        torch.testing.assert_close(a.grad, b.grad, msg=name)


@needs_toolchain
def test_a_second_order_gradient_through_the_kernel_is_refused():
    leaves = inputs(2, 4, 3, 2, torch.float64, seed=4)
    out = scan_kernel.KernelSelectiveScan.apply(*leaves).square().sum()  # dy = 2y: a graph of its own
    (gx, *_) = torch.autograd.grad(out, leaves, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()

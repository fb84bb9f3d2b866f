"""The fused selective scan's PyTorch loop reuses its buffers (icl/scans.py ``_Workspace``): a buffer goes back only
once its backward is done, so interleaved graphs keep their own states, and a second backward through one graph is
refused."""

import pytest
import torch
import torch.nn.functional as F

from icl.scans import _workspace, selective_scan, selective_scan_loop


def inputs(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x, delta, B, C = (torch.randn(3, 7, s, generator=gen) for s in (6, 6, 4, 4))
    A = -torch.rand(6, 4, generator=gen) * 2
    return [t.requires_grad_() for t in (x, F.softplus(delta), A, B, C)]


def grads(scan, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    out = scan(*leaves)
    return torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), leaves)


def test_interleaved_graphs_keep_their_states_and_a_reused_buffer_gives_the_same_gradients():
    a, b = inputs(0), inputs(1)
    expected = [grads(selective_scan, a), grads(selective_scan, b)]
    weights = [torch.linspace(-1, 1, 3 * 7 * 6).view(3, 7, 6)] * 2
    out_a, out_b = selective_scan_loop(*a), selective_scan_loop(*b)  # both graphs alive: two buffers
    got_b = torch.autograd.grad((out_b * weights[1]).sum(), b)  # b's buffer goes back to the workspace …
    again = selective_scan_loop(*b)  # … and is handed to this forward, while a's graph still holds its own
    got_a = torch.autograd.grad((out_a * weights[0]).sum(), a)
    got_again = torch.autograd.grad((again * weights[1]).sum(), b)
    for got, want in ((got_a, expected[0]), (got_b, expected[1]), (got_again, expected[1])):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    assert any(_workspace.free.values())  # buffers are kept between steps


def test_a_second_backward_through_one_loop_graph_is_refused():
    leaves = inputs(2)
    out = selective_scan_loop(*leaves).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match=r"backward once per forward .*use attn.scan=parallel"):
        out.backward()

"""The head's projection and cross-entropy a block of rows at a time: the plain path's numbers,
without its positions x vocabulary tensors kept for backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ftlight.speed.head_loss as head_loss
from ftlight.speed.head_loss import head_as_identity, linear_cross_entropy, plain_head

VOCAB, HIDDEN, ROWS = 96, 16, 37


def _inputs(dtype: torch.dtype = torch.float32, bias: bool = True):
    torch.manual_seed(0)
    hidden = torch.randn(ROWS, HIDDEN, requires_grad=True)
    head = nn.Linear(HIDDEN, VOCAB, bias=bias).to(dtype)
    target = torch.randint(0, VOCAB, (ROWS,))
    return hidden, head, target


def _loss_and_grads(loss_fn, hidden, head, target):
    for t in (hidden, *head.parameters()):
        t.grad = None
    loss = loss_fn(hidden, head, target)
    loss.backward()
    return loss.detach(), [t.grad.clone() for t in (hidden, *head.parameters())]


def _plain(hidden, head, target):
    return nn.functional.cross_entropy(head(hidden).float(), target)


def _fused(hidden, head, target):
    return linear_cross_entropy(hidden, head.weight, head.bias, target)


@pytest.mark.parametrize("block_rows", [1, 5, ROWS, 1000])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_the_plain_loss_and_gradients_in_any_block(monkeypatch, block_rows, bias) -> None:
    monkeypatch.setattr(head_loss, "ROW_BLOCK", block_rows * VOCAB)
    hidden, head, target = _inputs(bias=bias)
    want = _loss_and_grads(_plain, hidden, head, target)
    got = _loss_and_grads(_fused, hidden, head, target)
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)
    assert len(got[1]) == len(want[1]) == (3 if bias else 2)
    for g, w in zip(got[1], want[1], strict=True):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


def test_bf16_autocast_rounds_like_the_plain_head(monkeypatch) -> None:
    monkeypatch.setattr(head_loss, "ROW_BLOCK", 8 * VOCAB)
    hidden, head, target = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = _loss_and_grads(_plain, hidden, head, target)
        got = _loss_and_grads(_fused, hidden, head, target)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    for g, w in zip(got[1], want[1], strict=True):
        assert g.dtype == w.dtype == torch.float32
        # both multiply in bf16; only the order of the float32 sums differs
        torch.testing.assert_close(g, w, rtol=2e-2, atol=1e-4)


def test_bf16_weights_without_autocast() -> None:
    hidden, head, target = _inputs(dtype=torch.bfloat16)
    hidden = hidden.detach().bfloat16().requires_grad_()
    want = _loss_and_grads(_plain, hidden, head, target)
    got = _loss_and_grads(_fused, hidden, head, target)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    for g, w in zip(got[1], want[1], strict=True):
        assert g.dtype == w.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), w.float(), rtol=2e-2, atol=1e-3)


def test_frozen_head_gets_no_gradient_and_nothing_vocabulary_wide_is_kept() -> None:
    hidden, head, target = _inputs()
    head.requires_grad_(False)
    kept: list[torch.Size] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = _fused(hidden, head, target)
    loss.backward()
    assert kept == [hidden.shape]  # the hidden states' gradient only
    assert head.weight.grad is None and hidden.grad is not None

    kept.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _plain(hidden, head, target).backward()
    assert torch.Size([ROWS, VOCAB]) in kept  # the plain path keeps the log-probabilities


def test_head_as_identity_and_plain_head() -> None:
    head = nn.Linear(4, 6)
    x = torch.randn(2, 4)
    with head_as_identity(head) as given:
        assert head(x) is x
    assert len(given) == 1 and given[0] is x
    assert head(x).shape == (2, 6) and "forward" not in head.__dict__

    class WithHead(nn.Module):
        def __init__(self, out: nn.Module) -> None:
            super().__init__()
            self.out = out

        def get_output_embeddings(self) -> nn.Module:
            return self.out

    assert plain_head(WithHead(head)) is head
    assert plain_head(WithHead(nn.Identity())) is None
    assert plain_head(nn.Linear(2, 2)) is None  # no get_output_embeddings
    hooked = nn.Linear(4, 6)
    hooked.register_forward_pre_hook(lambda _m, args: args)
    assert plain_head(WithHead(hooked)) is None
    patched = nn.Linear(4, 6)
    patched.forward = lambda x: x
    assert plain_head(WithHead(patched)) is None

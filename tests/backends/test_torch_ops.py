"""The fused torch.library ops (costxent.torch_ops) against the float64 oracle: values,
gradients with any upstream gradient, the reduced ops, torch.library.opcheck (schemas, fake
kernels, autograd registration) and torch.compile(fullgraph=True)."""

from __future__ import annotations

import shutil

import keras
import numpy as np
import pytest

if keras.backend.backend() != "torch":
    pytest.skip("runs under KERAS_BACKEND=torch (tests/test_backends.py)", allow_module_level=True)

import torch  # noqa: E402

import costxent as cx  # noqa: E402
import oracle  # noqa: E402
from cases import (  # noqa: E402
    COST, FUNCTIONAL, IDS, IDS_IGNORED, LOGITS, MULTI, SAMPLE_WEIGHT, C, N, functional_call,
    functional_oracle,
)
from costxent import torch_ops  # noqa: E402

if torch_ops.unavailable_reason() is not None:
    pytest.skip(torch_ops.unavailable_reason(), allow_module_level=True)

UPSTREAM = np.random.default_rng(3).normal(size=N)


def _call(name: str, logits):
    return functional_call(torch_ops, name, logits, torch.as_tensor)


def test_implementation_is_fused() -> None:
    assert cx.implementation() in ("fused-cpu", "fused-gpu")


@pytest.mark.parametrize("name", list(FUNCTIONAL))
def test_softmax_values_and_gradients(name: str) -> None:
    logits = torch.tensor(LOGITS, requires_grad=True)
    loss = _call(name, logits)
    (loss * torch.as_tensor(UPSTREAM, dtype=torch.float32)).sum().backward()
    want, want_grad = functional_oracle(name)
    np.testing.assert_allclose(loss.detach().numpy(), want, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(logits.grad.numpy(), UPSTREAM[:, None] * want_grad,
                               rtol=1e-5, atol=1e-7)


def test_sigmoid_values_and_gradients() -> None:
    logits = torch.tensor(LOGITS, requires_grad=True)
    kwargs = dict(pos_weight=[3.0, 1.0, 9.0, 2.0], neg_weight=0.5, focal_gamma=1.5,
                  label_smoothing=0.05)
    loss = torch_ops.sigmoid_cross_entropy(torch.as_tensor(MULTI), logits, **kwargs)
    upstream = np.random.default_rng(4).normal(size=(N, C))
    (loss * torch.as_tensor(upstream, dtype=torch.float32)).sum().backward()
    want, want_grad = oracle.sigmoid_cross_entropy(MULTI, LOGITS, **kwargs)
    np.testing.assert_allclose(loss.detach().numpy(), want, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(logits.grad.numpy(), upstream * want_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("reduction", ["sum", "sum_over_batch_size", "mean_with_sample_weight"])
def test_reduced_op_scales_its_gradient(reduction: str) -> None:
    logits = torch.tensor(LOGITS, requires_grad=True)
    loss = cx.WeightedCategoricalCrossentropy(cost_matrix=COST, ignore_class=-1, from_logits=True,
                                              reduction=reduction)
    value = loss(torch.as_tensor(IDS_IGNORED), logits, sample_weight=torch.as_tensor(SAMPLE_WEIGHT))
    (3.0 * value).backward()
    per, grad = oracle.softmax_cross_entropy(IDS_IGNORED, LOGITS, cost_matrix=COST, ignore_class=-1)
    keep = IDS_IGNORED != -1
    s = SAMPLE_WEIGHT * keep
    divisor = {"sum": 1.0, "sum_over_batch_size": keep.sum(), "mean_with_sample_weight": s.sum()}
    np.testing.assert_allclose(float(value), np.sum(s * per) / divisor[reduction], rtol=2e-6)
    np.testing.assert_allclose(logits.grad.numpy(), 3.0 * (s / divisor[reduction])[:, None] * grad,
                               rtol=1e-5, atol=1e-7)


def test_bfloat16_logits_give_a_float32_loss_and_a_bfloat16_gradient() -> None:
    logits = torch.tensor(LOGITS).to(torch.bfloat16).requires_grad_()
    loss = torch_ops.softmax_cross_entropy(torch.as_tensor(IDS), logits, cost_matrix=COST)
    loss.sum().backward()
    z = logits.detach().to(torch.float64).numpy()
    want, want_grad = oracle.softmax_cross_entropy(IDS, z, cost_matrix=COST)
    assert loss.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    np.testing.assert_allclose(loss.detach().numpy(), want, rtol=2e-6, atol=1e-7)
    rounded = torch.as_tensor(want_grad).to(torch.bfloat16).to(torch.float64).numpy()
    np.testing.assert_allclose(logits.grad.to(torch.float64).numpy(), rounded, rtol=1e-2, atol=1e-6)


def test_bad_labels_and_weights_are_named() -> None:
    logits = torch.tensor(LOGITS)
    labels = torch.as_tensor(IDS).clone()
    labels[4] = C + 3
    with pytest.raises(ValueError, match=str(C + 3)):
        torch_ops.softmax_cross_entropy(labels, logits)
    with pytest.raises(ValueError, match="whole class ids"):
        torch_ops.softmax_cross_entropy(torch.tensor([0.5] + [1.0] * (N - 1)), logits)
    with pytest.raises(ValueError, match="class_weight must be >= 0"):
        torch_ops.softmax_cross_entropy(torch.as_tensor(IDS), logits, class_weight=[1, -1, 1, 1])
    with pytest.raises(ValueError, match="cost_matrix must have shape"):
        torch_ops.softmax_cross_entropy(torch.as_tensor(IDS), logits, cost_matrix=np.eye(3))


def _samples() -> list[tuple]:
    logits = torch.tensor(LOGITS, requires_grad=True)
    ids = torch.as_tensor(IDS)
    cost = torch.as_tensor(COST, dtype=torch.float32)
    weight = torch.as_tensor(SAMPLE_WEIGHT)
    multi = torch.as_tensor(MULTI)
    pos = torch.tensor([3.0, 1.0, 9.0, 2.0])
    return [
        (torch.ops.costxent.softmax_loss, (logits, ids, cost, "cross_entropy", 0.1, 2.0, 0.0, None)),
        (torch.ops.costxent.softmax_loss, (logits, ids, cost, "expected_cost", 0.0, 0.0, 0.5, 2)),
        (torch.ops.costxent.sigmoid_loss, (logits, multi, pos, None, 0.05, 1.5)),
        (torch.ops.costxent.softmax_loss_reduced,
         (logits, ids, None, weight, "cross_entropy", 0.0, 0.0, 0.0, None, "sum_over_batch_size")),
        (torch.ops.costxent.sigmoid_loss_reduced,
         (logits, multi, pos, None, weight, 0.0, 0.0, "mean_with_sample_weight")),
    ]


@pytest.mark.parametrize("index", range(5))
def test_opcheck(index: int) -> None:
    op, args = _samples()[index]
    # test_aot_dispatch_dynamic would differentiate the reduced ops' backprop output too
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration",
                                                 "test_faketensor"))


def test_torch_compile_has_no_graph_break() -> None:
    def step(labels, logits, multi):
        ce = torch_ops.softmax_cross_entropy(labels, logits, cost_matrix=COST, focal_gamma=1.0)
        ec = torch_ops.expected_cost(labels, logits, COST, ce_weight=0.1)
        bce = torch_ops.sigmoid_cross_entropy(multi, logits, pos_weight=2.0)
        return ce.sum() + 2.0 * ec.mean() + bce.mean()

    # Inductor compiles C++ (absent where the wheel is tested); AOT autograd with the eager
    # backend still traces through the fake kernels and the registered autograd.
    backend = "inductor" if shutil.which("c++") or shutil.which("g++") else "aot_eager"
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    args = (torch.as_tensor(IDS), torch.as_tensor(MULTI))
    eager_logits = torch.tensor(LOGITS, requires_grad=True)
    compiled_logits = torch.tensor(LOGITS, requires_grad=True)
    want = step(args[0], eager_logits, args[1])
    got = compiled(args[0], compiled_logits, args[1])
    want.backward()
    got.backward()
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    np.testing.assert_allclose(compiled_logits.grad.numpy(), eager_logits.grad.numpy(), rtol=1e-6)
    explained = torch._dynamo.explain(step)(args[0], torch.tensor(LOGITS), args[1])
    assert explained.graph_break_count == 0

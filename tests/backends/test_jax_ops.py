"""The fused kernels under JAX (costxent.jax_ops, jax.ffi) against the float64 oracle:
values, gradients with any upstream gradient, the reduced calls, jit, vmap, the compiled
HLO of a Keras loss' gradient, and the errors."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest

if keras.backend.backend() != "jax":
    pytest.skip("runs under KERAS_BACKEND=jax (tests/test_backends.py)", allow_module_level=True)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import costxent as cx  # noqa: E402
import oracle  # noqa: E402
from cases import (  # noqa: E402
    COST, FUNCTIONAL, IDS, IDS_IGNORED, LOGITS, MULTI, SAMPLE_WEIGHT, SOFT, C, N,
    functional_call, functional_oracle,
)
from costxent import jax_ops  # noqa: E402

if jax_ops.unavailable_reason() is not None:
    pytest.skip(jax_ops.unavailable_reason(), allow_module_level=True)

UPSTREAM = np.random.default_rng(3).normal(size=N).astype(np.float32)


def _call(name: str, logits):
    return functional_call(jax_ops, name, logits)


def test_implementation_is_fused() -> None:
    assert cx.implementation() in ("fused-cpu", "fused-gpu")
    assert jax_ops.implementation() == cx.implementation()


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", list(FUNCTIONAL))
def test_softmax_values_and_gradients(name: str, jit: bool) -> None:
    def weighted(z):
        loss = _call(name, z)
        return jnp.sum(loss * UPSTREAM), loss

    fn = jax.value_and_grad(weighted, has_aux=True)
    (_, loss), grad = (jax.jit(fn) if jit else fn)(jnp.asarray(LOGITS))
    want, want_grad = functional_oracle(name)
    np.testing.assert_allclose(np.asarray(loss), want, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(grad), UPSTREAM[:, None] * want_grad,
                               rtol=1e-5, atol=1e-7)


def test_sigmoid_values_and_gradients() -> None:
    kwargs = dict(pos_weight=[3.0, 1.0, 9.0, 2.0], neg_weight=0.5, focal_gamma=1.5,
                  label_smoothing=0.05)
    upstream = np.random.default_rng(4).normal(size=(N, C)).astype(np.float32)

    def weighted(z):
        loss = jax_ops.sigmoid_cross_entropy(MULTI, z, **kwargs)
        return jnp.sum(loss * upstream), loss

    (_, loss), grad = jax.jit(jax.value_and_grad(weighted, has_aux=True))(jnp.asarray(LOGITS))
    want, want_grad = oracle.sigmoid_cross_entropy(MULTI, LOGITS, **kwargs)
    np.testing.assert_allclose(np.asarray(loss), want, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(grad), upstream * want_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("reduction", ["sum", "sum_over_batch_size", "mean_with_sample_weight"])
def test_reduced_call_scales_its_gradient(reduction: str) -> None:
    loss = cx.WeightedCategoricalCrossentropy(cost_matrix=COST, ignore_class=-1, from_logits=True,
                                              reduction=reduction)
    value, grad = jax.jit(jax.value_and_grad(
        lambda z: 3.0 * loss(IDS_IGNORED, z, sample_weight=SAMPLE_WEIGHT)))(jnp.asarray(LOGITS))
    per, want_grad = oracle.softmax_cross_entropy(IDS_IGNORED, LOGITS, cost_matrix=COST,
                                                  ignore_class=-1)
    keep = IDS_IGNORED != -1
    s = SAMPLE_WEIGHT * keep
    divisor = {"sum": 1.0, "sum_over_batch_size": keep.sum(), "mean_with_sample_weight": s.sum()}
    np.testing.assert_allclose(float(value), 3.0 * np.sum(s * per) / divisor[reduction],
                               rtol=2e-6)
    np.testing.assert_allclose(np.asarray(grad),
                               3.0 * (s / divisor[reduction])[:, None] * want_grad,
                               rtol=1e-5, atol=1e-7)


def test_reduced_sigmoid_matches_the_oracle() -> None:
    loss = cx.WeightedBinaryCrossentropy(pos_weight=[3.0, 1.0, 9.0, 2.0], focal_gamma=1.0,
                                         from_logits=True)
    value, grad = jax.jit(jax.value_and_grad(lambda z: loss(MULTI, z)))(jnp.asarray(LOGITS))
    per, want_grad = oracle.sigmoid_cross_entropy(MULTI, LOGITS, pos_weight=[3.0, 1.0, 9.0, 2.0],
                                                  focal_gamma=1.0)
    np.testing.assert_allclose(float(value), per.mean(), rtol=2e-6)
    np.testing.assert_allclose(np.asarray(grad), want_grad / (N * C), rtol=1e-5, atol=1e-8)


def _multiplies(hlo: str) -> int:
    return len(re.findall(r"= \S+ multiply\(", hlo))


def test_the_gradient_of_a_keras_loss_is_the_kernels_own() -> None:
    """Under jax.grad of the loss itself the upstream scalar is the constant 1: XLA removes
    the backward's multiply, so the custom call's gradient output is the result."""
    loss = cx.WeightedCategoricalCrossentropy(cost_matrix=COST, from_logits=True)
    z = jnp.asarray(LOGITS)
    plain = jax.jit(jax.grad(lambda z: loss(IDS, z))).lower(z).compile().as_text()
    scaled = jax.jit(jax.grad(lambda z: 3.0 * loss(IDS, z))).lower(z).compile().as_text()
    assert "costxent_softmax_loss_reduced" in plain
    assert _multiplies(plain) == 0
    assert _multiplies(scaled) == 1


def test_vmap_maps_over_a_batch_of_problems() -> None:
    stacked = jnp.stack([jnp.asarray(LOGITS), jnp.asarray(LOGITS) * 0.5])
    got = jax.jit(jax.vmap(lambda z: jax_ops.softmax_cross_entropy(IDS, z, cost_matrix=COST)))(
        stacked)
    for k, z in enumerate(np.asarray(stacked)):
        want, _ = oracle.softmax_cross_entropy(IDS, z, cost_matrix=COST)
        np.testing.assert_allclose(np.asarray(got[k]), want, rtol=2e-6, atol=1e-7)


def test_bfloat16_logits_give_a_float32_loss_and_a_bfloat16_gradient() -> None:
    logits = jnp.asarray(LOGITS, jnp.bfloat16)
    loss, grad = jax.value_and_grad(
        lambda z: jnp.sum(jax_ops.softmax_cross_entropy(IDS, z, cost_matrix=COST)))(logits)
    z = np.asarray(logits.astype(jnp.float32), np.float64)
    want, want_grad = oracle.softmax_cross_entropy(IDS, z, cost_matrix=COST)
    assert loss.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(float(loss), want.sum(), rtol=2e-6)
    # the exact gradient rounded once (rounding it in float32 first changes no value here)
    rounded = np.asarray(jnp.asarray(want_grad, jnp.float32).astype(jnp.bfloat16), np.float64)
    np.testing.assert_array_equal(np.asarray(grad, np.float64), rounded)


def test_bad_labels_and_weights_are_named() -> None:
    labels = IDS.copy()
    labels[4] = C + 3
    with pytest.raises(Exception, match=rf"labels\[4\] = {C + 3} is outside the valid class"):
        jax.jit(lambda z: jax_ops.softmax_cross_entropy(labels, z))(jnp.asarray(LOGITS))
    with pytest.raises(ValueError, match="whole class ids"):
        jax_ops.softmax_cross_entropy(np.array([0.5] + [1.0] * (N - 1)), LOGITS)
    with pytest.raises(ValueError, match="whole class ids, got nan"):
        jax_ops.softmax_cross_entropy(np.array([np.nan] + [1.0] * (N - 1)), LOGITS)
    with pytest.raises(ValueError, match="class_weight must be >= 0"):
        jax_ops.softmax_cross_entropy(IDS, LOGITS, class_weight=[1, -1, 1, 1])
    with pytest.raises(ValueError, match="cost_matrix must have shape"):
        jax_ops.softmax_cross_entropy(IDS, LOGITS, cost_matrix=np.eye(3))
    with pytest.raises(TypeError, match="class_weight must be a constant"):
        jax.jit(lambda w: jax_ops.softmax_cross_entropy(IDS, LOGITS, class_weight=w))(
            jnp.ones(C))


def test_forward_mode_is_refused_by_jax() -> None:
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda z: jax_ops.softmax_cross_entropy(IDS, z), (jnp.asarray(LOGITS),),
                (jnp.ones((N, C), jnp.float32),))


def test_derivatives_in_anything_but_the_logits_are_refused() -> None:
    """Soft labels and sample weights are constants to the kernels: asking for their
    derivative is an error naming them, never a silent zero."""
    loss = cx.WeightedCategoricalCrossentropy(from_logits=True)
    z = jnp.asarray(LOGITS)
    with pytest.raises(TypeError, match="not in labels"):
        jax.grad(lambda t: jnp.sum(jax_ops.softmax_cross_entropy(t, z)))(jnp.asarray(SOFT))
    with pytest.raises(TypeError, match="not in sample_weight"):
        jax.grad(lambda s: loss(IDS, z, sample_weight=s))(jnp.asarray(SAMPLE_WEIGHT))
    with pytest.raises(TypeError, match="not in labels"):
        jax.grad(lambda t: jnp.sum(jax_ops.sigmoid_cross_entropy(t, z)))(jnp.asarray(MULTI))


def test_sample_weight_of_shape_n_1_is_folded_in() -> None:
    loss = cx.WeightedCategoricalCrossentropy(from_logits=True, reduction="sum")
    z = jnp.asarray(LOGITS)
    got = jax.jit(lambda z: loss(IDS, z, sample_weight=SAMPLE_WEIGHT[:, None]))(z)
    per, _ = oracle.softmax_cross_entropy(IDS, LOGITS)
    np.testing.assert_allclose(float(got), np.sum(SAMPLE_WEIGHT * per), rtol=2e-6)


def test_label_forms() -> None:
    """Bool ids are classes 0/1; float ids traced under jit reach the kernel, which reports a
    bad one; an int64 id beyond int32 is reported before JAX would wrap it to a class."""
    z = jnp.asarray(LOGITS)
    flags = IDS % 2 == 1
    want, _ = oracle.softmax_cross_entropy(flags.astype(np.int64), LOGITS)
    np.testing.assert_allclose(np.asarray(jax_ops.softmax_cross_entropy(flags, z)), want,
                               rtol=2e-6, atol=1e-7)
    traced = jax.jit(lambda y, z: jax_ops.softmax_cross_entropy(y, z))
    want, _ = oracle.softmax_cross_entropy(IDS, LOGITS)
    np.testing.assert_allclose(np.asarray(traced(IDS.astype(np.float32), z)), want, rtol=2e-6,
                               atol=1e-7)
    bad = IDS.astype(np.float32)
    bad[2] = 1.5
    with pytest.raises(ValueError, match=r"labels\[2\] = -2147483648 is outside"):
        traced(bad, z).block_until_ready()
    if not jax.config.jax_enable_x64:
        wide = IDS.copy()
        wide[3] = 2**32 + 1
        with pytest.raises(ValueError, match=r"labels\[3\] = 4294967297 is outside"):
            jax_ops.softmax_cross_entropy(wide, z)


def test_ignore_class_must_be_an_int() -> None:
    for bad in (True, 1.7):
        with pytest.raises(TypeError, match="ignore_class must be an int or None"):
            jax_ops.softmax_cross_entropy(IDS, LOGITS, ignore_class=bad)


def test_the_handlers_ffi_api_is_one_this_jax_takes() -> None:
    from costxent import _library

    core, _ = _library.load_core()
    needed, found = core.xla_ffi_api_version(), jax_ops._jax_ffi_api_version()
    assert found is not None and found[0] == needed[0] and found[1] >= needed[1]

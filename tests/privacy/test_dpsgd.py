import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedcare.privacy.dpsgd import noise_generator, train_dpsgd


def _bce_sum():
    return torch.nn.BCEWithLogitsLoss(reduction="sum")


def _linear(d, seed=0):
    torch.manual_seed(seed)  # only the initial weights of a local test module
    return torch.nn.Linear(d, 1)


def _per_record_clipped_mean(module, x, y, clip):
    """Reference: each record's gradient by its own backward pass, clipped to ``clip``, averaged."""
    total = [torch.zeros_like(p) for p in module.parameters()]
    for i in range(len(x)):
        module.zero_grad()
        _bce_sum()(module(x[i : i + 1]), y[i : i + 1]).backward()
        grads = [p.grad.detach().clone() for p in module.parameters()]
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        for t, g in zip(total, grads, strict=True):
            t += g * factor
    return [t / len(x) for t in total], len(x)


finite = st.floats(-20, 20, allow_nan=False, width=32)


@settings(max_examples=25, deadline=None)
@given(
    x=arrays(np.float32, st.tuples(st.integers(1, 12), st.just(3)), elements=finite),
    labels=st.lists(st.integers(0, 1), min_size=12, max_size=12),
    clip=st.floats(0.01, 5.0),
)
def test_each_records_gradient_contribution_is_clipped(x, labels, clip):
    # Prepare: full batch (q = 1), no noise, plain SGD with lr 1: the step is exactly the clipped mean
    n = len(x)
    xt = torch.from_numpy(x)
    yt = torch.tensor(labels[:n], dtype=torch.float32).reshape(-1, 1)
    module = _linear(3)
    before = [p.detach().clone() for p in module.parameters()]
    expected, _ = _per_record_clipped_mean(_linear(3), xt, yt, clip)
    # Execute
    train_dpsgd(
        module,
        xt,
        yt,
        loss_fn=_bce_sum(),
        optimizer=torch.optim.SGD(module.parameters(), lr=1.0),
        noise_multiplier=0.0,
        max_grad_norm=clip,
        sample_rate=1.0,
        steps=1,
        generator=noise_generator(0),
        secure_mode=False,
    )
    # Assert: the update is the mean of the clipped per-record gradients, so no record moved it by more than C / n
    step = [b - p.detach() for b, p in zip(before, module.parameters(), strict=True)]
    for got, want in zip(step, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert float(torch.sqrt(sum((s**2).sum() for s in step))) <= clip * (1 + 1e-4)


def test_poisson_sampling_on_a_tiny_site_survives_empty_batches():
    # 5 records, q = 0.05: most batches are empty; each step must still be a (pure-noise) step
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    y = torch.ones(5, 1)
    module = _linear(3)
    result = train_dpsgd(
        module,
        x,
        y,
        loss_fn=_bce_sum(),
        optimizer=torch.optim.SGD(module.parameters(), lr=0.1),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        sample_rate=0.05,
        steps=40,
        generator=noise_generator(3),
        secure_mode=True,
    )
    assert result.steps == 40
    assert result.empty_batches > 20
    assert all(torch.isfinite(p).all() for p in module.parameters())


def _train(seed):
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(2))
    y = (x[:, :1] > 0).float()
    module = _linear(3)
    train_dpsgd(
        module,
        x,
        y,
        loss_fn=_bce_sum(),
        optimizer=torch.optim.SGD(module.parameters(), lr=0.1),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        sample_rate=0.25,
        steps=5,
        generator=noise_generator(seed),
    )
    return torch.cat([p.detach().ravel() for p in module.parameters()])


def test_seeded_noise_repeats_and_csprng_noise_does_not():
    torch.testing.assert_close(_train(7), _train(7), rtol=0, atol=0)
    assert not torch.equal(_train(None), _train(None))

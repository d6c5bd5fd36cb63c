import pytest
import torch

from vcb_utils.scoring import maxsim


def naive_maxsim(q, d, q_mask, d_mask):
    """Loop-by-loop definition: mean over valid query vectors of the max over valid doc vectors."""
    out = torch.empty(len(q), len(d), dtype=torch.float64)
    for i in range(len(q)):
        for j in range(len(d)):
            total, count = 0.0, 0
            for a in range(q.shape[1]):
                if not q_mask[i, a]:
                    continue
                best = max(
                    float(q[i, a].double() @ d[j, b].double())
                    for b in range(d.shape[1])
                    if d_mask[j, b]
                )
                total += best
                count += 1
            out[i, j] = total / count
    return out


def ragged_mask(n, length, generator):
    lengths = torch.randint(1, length + 1, (n,), generator=generator)
    return torch.arange(length)[None, :] < lengths[:, None]


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(7, 5, 16, generator=g)
    d = torch.randn(9, 6, 16, generator=g)
    # masks with holes anywhere, not only trailing padding
    q_mask = torch.rand(7, 5, generator=g) > 0.3
    q_mask[:, 0] = True
    d_mask = ragged_mask(9, 6, g)
    d_mask[3] = torch.tensor([False, True, False, True, False, False])
    return q, d, q_mask, d_mask


def test_matches_naive_loop_with_ragged_masks(inputs):
    q, d, q_mask, d_mask = inputs
    expected = naive_maxsim(q, d, q_mask, d_mask)
    torch.testing.assert_close(maxsim(q, d, q_mask, d_mask).double(), expected, atol=1e-5, rtol=0)


def test_without_masks_uses_every_vector(inputs):
    q, d, _, _ = inputs
    ones_q = torch.ones(q.shape[:2], dtype=torch.bool)
    ones_d = torch.ones(d.shape[:2], dtype=torch.bool)
    expected = naive_maxsim(q, d, ones_q, ones_d)
    torch.testing.assert_close(maxsim(q, d).double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk_size", [1, 30, 31, 97, 500, 10**9])
def test_chunked_equals_unchunked(inputs, chunk_size):
    q, d, q_mask, d_mask = inputs
    full = maxsim(q.double(), d.double(), q_mask, d_mask, chunk_size=10**9)
    chunked = maxsim(q.double(), d.double(), q_mask, d_mask, chunk_size=chunk_size)
    torch.testing.assert_close(chunked, full, atol=1e-12, rtol=0)


def test_float64_in_float64_out_and_half_in_float_out(inputs):
    q, d, q_mask, d_mask = inputs
    assert maxsim(q.double(), d.double(), q_mask, d_mask).dtype == torch.float64
    half = maxsim(q.half(), d.half(), q_mask, d_mask)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, maxsim(q, d, q_mask, d_mask), atol=0.05, rtol=0)


def test_gradient_matches_dense_reference(inputs):
    q, d, q_mask, d_mask = inputs
    q1, d1 = q.clone().requires_grad_(), d.clone().requires_grad_()
    maxsim(q1, d1, q_mask, d_mask, chunk_size=40).sum().backward()
    q2, d2 = q.clone().requires_grad_(), d.clone().requires_grad_()
    sim = torch.einsum("ald,bmd->ablm", q2, d2)
    sim = sim.masked_fill(~d_mask[None, :, None, :], float("-inf")).amax(dim=-1)
    weights = q_mask / q_mask.sum(dim=1, keepdim=True)
    (sim * weights[:, None, :]).sum(dim=-1).sum().backward()
    torch.testing.assert_close(q1.grad, q2.grad)
    torch.testing.assert_close(d1.grad, d2.grad)


def test_hand_computed_example():
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    d = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]])
    # token 1 picks frame 0 (1.0); token 2 picks frame 2 (1.0), unless frame 2 is masked (0.8)
    assert maxsim(q, d).item() == pytest.approx(1.0)
    masked = torch.tensor([[True, True, False]])
    assert maxsim(q, d, d_mask=masked).item() == pytest.approx(0.9)
    only_first = torch.tensor([[True, False]])
    assert maxsim(q, d, q_mask=only_first, d_mask=masked).item() == pytest.approx(1.0)


def test_errors_are_clear():
    q, d = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="vector sizes differ"):
        maxsim(q, torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="at least one valid vector"):
        maxsim(q, d, d_mask=torch.tensor([[True, True, True], [False, False, False]]))
    with pytest.raises(ValueError, match="at least one valid vector"):
        maxsim(q, d, q_mask=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="q_mask must be"):
        maxsim(q, d, q_mask=torch.ones(2, 4, dtype=torch.bool))


def test_empty_inputs_give_empty_matrix():
    assert maxsim(torch.randn(0, 3, 4), torch.randn(5, 2, 4)).shape == (0, 5)

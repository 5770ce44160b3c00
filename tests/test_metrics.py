"""The one binomial thinning (``zipo_scvi._metrics.thin_counts``) on torch and numpy inputs."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from zipo_scvi._metrics import thin_counts

COUNTS = [[4, 2, 0, 6, 3], [3, 5, 1, 2, 3], [4, 3, 0, 3, 4], [4, 2, 3, 5, 6], [4, 0, 6, 3, 4]]
COUNTS += [[2, 3, 0, 4, 5]]


def test_torch_thinning_is_a_partition():
    x = torch.poisson(torch.full((50, 40), 5.0))
    a, b = thin_counts(x, 0.9, torch.Generator().manual_seed(0))
    assert torch.equal(a + b, x) and (a >= 0).all() and (b >= 0).all()
    assert abs(a.sum() / x.sum() - 0.9) < 0.02
    sparse_a, _ = thin_counts(x.to_sparse_csr(), 0.9, torch.Generator().manual_seed(0))
    assert torch.equal(sparse_a, a)
    seeded_a, _ = thin_counts(x, 0.9, seed=0)  # an integer seeds a torch generator
    assert torch.equal(seeded_a, a)


def test_numpy_thinning_is_a_partition_and_dense_equals_sparse():
    counts = np.random.default_rng(0).poisson(3.0, size=(30, 20)).astype(np.float64)
    kept, held_out = thin_counts(counts, 0.9, seed=4)
    assert sp.issparse(kept) and sp.issparse(held_out)
    np.testing.assert_array_equal((kept + held_out).toarray(), counts)
    again, _ = thin_counts(sp.csc_matrix(counts), 0.9, seed=np.random.default_rng(4))
    np.testing.assert_array_equal(again.toarray(), kept.toarray())


def test_each_library_keeps_the_split_it_drew_before_the_merge():
    # Values drawn by the two former copies (torch split_molecules, numpy thin_counts) at the
    # commit before they became one function: a seed gives the same split as it always did.
    kept, _ = thin_counts(np.array(COUNTS, dtype=float), 0.7, seed=11)
    assert kept.toarray().astype(int).tolist() == [
        [4, 1, 0, 4, 3],
        [3, 2, 1, 2, 1],
        [3, 2, 0, 2, 2],
        [3, 2, 1, 3, 4],
        [2, 0, 4, 0, 4],
        [1, 2, 0, 3, 3],
    ]
    x = torch.poisson(torch.full((4, 5), 4.0), generator=torch.Generator().manual_seed(2))
    a, _ = thin_counts(x, 0.7, torch.Generator().manual_seed(11))
    assert a.int().tolist() == [
        [4, 2, 4, 3, 5],
        [1, 0, 2, 3, 0],
        [4, 1, 1, 6, 3],
        [6, 3, 0, 6, 5],
    ]


def test_per_gene_fractions_draw_as_numpy_binomial_does_on_dense_counts():
    # The benchmarks' former inline thinnings (integration.py: one factor per gene on dense
    # counts; grid.py: one depth on CSR data) drew rng.binomial in row-major order; zeros draw
    # nothing, so thin_counts gives the same counts and leaves the generator in the same state.
    counts = np.random.default_rng(1).poisson(2.0, size=(20, 6)).astype(np.float64)
    factor = np.random.default_rng(2).uniform(0.2, 1.0, size=6)
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    expected = rng_a.binomial(counts.astype(np.int64), factor)
    kept, _ = thin_counts(counts, factor, rng_b)
    np.testing.assert_array_equal(kept.toarray(), expected)
    assert rng_a.random() == rng_b.random()
    with pytest.raises(ValueError, match="fractions for 6 genes"):
        thin_counts(counts, factor[:5], 0)
    with pytest.raises(ValueError, match="one fraction"):
        thin_counts(torch.ones(2, 6), factor, 0)


@pytest.mark.parametrize("counts", [np.ones((2, 2)), torch.ones(2, 2)])
def test_thinning_rejects_bad_fractions(counts):
    for fraction in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            thin_counts(counts, fraction, seed=0)
    with pytest.raises(ValueError, match="non-negative"):
        thin_counts(-counts, 0.5, seed=0)

"""valid_rows: the embedding-matrix check every producer applies (no FiftyOne)."""

import numpy as np
import pytest
import torch

from fo_plugin.core.vectors import valid_rows


def test_valid_rows_rejects_nan_inf_and_all_zero_rows():
    z = torch.randn(6, 4)
    z[1, 2] = float("nan")
    z[2, 0] = float("inf")
    z[3] = 0
    z[4] = 0
    z[4, 3] = 1e-30  # tiny but a real direction
    z[5, 1] = -float("inf")
    expected = [True, False, False, False, True, False]
    assert valid_rows(z).tolist() == expected and valid_rows(z).dtype == torch.bool
    assert valid_rows(z.bfloat16()).tolist() == expected
    assert valid_rows(z.numpy()).tolist() == expected and isinstance(valid_rows(z.numpy()), np.ndarray)
    assert valid_rows(torch.zeros(0, 8)).shape == (0,)
    with pytest.raises(ValueError):
        valid_rows(torch.ones(4))

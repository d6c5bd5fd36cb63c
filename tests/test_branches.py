"""One branch vocabulary and one thread limit, shared by the index and the explorer."""

import pytest
import torch

from vcb_utils.branches import BRANCHES, branch_name, branches_of
from vcb_utils.threads import torch_threads


def test_each_mode_offers_its_rankings_and_old_names_still_work():
    assert branches_of("both") == ("both", "F", "V") == BRANCHES
    assert branches_of("F") == ("F",) and branches_of("spatial") == ("F",)
    assert branches_of("V") == ("V",) and branches_of("temporal") == ("V",)
    assert branch_name("temporal") == "V"
    with pytest.raises(ValueError, match="branch must be one of"):
        branch_name("frames")
    with pytest.raises(ValueError, match="no MaxSim branches"):
        branches_of("meanP")


def test_torch_threads_caps_the_count_and_restores_it():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    with torch_threads(before + 8):  # never more threads than were set
        assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
    assert torch.get_num_threads() == before

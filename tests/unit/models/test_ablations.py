"""An NFM without its interaction pathway: output exactly 0, and a training step moves only the linear pathway."""
import torch

from common.models.ablations import remove_interaction
from common.models.nfm import NFM


def test_removed_interaction_outputs_zero_and_never_trains():
    torch.manual_seed(0)
    nfm = remove_interaction(NFM(30, 8, 4))
    frozen = {name: p.detach().clone() for name, p in nfm.named_parameters() if not name.startswith("linear")}
    linear = nfm.linear_weight.detach().clone()
    acts, indices = torch.rand(16, 5), torch.stack([torch.randperm(30)[:5] for _ in range(16)])
    optimizer = torch.optim.Adam([p for p in nfm.parameters() if p.requires_grad], lr=0.1)
    loss = (nfm(acts, indices).total - torch.randn(16, 8)).square().mean()
    loss.backward()
    optimizer.step()
    assert torch.equal(nfm(acts, indices).interaction, torch.zeros(16, 8))
    assert all(torch.equal(p, frozen[name]) for name, p in nfm.named_parameters() if name in frozen)
    assert not torch.equal(nfm.linear_weight, linear)

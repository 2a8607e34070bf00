"""``ARTSEG_SYNC_BATCHNORM``: when DDP training uses SyncBatchNorm, and what gets saved."""

from __future__ import annotations

import copy

import pytest
import torch

from napari_artseg.models import UNet
from napari_artseg.training import ddp


def batch_norms(module: torch.nn.Module) -> list[type]:
    norm = torch.nn.modules.batchnorm._BatchNorm  # BatchNorm2d and SyncBatchNorm
    return [type(m) for m in module.modules() if isinstance(m, norm)]


@pytest.mark.parametrize(("value", "wanted"), [("1", True), ("true", True), ("YES", True),
                                               ("0", False), ("", False), (None, False)])
def test_the_environment_variable_asks_for_it(value, wanted):
    environ = {} if value is None else {ddp.SYNC_BATCHNORM_ENV: value}
    assert ddp.sync_batchnorm_requested(environ) is wanted


def test_only_asked_for_distributed_cuda_training_uses_it():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert ddp.use_sync_batchnorm(True, True, cuda)
    assert not ddp.use_sync_batchnorm(False, True, cuda)  # not asked for
    assert not ddp.use_sync_batchnorm(True, False, cuda)  # one process: nothing to sync
    assert not ddp.use_sync_batchnorm(True, True, cpu)  # gloo has no SyncBatchNorm


def test_outside_a_process_group_wrap_returns_the_model_itself():
    model = UNet(width=4, levels=1, convs_per_level=1)
    assert ddp.wrap(model, torch.device("cpu"), sync_batchnorm=True) is model


def test_the_sync_copy_trains_the_saved_model_which_keeps_plain_batchnorm():
    torch.manual_seed(0)
    model = UNet(width=4, levels=2, convs_per_level=1)
    keys = list(model.state_dict())
    reference = copy.deepcopy(model)  # trained the ordinary way, for comparison
    synced = ddp.with_sync_batchnorm(model)

    assert set(batch_norms(model)) == {torch.nn.BatchNorm2d}  # the model is not changed
    assert set(batch_norms(synced)) == {torch.nn.SyncBatchNorm}
    assert len(batch_norms(synced)) == len(batch_norms(model)) > 0
    assert list(synced.state_dict()) == keys
    for (name, a), b in zip(model.state_dict().items(), synced.state_dict().values(), strict=True):
        assert a.data_ptr() == b.data_ptr(), name  # the same tensors, not copies

    # outside a process group SyncBatchNorm computes plain batch norm: one step through the
    # copy must change the model exactly as a step through the model itself does
    data = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    for net in (synced, reference):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        net.train()
        net(data).square().mean().backward()
        optimizer.step()
    assert list(model.state_dict()) == keys
    for name, value in reference.state_dict().items():
        assert torch.allclose(model.state_dict()[name].float(), value.float(), atol=1e-6), name
    assert int(model.state_dict()["encoder.0.1.num_batches_tracked"]) == 1

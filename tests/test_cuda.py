"""The CUDA paths (skipped without a GPU; `benchmarks/gpu_check.sh` runs them on one): every kind
trains on CUDA in fp32, under bf16 autocast and with torch.compile; a CUDA step computes the CPU
step's gradients; a dictionary trained on CUDA loads and encodes on the CPU."""

import pytest
import torch

from saease import Dictionary, kind_names
from saease.store import write_store
from saease.train.config import TrainConfig
from saease.train.trainer import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (benchmarks/gpu_check.sh)")

KNOBS = {"sae-topk": {"k": 4}, "sae-batchtopk": {"k": 4}, "sae-matryoshka": {"k": 4}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 6, generator=g) @ torch.randn(6, 32, generator=g)
    return write_store(tmp_path_factory.mktemp("cuda") / "s", x)


@pytest.mark.parametrize("kind", kind_names())
@pytest.mark.parametrize("precision, compile", [("fp32", False), ("bf16", False), ("fp32", True)])
def test_every_kind_trains_on_cuda(store, tmp_path, kind, precision, compile):
    cfg = TrainConfig.flat(data=str(store.path), out=str(tmp_path / "d"), kind=kind, d_latent=48, epochs=3,
                           batch_size=512, lr=3e-3, device="cuda", precision=precision, compile=compile,
                           progress=False, checkpoint_every=0, **KNOBS.get(kind, {}))
    model, summary = train(cfg)
    assert model.device.type == "cuda"
    assert summary["explained_variance"] > 0.3, summary
    cpu = Dictionary.load(tmp_path / "d")  # saved weights load and encode on the CPU
    x = torch.randn(16, 32)
    torch.testing.assert_close(cpu.encode(x), model.cpu().eval().encode(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", [k for k in kind_names() if k not in ("vae", "vaease")])  # no sampling noise
def test_a_cuda_step_has_the_cpu_steps_gradients(kind):
    torch.manual_seed(0)
    d = Dictionary.create(kind, d_in=32, d_latent=48, **KNOBS.get(kind, {})).train()
    x = torch.randn(256, 32)
    grads = {}
    for device in ("cpu", "cuda"):
        m = Dictionary.create(kind, d_in=32, d_latent=48, **KNOBS.get(kind, {})).to(device).train()
        m.load_state_dict(d.state_dict())
        m.loss(x.to(device))["loss"].backward()
        grads[device] = {n: p.grad.cpu() for n, p in m.named_parameters() if p.grad is not None}
    for name in grads["cpu"]:
        torch.testing.assert_close(grads["cuda"][name], grads["cpu"][name], rtol=1e-3, atol=1e-4, msg=name)

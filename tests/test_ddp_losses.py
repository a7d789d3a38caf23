"""Global-batch losses of the DeepLab family under DDP (baseline, CDL-b, CDL-e).

The original CDL trains with nn.DataParallel: CE over the valid pixels, balanced CE, Dice and the
affinity-loss normalisation are over the whole batch. Here every batch sum and count of those
losses is summed over the processes (`wsss_core.distributed.global_sum`), so one optimiser step of
the shared training loop with 2 gloo processes × 2 images equals one step of 1 process × 4 images.
The 4 images have different labels (rank 0 mostly background, rank 1 foreground and many ignored
pixels), so losses normalised per process would take a different step (up to ~20 % here).

Gradient accumulation: the micro-batch is the normalisation unit (as the original's `iter_size`
loop, which normalises each micro-batch and adds the gradients), so iter_size 2 gives the mean of
the two micro-batches' gradients, not the gradient of one loss over both.
"""
from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from wsss_core.distributed import Context
from wsss_core.methods.deeplab.family import DeepLabFamily
from wsss_core.schedules import set_lr_factor
from wsss_core.training import train

NUM_CLASSES, SIZE, SEED, WORLD = 4, 32, 0, 2
# tiny DeepLab v2, frozen BatchNorm: per-image outputs do not depend on how the batch is split
MODEL = {"blocks": [1, 1, 1, 1], "width": 8, "msc_scales": [0.5, 0.75], "test_scales": [0.5],
         "freeze_bn": True}
# (name, method, method_options, batch_size, iter_size); iterations = 1, so with warmup_ratio 0.1
# the one step is after CDL's warm-up (Dice for expert 2, label correction on), with 2.0 before
CASES = [
    ("baseline", "baseline", {}, 4, 1),
    ("baseline_balanced", "baseline", {"imagenet_init": True}, 4, 1),
    ("cdl_b_warmup", "cdl_b", {"warmup_ratio": 2.0}, 4, 1),
    ("cdl_b", "cdl_b", {}, 4, 1),
    ("cdl_e", "cdl_e", {}, 4, 1),
    ("cdl_e_balanced", "cdl_e", {"imagenet_init": True}, 4, 1),
    ("cdl_b_iter_size_2", "cdl_b", {}, 2, 2),
]
# expert heads scaled up so that their softmax confidences straddle CDL's thresholds (0.5, 0.9):
# label correction then has credible (~45 %), incredible (~6 %) and untouched pixels to work on
HEAD_SCALE = 6.0


class ConfidentHeads(DeepLabFamily):
    """The tiny DeepLab with confident experts and without CDL-e's affinity dropout (its masks
    are drawn per process, so they differ between 1 and 2 processes whatever the losses do)."""

    def build_model(self) -> nn.Module:
        model = super().build_model()
        with torch.no_grad():
            for name, module in model.named_modules():
                if isinstance(module, nn.Conv2d) and "aspp" in name:
                    module.weight.mul_(HEAD_SCALE)
                elif isinstance(module, nn.Dropout2d):
                    module.p = 0.0
        return model


def _config(method_options: dict, batch_size: int, iter_size: int) -> dict:
    return {"iterations": 1, "batch_size": batch_size, "iter_size": iter_size, "lr": 0.01,
            "weight_decay": 0.0, "momentum": 0.9, "lr_step": 10, "lr_power": 0.9,
            "num_workers": 0, "checkpoint_every": 1, "log_every": 1, "seed": SEED,
            "init_weights": "", "model": MODEL, "method_options": method_options}


def _label(kind: int, generator: torch.Generator) -> torch.Tensor:
    label = torch.zeros(SIZE, SIZE, dtype=torch.int64)
    if kind == 1:    # background and one small object
        label[8:16, 8:20] = 1
    elif kind == 2:  # two large objects, a third of the pixels ignored
        label[:, 10:] = 2
        label[16:, 20:] = 3
        label[:11] = 255
    elif kind == 3:  # no background at all, mostly ignored
        label[:] = 255
        label[12:, 4:28] = 3
        label[20:, 4:12] = 1
    label[torch.rand(SIZE, SIZE, generator=generator) < 0.05] = 255
    return label


class FourImages(Dataset):
    """4 different images; under the 2-process sampler rank 0 gets the label kinds 0 and 1
    (background-heavy), rank 1 the kinds 2 and 3 (foreground, ignore-heavy)."""

    def __init__(self):
        order = [list(DistributedSampler(range(4), num_replicas=WORLD, rank=rank, shuffle=True,
                                         seed=SEED)) for rank in range(WORLD)]
        generator = torch.Generator().manual_seed(1)
        self.samples: list[dict] = [{} for _ in range(4)]
        for kind, index in enumerate(order[0] + order[1]):
            self.samples[index] = {
                "image": 50 * torch.randn(3, SIZE, SIZE, generator=generator),
                "strong_image": 50 * torch.randn(3, SIZE, SIZE, generator=generator),
                "label": _label(kind, generator)}

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.samples[index]


@contextlib.contextmanager
def float64():
    """Models and images in float64: a correct reduction then agrees to ~1e-12, where float32
    rounding alone (sums over 2 vs 4 images, DDP's gradient average) reaches ~3e-5 of the
    smallest updates."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _run_cases(ctx: Context, out_root: Path) -> None:
    """One training step of every case; writes its weights and logged losses under out_root."""
    with float64():
        for name, method, options, batch_size, iter_size in CASES:
            family = ConfidentHeads(method, NUM_CLASSES, _config(options, batch_size, iter_size))
            out = out_root / name
            summary = train(family, FourImages(), ctx, family.config, out)
            if ctx.is_main:
                (out / "losses.json").write_text(json.dumps(summary["final_losses"]))


def _worker(rank: int, port: int, out_root: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        _run_cases(Context(rank, WORLD, rank, torch.device("cpu")), Path(out_root))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _initial_weights(method: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(SEED)  # as train() seeds rank 0, whose weights DDP broadcasts
    with float64():
        return ConfidentHeads(method, NUM_CLASSES, _config({}, 4, 1)).build_model().state_dict()


def _relative_update_difference(initial, one, two) -> float:
    """max over parameters of max|Δ₂ − Δ₁| / max|Δ₁| (Δ = the step's update)."""
    worst = 0.0
    for key, start in initial.items():
        if not start.is_floating_point():
            continue
        update_one, update_two = one[key] - start, two[key] - start
        scale = float(update_one.abs().max())
        if scale == 0.0:  # frozen (BatchNorm, CDL-e's affinity head): frozen in both
            assert torch.equal(update_two, update_one), key
            continue
        worst = max(worst, float((update_two - update_one).abs().max()) / scale)
    return worst


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The cases run once with 1 process (here) and once with 2 spawned gloo processes."""
    root = tmp_path_factory.mktemp("ddp_losses")
    _run_cases(Context(0, 1, 0, torch.device("cpu")), root / "one")
    mp.spawn(_worker, args=(_free_port(), str(root / "two")), nprocs=WORLD, join=True)
    return root


def _load(root: Path, name: str):
    weights = torch.load(root / name / "model.pth", weights_only=True)
    return weights, json.loads((root / name / "losses.json").read_text())


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_two_processes_take_the_step_of_one_process_on_the_global_batch(runs, case):
    name, method = case[:2]
    weights_one, losses_one = _load(runs / "one", name)
    weights_two, losses_two = _load(runs / "two", name)
    difference = _relative_update_difference(_initial_weights(method), weights_one, weights_two)
    print(f"{name}: max relative update difference {difference:.2e}")
    assert difference < 1e-5, name
    # the logged terms are the global-batch values
    assert losses_one.keys() == losses_two.keys()
    for term, value in losses_one.items():
        assert losses_two[term] == pytest.approx(value, rel=1e-5), (name, term)


def test_the_micro_batch_is_the_normalisation_unit_of_accumulation(runs):
    """iter_size 2 × batch 2 (1 process) equals SGD on the mean of the two micro-batches'
    gradients, each computed from the micro-batch's own loss, and differs from batch 4."""
    name, method, options, batch_size, iter_size = CASES[-1]
    family = ConfidentHeads(method, NUM_CLASSES, _config(options, batch_size, iter_size))
    sampler = DistributedSampler(range(4), num_replicas=1, rank=0, shuffle=True, seed=SEED)
    sampler.set_epoch(0)
    order = list(sampler)  # the loop's two micro-batches are order[:2] and order[2:]
    with float64():
        torch.manual_seed(SEED)
        model = family.build_model()
        model.train()
        optimizer = family.optimizer(model)
        set_lr_factor(optimizer, family.lr_factor(1))
        dataset = FourImages()
        gradients = []
        for micro in (order[:2], order[2:]):
            batch = {key: torch.stack([dataset[i][key] for i in micro]) for key in dataset[0]}
            model.zero_grad(set_to_none=True)
            loss, _ = family.training_loss(model, batch, 1)
            loss.backward()
            gradients.append({n: p.grad.clone() for n, p in model.named_parameters()
                              if p.grad is not None})
        for parameter_name, parameter in model.named_parameters():
            if parameter_name in gradients[0]:
                parameter.grad = (gradients[0][parameter_name] + gradients[1][parameter_name]) / 2
        optimizer.step()
    expected = model.state_dict()
    accumulated, _ = _load(runs / "one", name)
    initial = _initial_weights(method)
    assert _relative_update_difference(initial, expected, accumulated) < 1e-5
    whole_batch, _ = _load(runs / "one", "cdl_b")  # same step on one batch of 4
    assert _relative_update_difference(initial, expected, whole_batch) > 1e-3


def test_the_test_batch_would_tell_per_process_normalisation_apart():
    """Guard of the test itself: the two halves of the batch have different label counts."""
    dataset = FourImages()
    halves = [list(DistributedSampler(range(4), num_replicas=WORLD, rank=rank, shuffle=True,
                                      seed=SEED)) for rank in range(WORLD)]
    counts = [np.bincount(torch.stack([dataset[i]["label"] for i in half]).flatten().numpy(),
                          minlength=256)[[0, 1, 2, 3, 255]] for half in halves]
    (background_0, *_, ignored_0), (background_1, *_, ignored_1) = counts
    valid_0, valid_1 = sum(counts[0][:4]), sum(counts[1][:4])
    assert valid_0 > 1.5 * valid_1 and ignored_1 > 5 * ignored_0
    assert background_0 / valid_0 > 3 * background_1 / valid_1

"""Every registered method keeps the contract the pipeline relies on (as timm's suite runs over
`list_models()`): each of its presets resolves, its network builds, one training step lowers
nothing to NaN and moves its weights, and each test-time predictor gives class scores on the
stride-8 grid. A new built-in method is covered by adding it, nothing here."""
import math

import numpy as np
import pytest
import torch

from wsss_core.config import params_from_dict
from wsss_core.methods import get_method, method_names
from wsss_core.pipeline.resolve import resolve_run

NUM_CLASSES = 21   # VOC's: DuPL's released schedule has one threshold per VOC class
HEIGHT, WIDTH = 44, 52
CROP = 32


def _params(method: str, preset: str, **train):
    return params_from_dict({"method": method, "train": {"preset": preset, **train}})


def _tiny_run(method: str):
    """The method's first preset (the CPU demo), from scratch, shortened to a few iterations."""
    preset = next(iter(get_method(method).presets))
    params = _params(method, preset, init_weights="", iterations=4, batch_size=2, crop=CROP)
    run = resolve_run(params)
    return run, run.record.create(method, NUM_CLASSES, {**run.config, "num_workers": 0})


def _sample(record, rng: np.random.Generator, crop: int, config: dict, strong: bool) -> dict:
    """One training sample of an image with two classes in it (label map or image label)."""
    image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    label = np.zeros((HEIGHT, WIDTH), np.uint8)
    label[5:25, 6:30], label[28:40, 30:48] = 1, 3
    image[label == 1] = (200, 40, 40)
    if record.uses_pseudo_labels:
        target = label
    else:
        target = np.zeros(NUM_CLASSES - 1, np.float32)   # no background entry
        target[[0, 2]] = 1.0                              # classes 1 and 3
    return record.train_sample(image, target, rng, crop, config, strong)


@pytest.mark.parametrize("method", method_names())
def test_every_preset_resolves(method):
    record = get_method(method)
    assert record.presets, f"method {method} has no preset"
    for preset in record.presets:
        run = resolve_run(_params(method, preset))
        assert run.config["preset"] == preset and run.record is record
        assert run.crf.iter_max >= 1


@pytest.mark.parametrize("method", method_names())
def test_one_training_step_and_every_predictor(method):
    torch.manual_seed(0)
    run, adapter = _tiny_run(method)
    record, config = run.record, run.config
    model = adapter.build_model()
    optimizer = adapter.optimizer(model)
    assert all("initial_lr" in group for group in optimizer.param_groups)
    assert adapter.lr_factor(1) > 0

    rng = np.random.default_rng(0)
    samples = [_sample(record, rng, config["crop"], config, adapter.needs_strong_view)
               for _ in range(2)]
    batch = {key: torch.stack([s[key] for s in samples]) for key in samples[0]}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.train()
    loss, terms = adapter.training_loss(model, batch, 1)
    assert loss.ndim == 0 and math.isfinite(float(loss.detach()))
    assert all(math.isfinite(float(v)) for v in terms.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    moved = [name for name, p in model.named_parameters() if not torch.equal(before[name], p)]
    assert moved, f"one step of {method} changed no weight"

    model.eval()
    image = torch.from_numpy(record.normalize(rng.integers(0, 256, (HEIGHT, WIDTH, 3),
                                                           dtype=np.uint8)))[None]
    predictors = record.predictors(config)
    assert predictors
    with torch.no_grad():
        for name, predict in predictors.items():
            logits = predict(model, image)
            assert logits.shape == (1, NUM_CLASSES, math.ceil(HEIGHT / 8), math.ceil(WIDTH / 8)), name
            assert torch.isfinite(logits).all(), name

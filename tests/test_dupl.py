"""DuPL building blocks against the reference fixtures computed with the original code
(../shared/fixtures/dupl): labels exactly, losses and gradients to ~1e-5 relative."""
import numpy as np
import pytest
import torch

from tests.conftest import SHARED
from wsss_core.methods.dupl import (balanced_seg_loss, cam_to_train_label, cam_to_val_label,
                                    cosine_descent, discrepancy_loss, filter_noisy_labels,
                                    image_high_thresholds, par_refine)
from wsss_core.schedules import warmup_poly_factor

FIXTURES = SHARED / "fixtures" / "dupl"


def fixture(name):
    return np.load(FIXTURES / f"{name}.npz")


def t(array):
    return torch.from_numpy(np.asarray(array))


def test_warmup_poly_lr_matches_fixture():
    d = fixture("poly_lr")
    lrs = [float(d["base_lr"]) * warmup_poly_factor(int(s), int(d["warmup_iter"]), int(d["max_iter"]),
                                                   float(d["warmup_ratio"]), float(d["power"]))
           for s in d["steps"]]
    assert np.allclose(lrs, d["lr"], rtol=1e-9)
    # hand values: step 0 is warmup_ratio·base; step 750 half-way
    assert warmup_poly_factor(0, 1500, 20000, 1e-6) == pytest.approx(1e-6)
    assert warmup_poly_factor(750, 1500, 20000, 0.0) == pytest.approx(0.5)
    assert warmup_poly_factor(25000, 1500, 20000) == warmup_poly_factor(19999, 1500, 20000)


@pytest.mark.parametrize("prefix", ["voc", "coco"])
def test_cosine_descent_and_per_image_threshold(prefix):
    d = fixture("cosine_descent")
    start, end = t(d[f"{prefix}_start"]), t(d[f"{prefix}_end"])
    offset, steps = int(d[f"{prefix}_offset"]), int(d[f"{prefix}_num_steps"])
    for row, n_iter in enumerate(d[f"{prefix}_iters"]):
        thres = cosine_descent(start, end, int(n_iter) - offset, steps)
        assert np.allclose(thres.numpy(), d[f"{prefix}_thres"][row], rtol=1e-6)
        image = image_high_thresholds(thres, t(d[f"{prefix}_cls_label"]))
        assert np.allclose(image.numpy(), d[f"{prefix}_image_thres"][row], rtol=1e-6)


def test_cosine_descent_hand_values():
    start, end = torch.tensor([0.7]), torch.tensor([0.5])
    assert cosine_descent(start, end, -5, 11).item() == pytest.approx(0.7)
    assert cosine_descent(start, end, 5, 11).item() == pytest.approx(0.6)  # u = 1/2
    assert cosine_descent(start, end, 10, 11).item() == pytest.approx(0.5)
    assert cosine_descent(start, end, 50, 11).item() == pytest.approx(0.5)


def test_cam_label_rules_match_fixture():
    d = fixture("cam_to_label")
    cam, cls, box = t(d["cam"]), t(d["cls_label"]), t(d["img_box"])
    fixed = cam_to_train_label(cam, cls, box, float(d["high_thre"]), float(d["low_thre"]),
                               float(d["bkg_thre"]))
    assert np.array_equal(fixed.numpy(), d["pseudo_label"])
    dynamic = cam_to_train_label(cam, cls, box, t(d["high_thre_per_image"]), float(d["low_thre"]),
                                 float(d["bkg_thre"]))
    assert np.array_equal(dynamic.numpy(), d["pseudo_label_dynamic"])
    assert np.array_equal(cam_to_val_label(cam, cls, float(d["bkg_thre"])).numpy(), d["label_val"])


def test_cam_label_rules_hand_values():
    # one class present; values around τ_l = 0.25 and τ_h = 0.7
    cam = torch.tensor([0.2, 0.25, 0.26, 0.7, 0.71]).view(1, 1, 1, 5)
    label = cam_to_train_label(cam, torch.ones(1, 1), None, 0.7, 0.25, 0.5)
    assert label.view(-1).tolist() == [0, 0, 255, 255, 1]
    boxed = cam_to_train_label(cam, torch.ones(1, 1), torch.tensor([[0, 1, 0, 4]]), 0.7, 0.25, 0.5)
    assert boxed.view(-1).tolist() == [0, 0, 255, 255, 255]  # outside the crop box → ignore


def test_par_matches_fixture():
    d = fixture("par")
    refined = par_refine(t(d["image"]), t(d["mask"]))
    assert np.allclose(refined.numpy(), d["refined_mask"], rtol=1e-5, atol=1e-6)


def test_par_on_a_constant_mask_scales_by_the_kernel_sum():
    # each iteration sums softmax(appearance) + w2·softmax(position) = 1 + w2 over neighbours,
    # so a constant mask grows by (1 + 0.01) per iteration, as in the original (not renormalised)
    image = torch.rand(1, 3, 9, 9)
    mask = torch.full((1, 2, 9, 9), 0.5)
    assert torch.allclose(par_refine(image, mask), torch.full_like(mask, 0.5 * 1.01 ** 10), rtol=1e-5)


def test_balanced_seg_loss_matches_fixture_including_empty_sets():
    d = fixture("seg_loss")
    pred = t(d["pred"]).requires_grad_(True)
    loss = balanced_seg_loss(pred, t(d["label"]))
    loss.backward()
    assert loss.item() == pytest.approx(float(d["loss"]), rel=1e-5)
    assert np.allclose(pred.grad.numpy(), d["grad_pred"], rtol=1e-4, atol=1e-8)
    for key in ("nofg", "nobg", "allignore"):
        value = balanced_seg_loss(t(d["pred"]), t(d[f"label_{key}"])).item()
        assert np.isfinite(value) and value == pytest.approx(float(d[f"loss_{key}"]), rel=1e-5, abs=1e-9)


def test_discrepancy_loss_both_forms():
    d = fixture("discrepancy_loss")
    f1, f2 = t(d["fmap_1"]).requires_grad_(True), t(d["fmap_2"]).requires_grad_(True)
    loss = discrepancy_loss(f1, f2, "code")
    loss.backward()
    assert loss.item() == pytest.approx(float(d["sim_loss"]), rel=1e-5)
    assert np.allclose(f1.grad.numpy(), d["grad_fmap_1"], rtol=1e-4, atol=1e-7)
    assert np.allclose(f2.grad.numpy(), d["grad_fmap_2"], rtol=1e-4, atol=1e-7)
    # hand values: identical maps, cos = 1 → code form 2·(1 + 1) = 4; orthogonal maps, cos = 0
    same = torch.tensor([[[[1.0, 0.0]]]])
    assert discrepancy_loss(same, same.clone(), "code").item() == pytest.approx(4.0)
    ortho = torch.tensor([[[[0.0, 1.0]]]])
    assert discrepancy_loss(same, ortho, "code").item() == pytest.approx(2.0)
    assert discrepancy_loss(same, ortho, "paper").item() == pytest.approx(0.0, abs=1e-6)  # −log(1−0)


@pytest.mark.parametrize("backend, min_agreement", [("sklearn", 1.0), ("torch", 0.99)])
def test_gmm_filter_matches_fixture(backend, min_agreement):
    d = fixture("gmm_filter")
    result = filter_noisy_labels(t(d["loss"]), t(d["label"]), float(d["gamma"]),
                                 float(d["gmm_valid_thre"]), float(d["loss_min"]),
                                 int(d["min_samples"]), backend)
    labels = result.labels.numpy()
    agreement = (labels == d["filtered_label"]).mean()
    assert agreement >= min_agreement, agreement
    assert (labels[d["label"] == 0] == 0).all()  # background is never filtered

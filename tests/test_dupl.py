"""DuPL building blocks against the reference fixtures computed with the original code
(../shared/fixtures/dupl): labels exactly, losses and gradients to ~1e-5 relative."""
import math

import numpy as np
import pytest
import torch

from tests.conftest import fixtures_dir
from wsss_core.methods.dupl import (
    DuplConfig,
    balanced_seg_loss,
    cam_to_train_label,
    cam_to_val_label,
    compute_loss,
    computed_terms,
    consistency_loss,
    consistency_target,
    cosine_descent,
    discrepancy_loss,
    filter_noisy_labels,
    image_high_thresholds,
    par_refine,
    param_groups,
    phase_weights,
    ptc_affinity_target,
    ptc_loss,
    ptc_token_labels,
    refine_cams_two_backgrounds,
    scale_box,
)
from wsss_core.methods.dupl.method import DuplMethod
from wsss_core.methods.dupl.presets import DUPL_PRESETS
from wsss_core.models.vit_seg import build_dupl_model
from wsss_core.schedules import warmup_poly_factor

FIXTURES = fixtures_dir("dupl")


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


def test_par_hand_values_on_a_two_pixel_image():
    # 1×2 image, dilation 1: with replicate padding each pixel's 8 neighbours are 5× itself and
    # 3× the other pixel; of the 4 straight neighbours (the only ones the position softmax keeps:
    # the diagonals' −(√2/σ_d/0.3)² is ~227 lower) 3 are itself. Across a colour edge the
    # appearance term −(|ΔI|/σ_I/0.3)² = −448/120/0.09 ≈ −41.5 cuts the other pixel off, so
    # m0 ← m0 + 0.01·(0.75·m0 + 0.25·m1); on a flat image (σ_I = 0) all 8 count equally,
    # m0 ← (5·m0 + 3·m1)/8 + 0.01·(0.75·m0 + 0.25·m1).
    mask = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    edge = torch.tensor([0.2, 0.8]).view(1, 1, 1, 2).expand(1, 3, 1, 2).contiguous()
    once = par_refine(edge, mask, dilations=(1,), num_iter=1)
    assert torch.allclose(once, torch.tensor([[[[1.0075, 0.0025]], [[0.0025, 1.0075]]]]),
                          rtol=1e-6, atol=1e-7)
    twice = par_refine(edge, mask, dilations=(1,), num_iter=2)
    # (1.0075² + 0.0025², 2·1.0075·0.0025)
    assert torch.allclose(twice, torch.tensor([[[[1.0150625, 0.0050375]], [[0.0050375, 1.0150625]]]]),
                          rtol=1e-6, atol=1e-7)
    flat = torch.full((1, 3, 1, 2), 0.5)
    smooth = par_refine(flat, mask, dilations=(1,), num_iter=1)
    assert torch.allclose(smooth, torch.tensor([[[[0.6325, 0.3775]], [[0.3775, 0.6325]]]]),
                          rtol=1e-6, atol=1e-7)


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


def test_ptc_affinity_target_and_loss_match_fixture():
    d = fixture("ptc_loss")
    target = ptc_affinity_target(t(d["token_label"]))
    assert target.dtype == torch.int64
    assert np.array_equal(target.numpy(), d["aff_mask"].astype(np.int64))
    fmap = t(d["fmap"]).requires_grad_(True)
    loss = ptc_loss(fmap, target)
    loss.backward()
    assert loss.item() == pytest.approx(float(d["loss"]), rel=1e-5)
    assert np.allclose(fmap.grad.numpy(), d["grad_fmap"], rtol=1e-4, atol=1e-8)


def test_ptc_training_pipeline_matches_fixture_with_the_unscaled_box_quirk():
    d = fixture("ptc_loss")
    fmap, cam_aux, cls = t(d["fmap"]), t(d["pipe_cam_aux"]), t(d["pipe_cls_label"])
    box, high = t(d["pipe_img_box"]), t(d["pipe_high_thre"])
    grid = fmap.shape[-2:]
    assert DuplConfig().ptc_scale_img_box is False  # the released behaviour is the default
    labels = ptc_token_labels(cam_aux, cls, grid, box, high)
    assert np.array_equal(labels.numpy(), d["pipe_token_label"])
    # the aux CAMs are resized to the token grid as the original does: same labels as the
    # recorded resized CAMs give
    assert torch.equal(labels, cam_to_train_label(t(d["pipe_resized_cam"]), cls, box, high))
    # the quirk shows in image 1: its pixel box starts at column 4, used as a token index
    unboxed = ptc_token_labels(cam_aux, cls, grid, None, high)
    assert (labels[1, :, :4] == 255).all() and (unboxed[1, :, :4] != 255).any()
    assert torch.equal(labels[1, :, 4:], unboxed[1, :, 4:])
    target = ptc_affinity_target(labels)
    assert np.array_equal(target.numpy(), d["pipe_aff_mask"].astype(np.int64))
    assert ptc_loss(fmap, target).item() == pytest.approx(float(d["pipe_loss"]), rel=1e-5)


def test_ptc_scaled_box_option_maps_the_pixel_box_onto_the_token_grid():
    d = fixture("ptc_loss")
    cam_aux, cls, box, high = (t(d["pipe_cam_aux"]), t(d["pipe_cls_label"]), t(d["pipe_img_box"]),
                               t(d["pipe_high_thre"]))
    # 48×56 pixels → 6×7 tokens: rows 0:40 → 0:ceil(5.0), columns 4:56 → floor(0.5):7
    assert scale_box(box, (48, 56), (6, 7)).tolist() == [[0, 6, 0, 7], [0, 5, 0, 7]]
    scaled = ptc_token_labels(cam_aux, cls, (6, 7), box, high, scale_img_box=True)
    unboxed = ptc_token_labels(cam_aux, cls, (6, 7), None, high)
    assert torch.equal(scaled[0], unboxed[0]) and torch.equal(scaled[1, :5], unboxed[1, :5])
    assert (scaled[1, 5] == 255).all()


def test_ptc_hand_values_on_a_2x2_token_grid():
    labels = torch.tensor([[[0, 1], [1, 255]]])           # tokens 0..3 in row-major order
    target = ptc_affinity_target(labels)
    assert target.tolist() == [[[255, 0, 0, 255],
                                [0, 255, 1, 255],
                                [0, 1, 255, 255],
                                [255, 255, 255, 255]]]
    # tokens (D = 2): t0 = (1, 1), t1 = (0, 1), t2 = (0, −2) (|cos| ignores the sign), t3 ignored
    fmap = torch.tensor([[1.0, 0.0, 0.0, -1.0], [1.0, 1.0, -2.0, 0.5]]).view(1, 2, 2, 2)
    # positives (1,2), (2,1): s = 1 → ½(1 − 2/3); negatives (0,1), (1,0), (0,2), (2,0): s = 1/√2
    # → ½·(4/√2)/5
    expected = 0.5 * (1 - 2 / 3) + 0.5 * (4 / math.sqrt(2)) / 5
    assert ptc_loss(fmap, target).item() == pytest.approx(expected, rel=1e-6)


def test_consistency_loss_matches_fixture():
    d = fixture("reg_loss")
    confidence, mask, target = consistency_target(t(d["segs"]), t(d["sup_label"]))
    assert np.allclose(confidence.numpy(), d["confidence"], rtol=1e-5, atol=1e-6)
    assert np.array_equal(mask.numpy(), d["uncertain_mask"])
    assert 0 < mask.sum() < mask.numel()
    assert np.array_equal(target.numpy(), d["pseudo_seg"])
    segs = t(d["segs"]).requires_grad_(True)
    segs_aug = t(d["segs_aug"]).requires_grad_(True)
    loss = consistency_loss(segs, segs_aug, t(d["sup_label"]))  # defaults: 0.9, flip back
    loss.backward()
    assert loss.item() == pytest.approx(float(d["reg_loss"]), rel=1e-5)
    assert np.allclose(segs_aug.grad.numpy(), d["grad_segs_aug"], rtol=1e-4, atol=1e-8)
    assert segs.grad is None  # the clean view only provides the (detached) target


def test_consistency_loss_is_zero_without_ignored_pixels():
    d = fixture("reg_loss")
    segs_aug = t(d["segs_aug"]).requires_grad_(True)
    loss = consistency_loss(t(d["segs"]), segs_aug, t(d["sup_label_noignore"]))
    loss.backward()
    assert loss.item() == float(d["reg_loss_empty"]) == 0.0
    assert torch.equal(segs_aug.grad, torch.zeros_like(segs_aug))


@pytest.mark.parametrize("variant", ["dynamic_thres", "bkg_v2"])
def test_refine_cams_two_backgrounds_matches_fixture(variant):
    d = fixture("refine_cams")
    if variant == "dynamic_thres":  # refine_cams_with_dynamic_thres: τ_h per image
        high, expected, gap_high = (t(d["high_thre_per_image"]), d["refined_label"],
                                    d["tie_gap_h"])
    else:                           # refine_cams_with_bkg_v2: one fixed τ_h
        high, expected, gap_high = (float(d["bkg_v2_high_thre"]), d["refined_label_bkg_v2"],
                                    d["tie_gap_bkg_v2"])
    label = refine_cams_two_backgrounds(t(d["image"]), t(d["cams"]), t(d["cls_label"]), high,
                                        float(d["low_thre"]), t(d["img_box"]))
    assert label.dtype == torch.int64
    expected = expected.astype(np.int64)
    # the fixture README: the argmax may legitimately flip where the PAR output's top-1 − top-2
    # gap is below ~1e-5; everywhere else, and everywhere outside img_box, the labels are exact
    outside = ~np.asarray(
        [[[h0 <= r < h1 and w0 <= c < w1 for c in range(expected.shape[2])]
          for r in range(expected.shape[1])] for h0, h1, w0, w1 in d["img_box"]])
    decided = ((gap_high >= 1e-5) & (d["tie_gap_l"] >= 1e-5)) | outside
    assert decided.mean() > 0.99
    assert np.array_equal(label.numpy()[decided], expected[decided])
    assert (label.numpy()[outside] == 255).all() and outside.any()
    values = set(np.unique(expected[decided]).tolist())
    assert {0, 255} < values  # background, ignore and at least one class are compared


# (n_iter, term) → (computed, weight) in the released scripts' loops (`if n_iter < cam_iters` /
# `< gmm_iters` choose the computations, `if n_iter <= ...` the weights of the total loss)
VOC_PHASES = {
    (1999, "seg"): (False, 0.0), (2000, "seg"): (True, 0.0), (2001, "seg"): (True, 0.2),
    (7999, "reg"): (False, 0.0), (8000, "reg"): (True, 0.0), (8001, "reg"): (True, 0.05),
    (0, "ptc"): (True, 0.2), (0, "dis"): (True, 0.1),
}
COCO_PHASES = {
    (7999, "ptc"): (False, 0.0), (8000, "ptc"): (True, 0.0), (12001, "ptc"): (True, 0.2),
    (0, "dis"): (True, 0.0), (8001, "dis"): (True, 0.05),
    (8000, "seg"): (True, 0.0), (8001, "seg"): (True, 0.2),
    (31999, "reg"): (False, 0.05), (32000, "reg"): (True, 0.05),  # reg weighted from 12001 on
}


@pytest.mark.parametrize("cfg, table", [(DuplConfig.voc(), VOC_PHASES),
                                        (DuplConfig.coco(), COCO_PHASES)], ids=["voc", "coco"])
def test_phase_schedule_matches_the_released_scripts(cfg, table):
    for (n_iter, term), (computed, weight) in table.items():
        assert computed_terms(n_iter, cfg)[term] is computed, (n_iter, term)
        assert phase_weights(n_iter, cfg)[term] == weight, (n_iter, term)
    assert not computed_terms(5000, DuplConfig.voc(w_dis=0.0))["dis"]  # switched off: not built


def test_demo_schedule_runs_every_phase_of_the_voc_script_at_its_share_of_the_run():
    # Wu0409/DuPL train_final_voc.py: 20000 iterations, LR warm-up 1500, CAM pseudo labels from
    # 2000, the GMM filter (and L_reg) from 8000; the demo keeps these shares of its own run
    preset = DUPL_PRESETS["demo"]
    iterations = preset["iterations"]
    cfg = DuplMethod(21, preset).cfg
    assert cfg.max_iters == iterations
    assert cfg.cam_iters == round(2000 / 20000 * iterations)
    assert cfg.gmm_iters == round(8000 / 20000 * iterations)
    # the warm-up ends no later than the classifier-only phase (the script's 1500 ≤ 2000)
    assert 0 < preset["warmup_iter"] <= cfg.cam_iters
    # each phase gets iterations: classification only, + CAM pseudo labels, + the noise filter
    phases = [cfg.cam_iters, cfg.gmm_iters - cfg.cam_iters, iterations - cfg.gmm_iters]
    assert min(phases) >= 10 and sum(phases) == iterations
    assert not computed_terms(cfg.cam_iters - 1, cfg)["seg"] and computed_terms(cfg.cam_iters, cfg)["seg"]
    assert not computed_terms(cfg.gmm_iters - 1, cfg)["reg"]
    assert computed_terms(cfg.gmm_iters, cfg)["reg"] and phase_weights(iterations - 1, cfg)["reg"] > 0


def tiny_dupl_batch(num_classes=3, size=32):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, size, size, generator=generator)
    cls_labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])[:, :num_classes - 1]
    return {"images": images, "cls_labels": cls_labels,
            "img_box": torch.tensor([[0, size, 0, size]] * 2),
            "strong_images": torch.randn(2, 3, size, size, generator=generator)}


def test_seg_loss_weighted_zero_at_the_boundary_gives_the_decoders_zero_gradients():
    # cam_iters = 1: at n_iter 0 L_seg is not built, at n_iter 1 it is built with weight 0 (the
    # original's `0.0 * seg_loss`), from n_iter 2 on it is weighted
    torch.manual_seed(0)
    model = build_dupl_model(3, patch_size=8, depth=1, embed_dim=32, num_heads=2, decoder_width=8)
    cfg = DuplConfig.voc(max_iters=10, cam_iters=1, gmm_iters=5, thre_end=[0.55])
    batch = tiny_dupl_batch()
    decoder = list(model.branch1.decoder.parameters()) + list(model.branch2.decoder.parameters())
    grads = {}
    for n_iter in (0, 1, 2):
        model.zero_grad(set_to_none=True)
        loss, terms = compute_loss(model, batch, n_iter + 1, cfg)
        loss.backward()
        grads[n_iter] = [p.grad for p in decoder]
        if n_iter == 1:
            assert terms["seg"] == 0.0  # reported as weighted: 0
            with torch.no_grad():  # AdamW counts the step and decays the decoders
                before = [p.clone() for p in decoder]
                lr, decay = 1e-2, 0.1
                torch.optim.AdamW(param_groups(model, lr, decay), lr=lr, weight_decay=decay).step()
            for old, new in zip(before, decoder):
                assert torch.allclose(new, old * (1 - 10 * lr * decay), rtol=1e-6, atol=0)
    assert all(g is None for g in grads[0])
    assert all(g is not None and torch.equal(g, torch.zeros_like(g)) for g in grads[1])
    assert all(g is not None and g.abs().sum() > 0 for g in grads[2])

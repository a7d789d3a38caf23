import numpy as np
import pytest

from wsss_core.metrics import ConfusionMatrix, mean_average_precision, per_class_csv, scores_report


def test_scores_hand_computed():
    # 3 classes; gt/pred over 8 pixels plus two ignored ones
    gt = np.array([0, 0, 0, 1, 1, 1, 2, 2, 255, 255])
    pred = np.array([0, 0, 1, 1, 1, 0, 2, 1, 2, 0])
    s = ConfusionMatrix(3).update(pred, gt).scores()
    # class 0: TP 2, FP 1 (gt1→0), FN 1 → 2/4; class 1: TP 2, FP 2, FN 1 → 2/5; class 2: TP 1, FN 1 → 1/2
    assert s["per_class_iou"] == pytest.approx([0.5, 0.4, 0.5])
    assert s["miou"] == pytest.approx((0.5 + 0.4 + 0.5) / 3)
    assert s["pixel_acc"] == pytest.approx(5 / 8)
    assert s["mean_acc"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 2) / 3)
    assert s["fwiou"] == pytest.approx(3 / 8 * 0.5 + 3 / 8 * 0.4 + 2 / 8 * 0.5)


def test_class_absent_from_gt_excluded_from_miou_but_reported():
    gt = np.array([[0, 0], [1, 1]])
    pred = np.array([[0, 2], [1, 1]])  # class 2 only predicted
    s = ConfusionMatrix(4).update(pred, gt).scores()
    assert s["per_class_iou"][:3] == pytest.approx([0.5, 1.0, 0.0])
    assert s["per_class_iou"][3] is None
    assert s["miou"] == pytest.approx((0.5 + 1.0) / 2)


def test_gt_out_of_range_skipped_and_merge():
    gt = np.array([0, 1, 5, 255])
    pred = np.array([0, 1, 1, 1])
    a = ConfusionMatrix(2).update(pred, gt)
    assert a.matrix.sum() == 2
    b = ConfusionMatrix(2).update(np.array([1]), np.array([0]))
    total = sum([a, b])
    assert total.matrix.tolist() == [[1, 1], [0, 1]]
    assert a.matrix.tolist() == [[1, 0], [0, 1]]  # operands unchanged


def test_shape_mismatch_and_bad_prediction():
    with pytest.raises(ValueError):
        ConfusionMatrix(2).update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError):
        ConfusionMatrix(2).update(np.array([2]), np.array([0]))


def test_report_and_csv_use_class_names():
    m = ConfusionMatrix(3).update(np.array([0, 1]), np.array([0, 1]))
    report = scores_report(m, ["background", "cat", "dog"], split="val")
    assert report["split"] == "val" and report["per_class_iou"] == {"background": 1.0, "cat": 1.0, "dog": None}
    assert per_class_csv(report).splitlines() == ["class,iou", "background,1.000000", "cat,1.000000", "dog,"]


def test_empty_matrix_scores_are_none():
    s = ConfusionMatrix(2).scores()
    assert s["miou"] is None and s["pixel_acc"] is None and s["per_class_iou"] == [None, None]


def test_ignore_in_prediction_is_a_false_negative():
    gt = np.array([0, 0, 1, 1])
    pred = np.array([0, 255, 1, 255])
    m = ConfusionMatrix(2).update(pred, gt)
    s = m.scores()
    assert s["per_class_iou"] == pytest.approx([0.5, 0.5])  # TP 1 of 2 GT pixels each, no FP
    assert s["pixel_acc"] == pytest.approx(0.5)
    merged = m + ConfusionMatrix(2).update(np.array([255]), np.array([1]))
    assert merged.undecided.tolist() == [1, 2]
    assert scores_report(merged, ["bg", "fg"])["undecided_pixels"] == 3


def test_confusion_plot_rows_give_each_present_class_its_rates():
    from wsss_core.metrics import confusion_plot_rows

    cm = ConfusionMatrix(3)
    # class 0: 6 pixels right, 2 as class 1 → 3/4, 1/4; class 1: 1 right → 1; class 2 absent
    cm.update(np.array([0, 0, 0, 0, 0, 0, 1, 1, 1]), np.array([0, 0, 0, 0, 0, 0, 0, 0, 1]))
    rows = confusion_plot_rows(cm, ("bg", "a", "b"), rows_per_class=8)
    counts = {}
    for row in rows:
        counts[(row["actual"], row["predicted"])] = counts.get((row["actual"], row["predicted"]), 0) + 1
    assert counts == {("bg", "bg"): 6, ("bg", "a"): 2, ("a", "a"): 8}
    # shares that do not divide evenly still add up to rows_per_class per class (1/3 each of 4)
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 1, 2]), np.array([0, 0, 0]))
    assert len(confusion_plot_rows(cm, ("bg", "a", "b"), rows_per_class=4)) == 4


def test_mean_average_precision_by_hand():
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.3, 0.6]])
    targets = np.array([[1, 0], [0, 1], [1, 0]])
    # class 0 ranked 0.9 (hit), 0.8, 0.3 (hit): AP (1 + 2/3) / 2; class 1: 0.7 hit first: 1
    assert mean_average_precision(scores, targets) == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)

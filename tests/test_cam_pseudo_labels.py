"""Image-level labels → classifier → CAMs → refined pseudo labels (pseudo_labels.source cams).

Hand-computed CAMs of a 1×1-conv classifier, the refinement rule per pixel, the compact CAM
storage, the label files, the three bad inputs, the no-op of the CAM stages for other sources,
and the whole path on a tiny VOC fixture (toy classifier) and on a tiny synthetic dataset
(method cam, a few iterations).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tests.conftest import make_voc_dataset
from wsss_core.cam.cams import multi_scale_cams
from wsss_core.cam.extract import split_class_labels, write_split_cams
from wsss_core.cam.refine import refine_cam_labels, refine_slots, slots_to_classes
from wsss_core.cam.store import load_cams, save_cams, stored_grid, write_manifest
from wsss_core.config import params_from_dict
from wsss_core.data.classes import write_class_labels
from wsss_core.data.datasets import voc_layout_split
from wsss_core.errors import DataError
from wsss_core.evaluate import score_folder
from wsss_core.io import IGNORE_INDEX, read_image, voc_palette


class LinearCam(nn.Module):
    """A 1×1-conv classifier (3 colours → K-1 classes) plus a fixed column ramp `ramp`·j on every
    class map, so that the map of a mirrored image is not the mirror of the map."""

    def __init__(self, weight: list[list[float]], ramp: float = 0.0):
        super().__init__()
        self.conv = nn.Conv2d(3, len(weight), 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor(weight).view(len(weight), 3, 1, 1))
        self.ramp = ramp

    def cams(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cam = self.conv(images)
        cam = cam + self.ramp * torch.arange(cam.shape[-1], dtype=cam.dtype)
        return cam, -cam


def _two_halves(size: int = 8) -> torch.Tensor:
    """(1, 3, 8, 8): red 1 in the top half, green 1 in the bottom half."""
    image = torch.zeros(1, 3, size, size)
    image[0, 0, : size // 2] = 1.0
    image[0, 1, size // 2:] = 1.0
    return image


@pytest.fixture
def one_thread(monkeypatch):
    """One CPU thread (the stages below are given threads=1 too): no stall of spinning threads
    on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- CAMs by hand
def test_cam_of_a_linear_classifier_by_hand():
    """Class 1 weighs red, class 2 green; the ramp 0.1·j. Flip merge: the mirror's map
    mirrored back is conv + 0.1·(7 - j), so the max is conv + 0.1·max(j, 7 - j); ReLU; min-max
    per class with +1e-5."""
    model = LinearCam([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], ramp=0.1)
    cams, _ = multi_scale_cams(model, _two_halves(), scales=(1.0,))
    j = np.arange(8)
    ramp = 0.1 * np.maximum(j, 7 - j)              # 0.7 0.6 0.5 0.4 0.4 0.5 0.6 0.7
    # class 1: top rows 1 + ramp, bottom rows ramp; min 0.4, max 1.7
    top, bottom = (1 + ramp - 0.4) / (1.3 + 1e-5), (ramp - 0.4) / (1.3 + 1e-5)
    assert cams.shape == (1, 2, 8, 8)
    np.testing.assert_allclose(cams[0, 0, 0].numpy(), top, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cams[0, 0, 7].numpy(), bottom, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cams[0, 1, 7].numpy(), top, rtol=1e-5, atol=1e-6)  # green mirrored
    assert cams[0, 0, 0, 0] == pytest.approx(1.3 / (1.3 + 1e-5))
    assert cams[0, 0, 7, 3] == 0.0
    # without the flip only the image's own map: ramp 0.1·j, min 0 at j = 0, max 1.7 at j = 7
    plain, _ = multi_scale_cams(model, _two_halves(), scales=(1.0,), flip=False)
    np.testing.assert_allclose(plain[0, 0, 0].numpy(), (1 + 0.1 * j) / (1.7 + 1e-5), rtol=1e-5)
    np.testing.assert_allclose(plain[0, 0, 7].numpy(), 0.1 * j / (1.7 + 1e-5), rtol=1e-5, atol=1e-6)


def test_selected_classes_equal_the_full_call_without_aux():
    """`classes` keeps those maps in the given order and `aux=False` drops the aux maps: the
    kept maps are the full call's bit for bit (every step after the forward is per map)."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 6, 3, padding=1)

    class TwoHeads(torch.nn.Module):
        def cams(self, x):
            raw = net(x)
            return raw, raw.flip(1)

    images = torch.randn(2, 3, 13, 17)
    full, full_aux = multi_scale_cams(TwoHeads(), images, scales=(1.0, 0.5, 1.5))
    kept, no_aux = multi_scale_cams(TwoHeads(), images, scales=(1.0, 0.5, 1.5), classes=[4, 1],
                                    aux=False)
    assert no_aux is None and kept.shape == (2, 2, 13, 17)
    assert torch.equal(kept, full[:, [4, 1]])
    _, kept_aux = multi_scale_cams(TwoHeads(), images, scales=(1.0, 0.5), flip=False, classes=[0])
    assert torch.equal(kept_aux, multi_scale_cams(TwoHeads(), images, scales=(1.0, 0.5),
                                                  flip=False)[1][:, [0]])


def test_negative_scores_are_cut_by_relu():
    """Class 2 = -red: -1 on the top half, 0 below; after ReLU all zeros → 0 / 1e-5 = 0."""
    model = LinearCam([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    cams, _ = multi_scale_cams(model, _two_halves(), scales=(1.0,))
    assert torch.all(cams[0, 1] == 0)
    np.testing.assert_allclose(cams[0, 0, :4].numpy(), 1 / (1 + 1e-5), rtol=1e-6)
    assert torch.all(cams[0, 0, 4:] == 0)


# --------------------------------------------------------------------------- refinement rule
# 4 pixels of an image with classes 3 and 8 (CAM vector per pixel)
PIXEL_CAMS = torch.tensor([[[0.9, 0.1, 0.45, 0.2]], [[0.2, 0.05, 0.3, 0.8]]])
KEYS = [3, 8]


def test_threshold_rule_with_and_without_an_ignore_band():
    blank = np.zeros((1, 4, 3), np.uint8)
    # band (0.25, 0.6): 0.9 → class 3; 0.1 <= 0.25 → 0; max 0.45 in the band → 255; 0.8 → 8
    slots = refine_slots(blank, PIXEL_CAMS, "none", (0.25, 0.6))
    assert slots.tolist() == [[1, 0, IGNORE_INDEX, 2]]
    assert slots_to_classes(slots, KEYS).tolist() == [[3, 0, 255, 8]]
    # one threshold 0.45 (low = high): a score equal to it is background
    assert slots_to_classes(refine_slots(blank, PIXEL_CAMS, "none", (0.45, 0.45)), KEYS).tolist() \
        == [[3, 0, 0, 8]]
    # no present class: all background
    assert refine_slots(blank, PIXEL_CAMS[:0], "none", (0.3, 0.6)).tolist() == [[0, 0, 0, 0]]


def test_par_on_a_flat_image_keeps_the_rule():
    """On a one-colour image PAR's kernel is uniform, so constant score planes stay constant
    (scaled alike): the labels are the plain rule's. 0.7 > high → the class; 0.5 in the band
    (0.3, 0.6) → 255; 0.2 <= low → 0."""
    flat = np.full((12, 12, 3), 90, np.uint8)
    for level, expected in ((0.7, 8), (0.5, 255), (0.2, 0)):
        cams = torch.stack([torch.full((12, 12), 0.1), torch.full((12, 12), level)])
        label = slots_to_classes(refine_slots(flat, cams, "par", (0.3, 0.6)), KEYS)
        assert np.all(label == expected), (level, np.unique(label))


def test_crf_follows_a_confident_cam_and_marks_the_band():
    pytest.importorskip("pydensecrf")
    image = np.zeros((10, 10, 3), np.uint8)
    image[:, 5:] = 200
    cams = torch.zeros(1, 10, 10)
    cams[:, :, 5:] = 0.95          # the bright half is class 3, strongly
    label = slots_to_classes(refine_slots(image, cams, "crf", (0.3, 0.6)), [3])
    assert np.all(label[:, 5:] == 3) and np.all(label[:, :5] == 0)
    cams[:, :, 5:] = 0.45          # between the planes: beats low, not high → ignored
    label = slots_to_classes(refine_slots(image, cams, "crf", (0.3, 0.6)), [3])
    assert np.all(label[:, 5:] == IGNORE_INDEX) and np.all(label[:, :5] == 0)


# --------------------------------------------------------------------------- storage
def test_compact_storage_round_trip(tmp_path):
    path = tmp_path / "x.npz"
    cams = torch.stack([torch.full((10, 13), 0.5), torch.full((10, 13), 0.25)])
    save_cams(path, cams, [4, 9], stride=4)
    with np.load(path) as data:
        assert data["cams"].dtype == np.float16 and data["cams"].shape == (2, 3, 4)
        assert data["keys"].tolist() == [4, 9] and data["size"].tolist() == [10, 13]
    back = load_cams(path, [4, 9], (10, 13))
    assert back.shape == (2, 10, 13) and back.dtype == torch.float32
    np.testing.assert_allclose(back[0].numpy(), 0.5, atol=1e-6)
    np.testing.assert_allclose(back[1].numpy(), 0.25, atol=1e-6)
    # stride 4 stores the mean of each 4×4 cell: an 8×8 map of 0/1 columns (1 at j = 1, 2, 7)
    columns = torch.tensor([0, 1, 1, 0, 0, 0, 0, 1], dtype=torch.float32).expand(1, 8, 8)
    save_cams(path, columns, [2], stride=4)
    with np.load(path) as data:
        np.testing.assert_array_equal(data["cams"][0], [[0.5, 0.25], [0.5, 0.25]])
    # stride 1: every pixel kept, to float16 precision
    ramp = torch.linspace(0, 1, 30).view(1, 5, 6)
    save_cams(path, ramp, [2], stride=1)
    np.testing.assert_array_equal(load_cams(path, [2], (5, 6)).numpy(),
                                  ramp.numpy().astype(np.float16).astype(np.float32))
    assert stored_grid((10, 13), 4) == (3, 4) and stored_grid((8, 8), 4) == (2, 2)


# --------------------------------------------------------------------------- bad input
def test_cams_of_the_wrong_shape_or_classes(tmp_path):
    path = tmp_path / "a1.npz"
    save_cams(path, torch.zeros(2, 10, 13), [4, 9], stride=4)
    with pytest.raises(DataError, match=r"a1.npz: CAMs of shape \(2, 3, 4\) for an image of "
                                        r"\(10, 13\) at stride 4; the image is \(12, 13\)"):
        load_cams(path, [4, 9], (12, 13))
    with pytest.raises(DataError, match=r"a1.npz: CAMs of classes \[4, 9\], but the image-level "
                                        r"labels are \[4\]"):
        load_cams(path, [4], (10, 13))
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="a1.npz: not a CAM file of the cams stage"):
        load_cams(path, [4, 9], (10, 13))


def test_image_label_file_missing_an_image(tmp_path, voc_root):
    split = voc_layout_split(voc_root, "train")
    labels = tmp_path / "cls_labels.json"
    write_class_labels(labels, {"a1": [3], "a3": [5]})
    with pytest.raises(DataError, match=r"cls_labels.json: no image-level label for id a2 of "
                                        r".*train_aug.txt"):
        split_class_labels(labels, split, 21)


def test_classifier_of_another_class_count(tmp_path, voc_root):
    split = voc_layout_split(voc_root, "train")
    model = LinearCam([[1.0, 0.0, 0.0]] * 5)  # 5 foreground classes, VOC has 20
    with pytest.raises(DataError, match="model.pth: the classifier has 5 foreground classes, "
                                        "the dataset 20"):
        write_split_cams(model, _unit_normalize, split, {i: [1] for i in split.ids}, 21,
                         [1.0], True, 4, tmp_path, torch.device("cpu"), Path("model.pth"))


def _unit_normalize(image: np.ndarray) -> np.ndarray:
    return (image.astype(np.float32) / 255.0).transpose(2, 0, 1).copy()


# --------------------------------------------------------------------------- tiny VOC, toy classifier
@pytest.mark.parametrize("num_classes", [21, 81], ids=["voc", "coco"])
def test_cam_to_labels_on_a_tiny_fixture(tmp_path, num_classes, one_thread):
    """make_voc_dataset draws one class in the centre box of noise images (VOC's 21 or COCO's
    81 classes): a toy classifier whose CAM of every class is that box gives labels that score
    1 on it; the PNGs are VOC palette images of 0, the image's class and 255."""
    root = tmp_path / "VOC2012"
    gts = make_voc_dataset(root, {"train": ["a1", "a2", "a3"]}, size=(20, 24),
                           num_classes=num_classes)
    split = voc_layout_split(root, "train")
    classes = {i: [int(c) for c in np.unique(g) if 0 < c < 255] for i, g in gts.items()}

    class BoxCam(nn.Module):  # the centre box (the GT's) lights every class map
        def cams(self, images):
            cam = torch.zeros(images.shape[0], num_classes - 1, *images.shape[-2:])
            h, w = images.shape[-2:]
            cam[:, :, h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1.0
            return cam, cam

    cam_dir = tmp_path / "cams"
    cam_dir.mkdir()
    assert write_split_cams(BoxCam(), _unit_normalize, split, classes, num_classes, [1.0], True,
                            1, cam_dir, torch.device("cpu"), Path("model.pth")) == 3
    refine = params_from_dict({"pseudo_labels": {"refine": {"method": "none", "low": 0.3,
                                                            "high": 0.6}}}).pseudo_labels.refine
    out = tmp_path / "labels"
    info = refine_cam_labels(cam_dir, split, classes, num_classes, refine, out)
    assert info["labels"] == 3
    for image_id in gts:
        png = Image.open(out / f"{image_id}.png")
        assert png.mode == "P" and png.size == (24, 20)
        palette = np.asarray(png.getpalette()).reshape(-1, 3)
        assert np.array_equal(palette[:num_classes], voc_palette()[:num_classes])
        values = set(np.unique(np.asarray(png)).tolist())
        assert values <= {0, classes[image_id][0], 255}
    matrix = score_folder(out, split, num_classes, "labels", n_jobs=1)
    assert matrix.scores()["miou"] == pytest.approx(1.0)


def test_dupl_cams_come_from_student_1(tmp_path, voc_root, one_thread):
    """The DuPL record's CAM hook: student 1 of the model, whose CAMs the cams stage stores."""
    from tests.tiny_training import CONFIGS
    from wsss_core.methods import create_method
    from wsss_core.methods.registry import get_method

    record = get_method("dupl")
    model = create_method("dupl", 21, CONFIGS["dupl"]).build_model().eval()
    student = record.cam_model(model)
    assert student is model.student(1)
    split = voc_layout_split(voc_root, "train")
    assert write_split_cams(student, record.normalize, split, {i: [2, 5] for i in split.ids}, 21,
                            [1.0], True, 4, tmp_path, torch.device("cpu"), Path("model.pth")) == 3
    image = torch.from_numpy(record.normalize(read_image(split.image_path("a1"))))[None]
    expected, _ = multi_scale_cams(student, image, [1.0])
    with np.load(tmp_path / "a1.npz") as data:
        assert data["keys"].tolist() == [2, 5] and data["cams"].shape == (2, 5, 6)
    np.testing.assert_allclose(load_cams(tmp_path / "a1.npz", [2, 5], (20, 24)).numpy(),
                               _stored_and_back(expected[0, [1, 4]], 4), atol=1e-3)


def _stored_and_back(cams: torch.Tensor, stride: int) -> np.ndarray:
    """What storing at `stride` keeps of `cams` (P, H, W): cell means in float16, upsampled."""
    import torch.nn.functional as F
    small = F.interpolate(cams[None], size=stored_grid(cams.shape[-2:], stride), mode="area")
    small = small.half().float()
    return F.interpolate(small, size=cams.shape[-2:], mode="bilinear", align_corners=False)[0].numpy()


# --------------------------------------------------------------------------- stages
def test_cam_stages_are_manifests_for_other_sources(tmp_path):
    """source simulate: both CAM stages only write a manifest saying they are unused; a model
    and the metrics of an earlier cams run are removed (its checkpoints stay for a resume)."""
    from wsss_core.pipeline.cam_classifier import train_cam_classifier
    from wsss_core.pipeline.cams import compute_cams
    from wsss_core.pipeline.paths import RunPaths

    params = params_from_dict({})
    paths = RunPaths.defaults(params, tmp_path)
    (paths.classifier / "checkpoints").mkdir(parents=True)
    (paths.classifier / "model.pth").write_bytes(b"old")
    (paths.classifier / "metrics/train").mkdir(parents=True)
    for run, folder in ((train_cam_classifier, paths.classifier), (compute_cams, paths.cams)):
        assert run(params, paths)["used"] is False
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["used"] is False and manifest["source"] == "simulate"
    assert sorted(p.name for p in paths.classifier.iterdir()) == ["checkpoints", "manifest.json"]
    assert sorted(p.name for p in paths.cams.iterdir()) == ["manifest.json"]


def test_refine_from_cams_made_for_another_source_is_an_error(tmp_path, capsys):
    """One line `error: <file>: <problem>`, exit 2, no labels published."""
    from wsss_core.cli import run_stage
    from wsss_core.pipeline.paths import RunPaths
    from wsss_core.pipeline.pseudo_labels import publish_pseudo_labels

    params = params_from_dict({"pseudo_labels": {"source": "cams"}})
    paths = RunPaths.defaults(params, tmp_path)
    make_voc_dataset(paths.synthetic_root, {"train": ["a1"]})
    write_manifest(_mkdir(paths.cams), {"used": False, "source": "simulate"})
    with pytest.raises(SystemExit) as exit_info:
        run_stage(lambda: publish_pseudo_labels(params, paths))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {paths.cams / 'manifest.json'}: CAMs made for pseudo_labels.source 'simulate', "
        "not 'cams' (run the cams stage)")
    assert not paths.pseudo_labels.exists()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def test_source_cams_on_a_tiny_synthetic_dataset(tmp_path, one_thread):
    """The pipeline functions of stages cam_classifier → cams → pseudo_labels with method cam
    (3 iterations, 4 images): every train image gets stored CAMs of its classes and a label that the
    evaluate_pseudo_labels scoring accepts; a classifier of another class count is refused."""
    from wsss_core.io import read_json
    from wsss_core.pipeline.cam_classifier import train_cam_classifier
    from wsss_core.pipeline.cams import compute_cams
    from wsss_core.pipeline.evaluate import score_pseudo_labels
    from wsss_core.pipeline.paths import RunPaths
    from wsss_core.pipeline.prepare import prepare_data
    from wsss_core.pipeline.pseudo_labels import publish_pseudo_labels

    params = params_from_dict({
        "data": {"synthetic": {"num_train": 4, "num_val": 2, "min_size": 32, "max_size": 40}},
        "pseudo_labels": {
            "source": "cams",
            "classifier": {"iterations": 3, "batch_size": 2, "crop": 32, "checkpoint_every": 3,
                           "log_every": 1, "device": "cpu"},
            "cam": {"scales": [1.0], "stride": 2},
            "refine": {"method": "par", "low": 0.3, "high": 0.6}}})
    paths = RunPaths.defaults(params, tmp_path)
    prepare_data(params, paths)
    summary = train_cam_classifier(params, paths, threads=1)
    assert summary["iterations"] == 3 and (paths.classifier / "model.pth").is_file()
    assert (paths.classifier / "checkpoints/checkpoint_3.pth").is_file()
    manifest = compute_cams(params, paths, threads=1)
    assert manifest["images"] == 4 and manifest["method"] == "cam"
    labels = read_json(paths.class_labels)
    for npz in sorted(paths.cams.glob("*.npz")):
        with np.load(npz) as data:
            assert data["keys"].tolist() == labels[npz.stem]
    assert publish_pseudo_labels(params, paths)["labels"] == 4
    report = score_pseudo_labels(params, paths)
    assert 0.0 <= report["miou"] <= 1.0
    config = read_json(paths.classifier / "config.json")
    (paths.classifier / "config.json").write_text(json.dumps({**config, "num_classes": 81}))
    with pytest.raises(DataError, match="config.json: the classifier was trained for 81 "
                                        "classes, dataset 'synthetic' has 21"):
        compute_cams(params, paths)
    write_manifest(paths.classifier, {"used": True, "source": "dupl", "method": "dupl"})
    with pytest.raises(DataError, match="cam_classifier/manifest.json: a classifier made for "
                                        "pseudo_labels.source 'dupl', not 'cams'"):
        compute_cams(params, paths)

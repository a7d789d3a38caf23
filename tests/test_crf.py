"""DenseCRF refinement: the kernel call, resumption, input errors, palette PNGs, VOC test export."""
import io
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from tests.conftest import REPO, copy_repo, make_voc_dataset, run_script
from wsss_core.config import CrfParams, params_from_dict
from wsss_core.crf import (
    CRF_PRESETS,
    CrfSettings,
    check_logits_grid,
    crf_settings,
    dense_crf,
    export_voc_test,
    refine_split,
    upsampled_softmax,
    wrapped_mean_subtracted,
    write_overlays,
)
from wsss_core.data.datasets import voc_layout_split
from wsss_core.errors import ConfigError, DataError
from wsss_core.evaluate import upsample_bilinear
from wsss_core.io import read_image, read_label, voc_palette
from wsss_core.logits_io import write_logits
from wsss_core.methods import get_method
from wsss_core.metrics import ConfusionMatrix

pytest.importorskip("pydensecrf")

NUM_CLASSES = 4
SIZE = (24, 32)          # image H, W
GRID = (4, 5)            # DeepLab v2 stride-8 logits of a 24x32 image
VAL_IDS = ["v1", "v2", "v3", "v4"]


def _fixture_logits(gt: np.ndarray, seed: int) -> np.ndarray:
    """Noisy logits on the stride-8 grid that roughly agree with the GT (so the CRF has work)."""
    rng = np.random.default_rng(seed)
    rows = (np.arange(GRID[0]) + 0.5) * SIZE[0] / GRID[0]
    cols = (np.arange(GRID[1]) + 0.5) * SIZE[1] / GRID[1]
    coarse = gt[rows.astype(int)][:, cols.astype(int)].astype(np.int64)
    coarse[coarse == 255] = 0
    logits = 2.0 * np.eye(NUM_CLASSES)[coarse].transpose(2, 0, 1)
    return (logits + rng.normal(0, 1.0, logits.shape)).astype(np.float32)


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "VOC2012"
    gts = make_voc_dataset(root, {"val": VAL_IDS, "test": ["t1", "t2"]}, size=SIZE,
                           num_classes=NUM_CLASSES)
    logits_dir = tmp_path / "logits"
    for seed, image_id in enumerate(VAL_IDS):
        write_logits(logits_dir / "val" / f"{image_id}.npy", _fixture_logits(gts[image_id], seed))
    for seed, image_id in enumerate(["t1", "t2"]):
        write_logits(logits_dir / "test" / f"{image_id}.npy", _fixture_logits(gts[image_id], 10 + seed))
    return {"root": root, "gts": gts, "logits": logits_dir, "tmp": tmp_path,
            "val": voc_layout_split(root, "val"), "test": voc_layout_split(root, "test")}


def _direct_pydensecrf(image, prob, s):
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax
    c, h, w = prob.shape
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(prob)))
    d.addPairwiseGaussian(sxy=s.pos_xy_std, compat=s.pos_w)
    d.addPairwiseBilateral(sxy=s.bi_xy_std, srgb=s.bi_rgb_std, rgbim=np.array(image, order="C"),
                           compat=s.bi_w)
    return np.array(d.inference(s.iter_max)).reshape(c, h, w)


# --------------------------------------------------------------------------- the kernel
_FAULTS_CHILD = """
import ctypes, resource, sys
from wsss_core.crf import keep_freed_memory
kept = sys.argv[1] == "kept" and keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20                       # over glibc's largest mmap threshold (32 MB)
faults = []
for _ in range(2):                    # a block written in full, freed, then again
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    libc.free(block)
print(kept, faults[0], faults[1])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_freed_memory_is_reused_without_page_faults():
    # a fresh process per setting: the allocator setting is per process and cannot be undone
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", _FAULTS_CHILD, mode], check=True, text=True,
                             capture_output=True, cwd=REPO).stdout.split()
        return out[0] == "True", int(out[1]), int(out[2])

    # relative to the first write's faults: transparent huge pages would make both counts small
    kept, first, again = faults("kept")
    assert kept and first > 0 and again < first / 10      # the freed block is reused
    _, first, again = faults("default")
    assert first > 0 and again >= first / 2              # unmapped, and faulted in again


@pytest.mark.parametrize("preset", ["deeplab", "dupl"])
def test_dense_crf_equals_direct_pydensecrf_call(preset):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    logits = rng.normal(0, 2, (NUM_CLASSES, *SIZE)).astype(np.float32)
    prob = torch.softmax(torch.from_numpy(logits), 0).numpy()
    q = dense_crf(image, prob, CRF_PRESETS[preset])
    assert q.shape == (NUM_CLASSES, *SIZE) and q.dtype == np.float32
    np.testing.assert_array_equal(q, _direct_pydensecrf(image, prob, CRF_PRESETS[preset]))
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-5)
    # the CRF does change this noisy map, and the two kernels differ
    assert (q.argmax(0) != prob.argmax(0)).any()


def test_presets_follow_method_and_overrides():
    assert CRF_PRESETS["deeplab"] == CrfSettings(10, 3, 1, 4, 67, 3)
    assert CRF_PRESETS["dupl"] == CrfSettings(10, 1, 1, 4, 121, 5)
    def own(method):  # the kernel `crf.preset: auto` takes: the method record's
        return get_method(method).crf_preset

    for method in ("baseline", "cdl_b", "cdl_e"):
        assert crf_settings(CrfParams(), own(method)) == CRF_PRESETS["deeplab"]
    assert crf_settings(CrfParams(), own("dupl")) == CRF_PRESETS["dupl"]
    assert crf_settings(CrfParams(preset="dupl"), own("cdl_b")) == CRF_PRESETS["dupl"]
    custom = crf_settings(CrfParams(bi_rgb_std=13.0, iter_max=5), own("cdl_e"))
    assert custom == CrfSettings(5, 3, 1, 4, 67, 13.0)


@pytest.mark.parametrize("crf, message", [
    ({"bi_rgb_std": 0}, "crf.bi_rgb_std: must be > 0"),
    ({"iter_max": 0}, "crf.iter_max: must be >= 1"),
    ({"preset": "cdl"}, "crf.preset: expected one of 'auto', 'deeplab', 'dupl'"),
    ({"n_jobs": 0}, "crf.n_jobs: must be -1"),
])
def test_crf_params_are_validated(crf, message):
    with pytest.raises(ConfigError, match=message):
        params_from_dict({"crf": crf})


def test_wrapped_mean_image_as_cdl_casts_it():
    # RGB minus (122.675, 116.669, 104.008), truncated toward zero, modulo 256
    image = np.array([[[119, 255, 104], [0, 0, 0], [255, 116, 105]]], np.uint8)
    expected = np.array([[[253, 138, 0], [134, 140, 152], [132, 0, 0]]], np.uint8)
    np.testing.assert_array_equal(wrapped_mean_subtracted(image), expected)
    assert wrapped_mean_subtracted(image).dtype == np.uint8


@pytest.mark.parametrize("grid, size", [(GRID, SIZE), ((48, 63), (375, 500)), ((3, 3), (3, 3))])
def test_upsampling_matches_torch_bilinear_then_softmax(grid, size):
    logits = np.random.default_rng(2).normal(0, 3, (NUM_CLASSES, *grid)).astype(np.float32)
    logits = logits.astype(np.float16).astype(np.float32)  # as stored
    torch_up = F.interpolate(torch.from_numpy(logits)[None], size=size, mode="bilinear",
                             align_corners=False)[0]
    # same operation order and fused multiply-adds as torch's CPU kernel
    np.testing.assert_allclose(upsample_bilinear(logits, size), torch_up.numpy(), rtol=0, atol=1e-6)
    prob = upsampled_softmax(logits, size)
    np.testing.assert_allclose(prob, torch.softmax(torch_up, 0).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(prob.argmax(0), torch_up.numpy().argmax(0))


@pytest.mark.parametrize("grid, image, ok", [
    ((48, 63), (375, 500), True),     # DeepLab v2, stride 8
    ((23, 31), (375, 500), True),     # ViT, stride 16 (floor)
    ((375, 500), (375, 500), True),   # full resolution
    ((4, 5), (24, 32), True),
    ((1, 1), (24, 32), True),
    ((63, 48), (375, 500), False),    # transposed
    ((25, 32), (24, 32), False),      # finer than the image
    ((10, 5), (24, 32), False),       # another aspect ratio
    ((48, 48), (375, 500), False),
])
def test_logits_grid_rule(grid, image, ok):
    if ok:
        check_logits_grid(grid, image, "x.npy")
    else:
        with pytest.raises(DataError, match=r"^x\.npy: logits grid"):
            check_logits_grid(grid, image, "x.npy")


# --------------------------------------------------------------------------- a split
def _expected_matrices(ds, settings):
    crf, plain = ConfusionMatrix(NUM_CLASSES), ConfusionMatrix(NUM_CLASSES)
    for image_id in VAL_IDS:
        logits = np.load(ds["logits"] / "val" / f"{image_id}.npy").astype(np.float32)
        prob = upsampled_softmax(logits, SIZE)
        image = read_image(ds["root"] / "JPEGImages" / f"{image_id}.jpg")
        crf.update(_direct_pydensecrf(image, prob, settings).argmax(0), ds["gts"][image_id])
        plain.update(prob.argmax(0), ds["gts"][image_id])
    return crf, plain


def test_refine_split_writes_palette_pngs_and_scores(dataset):
    settings = CRF_PRESETS["deeplab"]
    out = dataset["tmp"] / "pred"
    result = refine_split(dataset["val"], dataset["logits"] / "val", out, NUM_CLASSES, settings,
                          n_jobs=1)
    crf, plain = _expected_matrices(dataset, settings)
    np.testing.assert_array_equal(result.crf.matrix, crf.matrix)
    np.testing.assert_array_equal(result.no_crf.matrix, plain.matrix)
    assert result.images == 4 and result.reused == 0
    assert not np.array_equal(crf.matrix, plain.matrix)  # the CRF did something
    assert sorted(p.name for p in out.iterdir()) == [f"{i}.png" for i in VAL_IDS]
    # palette PNG: the index is the class id, the palette is VOC's
    img = Image.open(out / "v1.png")
    assert img.mode == "P" and img.size == (SIZE[1], SIZE[0])
    assert np.array_equal(np.asarray(img.getpalette(), np.uint8).reshape(-1, 3)[:NUM_CLASSES],
                          voc_palette()[:NUM_CLASSES])
    # matrices re-scored from the PNGs give the same numbers
    again = ConfusionMatrix(NUM_CLASSES)
    for image_id in VAL_IDS:
        again.update(read_label(out / f"{image_id}.png", NUM_CLASSES), dataset["gts"][image_id])
    np.testing.assert_array_equal(again.matrix, result.crf.matrix)


def test_wrapped_mean_flag_changes_the_bilateral_image(dataset):
    settings = CRF_PRESETS["deeplab"]
    image_id = "v2"
    image = read_image(dataset["root"] / "JPEGImages" / f"{image_id}.jpg")
    logits = np.load(dataset["logits"] / "val" / f"{image_id}.npy").astype(np.float32)
    prob = upsampled_softmax(logits, SIZE)
    expected = _direct_pydensecrf(wrapped_mean_subtracted(image), prob, settings).argmax(0)
    out = dataset["tmp"] / "wrapped"
    refine_split(dataset["val"], dataset["logits"] / "val", out, NUM_CLASSES, settings,
                 ids=[image_id], wrapped_mean=True, n_jobs=1)
    np.testing.assert_array_equal(read_label(out / f"{image_id}.png"), expected)


def test_resume_after_killed_run_gives_the_same_scores(dataset):
    settings, val = CRF_PRESETS["deeplab"], dataset["val"]
    logits = dataset["logits"] / "val"
    full = refine_split(val, logits, dataset["tmp"] / "a", NUM_CLASSES, settings, n_jobs=1)

    out = dataset["tmp"] / "b"
    # a run that dies on its 4th image (bad logits): the first three are journalled
    good_v4 = np.load(logits / "v4.npy")
    write_logits(logits / "v4.npy", good_v4.transpose(0, 2, 1))
    with pytest.raises(DataError, match="v4.npy: logits grid"):
        refine_split(val, logits, out, NUM_CLASSES, settings, n_jobs=1)
    write_logits(logits / "v4.npy", good_v4)
    (out / "v1.png").unlink()                                     # lost
    data = (out / "v2.png").read_bytes()
    (out / "v2.png").write_bytes(data[: len(data) // 2])          # truncated
    (out / "v4.png").write_bytes((dataset["root"] / "SegmentationClassAug/v4.png").read_bytes())
    resumed = refine_split(val, logits, out, NUM_CLASSES, settings, n_jobs=1)
    assert resumed.reused == 1                                    # only v3 was kept
    np.testing.assert_array_equal(resumed.crf.matrix, full.crf.matrix)
    np.testing.assert_array_equal(resumed.no_crf.matrix, full.no_crf.matrix)
    for image_id in VAL_IDS:
        expected = (dataset["tmp"] / "a" / f"{image_id}.png").read_bytes()
        assert (out / f"{image_id}.png").read_bytes() == expected

    # a finished run is fully reused; other CRF settings or rewritten logits are not
    assert refine_split(val, logits, out, NUM_CLASSES, settings, n_jobs=1).reused == 4
    assert refine_split(val, logits, out, NUM_CLASSES, CRF_PRESETS["dupl"], n_jobs=1).reused == 0
    write_logits(logits / "v4.npy", -good_v4)
    assert refine_split(val, logits, out, NUM_CLASSES, CRF_PRESETS["dupl"], n_jobs=1).reused == 3
    assert sorted(p.name for p in out.iterdir()) == [f"{i}.png" for i in VAL_IDS]  # journal beside


def test_parallel_run_equals_sequential(dataset):
    settings, val, logits = CRF_PRESETS["dupl"], dataset["val"], dataset["logits"] / "val"
    seq = refine_split(val, logits, dataset["tmp"] / "s", NUM_CLASSES, settings, n_jobs=1)
    par = refine_split(val, logits, dataset["tmp"] / "p", NUM_CLASSES, settings, n_jobs=2)
    np.testing.assert_array_equal(seq.crf.matrix, par.crf.matrix)
    np.testing.assert_array_equal(seq.no_crf.matrix, par.no_crf.matrix)


def _transposed(ds):
    path = ds["logits"] / "val" / "v3.npy"
    write_logits(path, np.load(path).transpose(0, 2, 1)[:, :, :4])


@pytest.mark.parametrize("breakage, message", [
    (lambda ds: [p.unlink() for p in (ds["logits"] / "val").glob("*.npy")],
     r"logits/val: no logits \(<id>\.npy or \.npz\) found; run the infer stage first"),
    (lambda ds: (ds["logits"] / "val" / "v2.npy").unlink(), r"logits/val: 1 of 4 logits missing \(v2\.npy\)"),
    (lambda ds: (ds["root"] / "JPEGImages" / "v4.jpg").unlink(), r"JPEGImages: 1 of 4 images missing \(v4\.jpg\)"),
    (lambda ds: (ds["root"] / "SegmentationClassAug" / "v1.png").unlink(),
     r"SegmentationClassAug: 1 of 4 ground-truth labels missing \(v1\.png\)"),
    (_transposed, r"v3\.npy: logits grid 5x4 \(h x w\) does not fit its image 24x32"),
    (lambda ds: write_logits(ds["logits"] / "val" / "v1.npy", np.zeros((3, *GRID))),
     r"v1\.npy: logits have shape \(3, 4, 5\); expected \(4, h, w\)"),
])
def test_bad_inputs_are_clear_errors(dataset, breakage, message):
    breakage(dataset)
    with pytest.raises(DataError, match=message):
        refine_split(dataset["val"], dataset["logits"] / "val", dataset["tmp"] / "out", NUM_CLASSES,
                     CRF_PRESETS["deeplab"], n_jobs=1)


def test_overlays_are_four_panels(dataset):
    out, pred = dataset["tmp"] / "overlays", dataset["tmp"] / "pred"
    refine_split(dataset["val"], dataset["logits"] / "val", pred, NUM_CLASSES, CRF_PRESETS["deeplab"],
                 n_jobs=1)
    write_overlays(dataset["val"], dataset["logits"] / "val", pred, ["v1", "v2"], out, NUM_CLASSES)
    assert sorted(p.name for p in out.iterdir()) == ["v1.png", "v2.png"]
    panel = read_image(out / "v1.png")
    assert panel.shape == (SIZE[0], 4 * SIZE[1] + 3 * 4, 3)
    crf_panel = panel[:, 3 * (SIZE[1] + 4):]
    np.testing.assert_array_equal(crf_panel, voc_palette()[read_label(pred / "v1.png")])


# --------------------------------------------------------------------------- VOC test server
def _tar_members(archive):
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()}


@pytest.mark.parametrize("with_crf", [True, False])
def test_export_voc_test_layout_and_round_trip(dataset, with_crf):
    settings = CRF_PRESETS["deeplab"] if with_crf else None
    archive = dataset["tmp"] / "results" / "test.tar.gz"
    png_dir, result = export_voc_test(dataset["test"], dataset["logits"] / "test", dataset["tmp"],
                                      archive, settings, n_jobs=1, num_classes=NUM_CLASSES)
    assert png_dir == dataset["tmp"] / "results/VOC2012/Segmentation/comp6_test_cls"
    assert result.crf is None and result.images == 2
    members = _tar_members(archive)
    server = "results/VOC2012/Segmentation/comp6_test_cls"
    assert {n for n, d in members.items() if d is not None} == {f"{server}/t1.png", f"{server}/t2.png"}
    for image_id in ("t1", "t2"):
        logits = np.load(dataset["logits"] / "test" / f"{image_id}.npy").astype(np.float32)
        prob = upsampled_softmax(logits, SIZE)
        if with_crf:
            image = read_image(dataset["root"] / "JPEGImages" / f"{image_id}.jpg")
            expected = _direct_pydensecrf(image, prob, settings).argmax(0)
        else:
            expected = prob.argmax(0)
        packed = Image.open(io.BytesIO(members[f"{server}/{image_id}.png"]))
        assert packed.mode == "P"
        np.testing.assert_array_equal(np.asarray(packed), expected)
        np.testing.assert_array_equal(read_label(png_dir / f"{image_id}.png"), expected)
    # deterministic archive: exporting again (predictions reused) gives identical bytes
    first = archive.read_bytes()
    export_voc_test(dataset["test"], dataset["logits"] / "test", dataset["tmp"], archive, settings,
                    n_jobs=1, num_classes=NUM_CLASSES)
    assert archive.read_bytes() == first


# --------------------------------------------------------------------------- stage scripts
@pytest.mark.slow
def test_crf_and_export_stage_scripts(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    root = repo / "voc" / "VOC2012"
    ids = {"val": ["v1", "v2"], "test": ["t1"]}
    gts = make_voc_dataset(root, ids, size=SIZE, num_classes=21)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params.update(dataset="voc12", method="dupl")
    params["data"]["voc12"]["root"] = "voc/VOC2012"
    params["pseudo_labels"] = {"name": "x", "source": "files", "path": "labels"}
    params["crf"] = {"n_jobs": 1, "overlays": 1}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for split, split_ids in ids.items():
        for image_id in split_ids:
            logits = np.random.default_rng(0).normal(size=(21, *GRID))
            logits[0] += 2.0
            write_logits(repo / "data/logits/dupl" / split / f"{image_id}.npy", logits)

    proc = run_script(repo, "stages/crf.py", check=True)
    assert "crf: mIoU" in proc.stdout
    report = yaml.safe_load((repo / "metrics/scores_crf.json").read_text())
    assert report["crf"] is True and report["split"] == "val" and report["method"] == "dupl"
    assert 0 <= report["miou"] <= 1 and report["miou_no_crf"] is not None
    assert (repo / "metrics/scores_crf_per_class.csv").read_text().startswith("class,iou\n")
    assert sorted(p.name for p in (repo / "metrics/plots/overlays").iterdir()) == ["v1.png"]
    assert sorted(p.name for p in (repo / "data/predictions/dupl/val").iterdir()) == ["v1.png", "v2.png"]
    assert gts  # GT existed for scoring

    run_script(repo, "stages/export_voc_test.py", check=True)
    members = _tar_members(repo / "results/voc2012_test_dupl.tar.gz")
    assert "results/VOC2012/Segmentation/comp6_test_cls/t1.png" in members

    write_logits(repo / "data/logits/dupl/val/v2.npy", np.zeros((21, 5, 4)))
    proc = run_script(repo, "stages/crf.py")
    assert proc.returncode == 2
    # workers get absolute paths (joblib reuses processes whose working directory may differ)
    message = proc.stderr.strip()
    assert message.startswith("error: ") and "data/logits/dupl/val/v2.npy: logits grid 5x4" in message
    assert len(proc.stderr.strip().splitlines()) == 1

"""Scale rehearsal (issue #21): every CPU stage of the pipeline on synthetic data at the real
counts and image sizes of VOC 2012 + SBD and COCO 2014, with DVC timings, in one command.

    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/scale.py [--dataset voc12|coco14|both]
        [--full] [--stages prepare,crf,dvc,...] [--out metrics/scale.json] [--work DIR]

Writes `--out` (default metrics/scale.json, a plain output, not a DVC metric), per dataset:

    {"train_images", "val_images", "image_size" ([[H, W], [W, H]]: both orientations),
     "num_classes",
     "stages": {"<stage>": {"n", "s_per_image", "speedup_2_cores", "rss_mib", "rss_ratio",
                            "disk_bytes_per_image"}},
     "pseudo_labels": {"files", "dvc_add_s", "dvc_push_s", "dvc_pull_s", "dvc_status_s"},
     "logits": {same},
     "projection": {"<stage>": {"core_hours", "hours_on_16_cores", "hours_on_4x16_cores"}}}

Data (benchmarks/scale_data.py): images of the real sizes (VOC 500×375, COCO 640×480, a third
portrait), VOC with < 2 categories per image, COCO with ≈ 3.5 of 80 classes (person in half, a
long tail), rendered once into a pool of distinct samples before anything is timed; the
dataset's ids are hard links to the pool, so the real counts cost neither disk nor time.

Stages: the project's own functions, each run in a fresh child process per (count, n_jobs), so
its peak RSS (VmHWM of the child, or of a process it waited for) is that run's; only
the stage call is timed (not the interpreter start or the fixtures):

- prepare: `pipeline.prepare.prepare_dataset` (VOC: checks every image and GT and derives the
  image-level labels; COCO: also `data.coco.convert_coco` from a COCO-format instances JSON of
  polygons); n counts train + val images, in the real ratio;
- pseudo_labels: `data.pseudo_labels.ingest_pseudo_labels` (validate + publish a folder of
  exactly n label PNGs; serial by design);
- cams: `cam.extract.write_split_cams` (multi-scale + flip CAMs, `cam.store.save_cams`);
- cam_refine: `cam.refine.refine_cam_labels` with params.yaml's `pseudo_labels.refine`
  (DenseCRF over the present classes; joblib workers);
- infer: `infer.infer_logits`, writing VOC's logits full and COCO's compact, as the logits
  set below (n_jobs = torchrun ranks, emulated by forked processes of rank r
  of n_jobs, each with one thread);
- crf: `crf.refine_split` (deeplab kernel, all 21/81 labels, as the crf stage);
- evaluate: `evaluate.score_folder` of label PNGs (the crf/evaluate stages' scoring);
- evaluate_logits: `evaluate.score_folder` of logits (the infer stage's no-CRF scores).

cams and infer use a tiny network built here (a stride-2 3×3 conv, average pooling to
DeepLab's stride-8 grid, a 1×1 conv): their cost is the stage's I/O and post-processing, not
the real network's FLOPs (which runs on GPUs and is not measured here). Their projections carry
a `source` key saying so.

Figures: `s_per_image` = seconds / images at the largest count with n_jobs=1 (one core: the
child's CPU affinity and BLAS threads are set to n_jobs); `speedup_2_cores` = time(n_jobs=1) /
time(n_jobs=2) at the largest count; `rss_mib` per count at n_jobs=1, `rss_ratio` = last /
first (≤ 1.15: flat); `disk_bytes_per_image` = bytes the stage wrote / images.
`projection`: core_hours = s_per_image × the dataset's images (train + val for prepare, train
for pseudo_labels/cams/cam_refine, val for the rest) / 3600; hours on k cores (16, and 64 = 4
machines × 16) = core_hours / k for the stages that spread images over workers by design
(threads, joblib/dask workers, torchrun ranks), and core_hours for the two that run one image
after the other in one process (pseudo_labels' ingestion; cams, whose one process only gets
torch's intra-op threads). Ideal scaling, not the measured `speedup_2_cores`: on a shared
2-core machine that figure says more about the other load than about the code (compare it
with 2 on an idle machine before trusting a projection). GPU stages (training, the real
networks' inference) are not projected.

DVC: in a scratch git + DVC repository with a local remote (`dvc remote add -d`), the venv's
`dvc` times `dvc add <folder>`, `dvc push`, `dvc pull` in a fresh `git clone`, and `dvc status`
after one file changed, for a folder of distinct pseudo-label PNGs (the train count) and of
float16 stride-8 logits (the val count) in the form the dataset's users store: full `.npy` for VOC,
compact `.npz` of the top 8 classes per cell for COCO (`infer.logits: compact`; full COCO val
logits would be 31 GB). When the disk cannot hold the logits
set 5× (workspace, cache, remote, the clone's), the cache type becomes hardlink (3×), and if
that does not fit either the set is cut to what fits (printed; `files` says how many).

Counts: the default quick mode is a smoke run (cheap stages 32 and 128 images, medium 16 and
64, heavy 4 and 8; DVC sets of 1,000 labels and 200 logits files). `--full`: cheap stages
(prepare, pseudo_labels, evaluate) at 1/8 of and at the full count, infer/evaluate_logits at 64
and 512, cams/cam_refine/crf at 16 and 64, the DVC sets at the real counts (10,582 / 82,081
labels, 1,449 / 40,137 logits): 103 min on a quiet 2-core machine, and ≈ 25 GB of scratch disk
(the 5 GB COCO logits set is copied into cache, remote and clone). Other load on the machine
skews the 1-core and 2-core timings alike: run it alone.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.scale_data import (  # noqa: E402
    DATASETS,
    LOGITS,
    DatasetSpec,
    Pool,
    deeplab_grid,
    link_files,
    replace_one_file,
    write_coco_json,
    write_lists,
    write_unique_logits,
    write_unique_pngs,
)
from wsss_core.io import write_json  # noqa: E402

STAGES = ("prepare", "pseudo_labels", "cams", "cam_refine", "infer", "crf", "evaluate",
          "evaluate_logits")
WEIGHT = {"prepare": "cheap", "pseudo_labels": "cheap", "evaluate": "cheap",
          "infer": "medium", "evaluate_logits": "medium",
          "cams": "heavy", "cam_refine": "heavy", "crf": "heavy"}
PROJECTED_IMAGES = {"prepare": "all", "pseudo_labels": "train", "cams": "train",
                    "cam_refine": "train", "infer": "val", "crf": "val", "evaluate": "val",
                    "evaluate_logits": "val"}
SERIAL = ("pseudo_labels", "cams")   # one image after the other in one process, by design
TINY_MODEL = "tiny network: the stage's I/O and post-processing, not the real network's cost"
QUICK = {"cheap": [32, 128], "medium": [16, 64], "heavy": [4, 8]}
FULL_FIXED = {"medium": [64, 512], "heavy": [16, 64]}
QUICK_DVC = (1000, 200)
POOL = 256


def log(message: str) -> None:
    print(f"[scale] {message}", flush=True)


def sig(value: float, digits: int = 6) -> float:
    return float(f"{value:.{digits}g}")


# --------------------------------------------------------------------------- layout
class Layout:
    """Where one dataset's synthetic files, fixtures and runs live under the work folder."""

    def __init__(self, work: Path, spec: DatasetSpec):
        self.spec, self.root = spec, Path(work) / spec.name
        self.data, self.pool = self.root / "data", self.root / "pool"
        self.lists, self.fixtures, self.runs = self.data / "lists", self.root / "fixtures", self.root / "runs"

    def image_dir(self, split: str) -> Path:
        if self.spec.name == "coco14":
            return self.data / ("train2014" if split == "train" else "val2014")
        return self.data / "JPEGImages"

    def gt_dir(self, split: str) -> Path:
        if self.spec.name == "coco14":
            return self.data / "SegmentationClass" / ("train2014" if split == "train" else "val2014")
        return self.data / "SegmentationClassAug"

    def ids(self, split: str, n: int) -> list[str]:
        make = self.spec.train_id if split == "train" else self.spec.val_id
        return [make(i) for i in range(n)]

    def list_file(self, split: str, n: int) -> Path:
        return self.lists / f"{split}_{n}.txt"

    def split(self, split: str, n: int):
        from wsss_core.data.datasets import Split

        return Split(split, self.list_file(split, n), self.image_dir(split), self.gt_dir(split))

    def json_file(self, split: str, n: int) -> Path:
        return self.data / "annotations" / f"{split}_{n}.json"


def prepare_split_counts(spec: DatasetSpec, total: int) -> tuple[int, int]:
    """train, val images of a prepare run over `total` images, in the dataset's ratio."""
    val = max(1, round(total * spec.val_images / (spec.train_images + spec.val_images)))
    return max(1, total - val), val


def stage_images(spec: DatasetSpec, stage: str) -> int:
    which = PROJECTED_IMAGES[stage]
    return {"all": spec.train_images + spec.val_images, "train": spec.train_images,
            "val": spec.val_images}[which]


def plan_counts(spec: DatasetSpec, stage: str, args) -> list[int]:
    weight = WEIGHT[stage]
    given = getattr(args, f"{weight}_counts")
    if given:
        return sorted(set(given))
    if not args.full:
        return QUICK[weight]
    if weight == "cheap":
        full = stage_images(spec, stage)
        return [max(1, full // 8), full]
    return FULL_FIXED[weight]


# --------------------------------------------------------------------------- fixtures
def build_fixtures(layout: Layout, plan: dict[str, list[int]], pool_size: int, scale: float) -> Pool:
    """Pool, images, GT, id lists and each stage's inputs, for the counts of `plan`."""
    spec = layout.spec
    need = {"train": 1, "val": 1}
    for stage, counts in plan.items():
        for n in counts:
            if stage == "prepare":
                train, val = prepare_split_counts(spec, n)
                need["train"], need["val"] = max(need["train"], train), max(need["val"], val)
            else:
                which = PROJECTED_IMAGES[stage]
                need[which] = max(need[which], n)
    started = time.perf_counter()
    pool = Pool(spec, layout.pool, min(pool_size, max(need.values())), scale=scale)
    offset = {"train": 0, "val": pool.size // 2}     # val draws other samples than train
    for split, n in need.items():
        link_files(pool, layout.ids(split, n), layout.image_dir(split), ".jpg", offset[split])
        link_files(pool, layout.ids(split, n), layout.gt_dir(split), ".png", offset[split])
    counts = {"train": set(), "val": set()}
    for stage, stage_counts in plan.items():
        for n in stage_counts:
            if stage == "prepare":
                train, val = prepare_split_counts(spec, n)
                counts["train"].add(train)
                counts["val"].add(val)
            else:
                counts[PROJECTED_IMAGES[stage]].add(n)
    for split in ("train", "val"):
        write_lists(layout.lists, split, layout.ids(split, need[split]), counts[split])
    fx = layout.fixtures
    train_ids, val_ids = layout.ids("train", need["train"]), layout.ids("val", need["val"])
    if "prepare" in plan and spec.name == "coco14":
        for n in plan["prepare"]:
            for split, m in zip(("train", "val"), prepare_split_counts(spec, n)):
                if not layout.json_file(split, m).is_file():
                    write_coco_json(pool, layout.ids(split, m), layout.json_file(split, m), offset[split])
    if "pseudo_labels" in plan:
        for n in plan["pseudo_labels"]:   # a source folder of exactly the split's labels
            link_files(pool, train_ids[:n], fx / f"pseudo_source_{n}", ".png")
    if {"cams", "cam_refine"} & set(plan):
        labels = {image_id: pool.of(i).classes for i, image_id in enumerate(train_ids)}
        write_json(fx / "cls_labels.json", labels)
        most = max(max(plan.get(s, [0])) for s in ("cams", "cam_refine"))
        link_files(pool, train_ids[:most], fx / "cams", ".npz")
    if {"crf", "evaluate_logits"} & set(plan):
        most = max(max(plan.get(s, [0])) for s in ("crf", "evaluate_logits"))
        link_files(pool, val_ids[:most], fx / "logits", spec.logits_suffix, offset["val"],
                   pool_suffix=LOGITS + spec.logits_suffix)
    if "evaluate" in plan:
        link_files(pool, val_ids, fx / "predictions", ".png", offset["val"])
    log(f"{spec.name}: fixtures for {need['train']} train / {need['val']} val images "
        f"(pool of {pool.size}) in {time.perf_counter() - started:.1f} s")
    return pool


# --------------------------------------------------------------------------- child processes
def folder_bytes(folder: Path) -> int:
    """Bytes of the files under `folder`, streamed (`Path.rglob` lists each directory whole:
    ~1 KiB per file of the measuring child's own memory at 82,081 files)."""
    if not folder.is_dir():
        return 0
    total = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                total += folder_bytes(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    return total


def run_child(layout: Layout, stage: str, n: int, n_jobs: int) -> dict:
    """One measurement in a fresh interpreter; returns its seconds, images, bytes and RSS."""
    run_dir = layout.runs / f"{stage}_{n}_{n_jobs}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    task = {"dataset": layout.spec.name, "root": str(layout.root.parent), "stage": stage,
            "n": n, "n_jobs": n_jobs, "run_dir": str(run_dir)}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        WSSS_NO_PROGRESS="1", OMP_NUM_THREADS=str(n_jobs), MKL_NUM_THREADS=str(n_jobs),
        OPENBLAS_NUM_THREADS=str(n_jobs))
    log_file = layout.runs / f"{stage}_{n}_{n_jobs}.log"
    with open(log_file, "w") as out:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(task)],
                              env=env, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "".join(log_file.read_text().splitlines(True)[-15:])
        raise RuntimeError(f"{layout.spec.name} {stage} n={n} n_jobs={n_jobs} failed:\n{tail}")
    result = json.loads((run_dir / "result.json").read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    log(f"{layout.spec.name} {stage:15s} n={n:<7d} jobs={n_jobs}: {result['seconds']:9.2f} s "
        f"({result['seconds'] / result['images']:.4f} s/image), {result['rss_mib']:7.1f} MiB, "
        f"{result['bytes'] / max(1, result['images']):,.0f} B/image")
    return result


def peak_rss_kib() -> int:
    """This process's peak RSS in KiB: Linux's VmHWM (the peak of this program's own memory;
    `ru_maxrss` would keep the forking parent's peak across exec), else `ru_maxrss`; with the
    processes it waited for (infer's ranks) where their peak is higher."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        with open("/proc/self/status") as status:
            own = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        pass
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def child_main(task: dict) -> None:
    n_jobs = task["n_jobs"]
    if hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(cores[:n_jobs]) if len(cores) >= n_jobs else set(cores))
    spec = DATASETS[task["dataset"]]
    layout = Layout(Path(task["root"]), spec)
    run_dir = Path(task["run_dir"])
    runner = globals()[f"_stage_{task['stage']}"]
    seconds, images, out = runner(layout, task["n"], n_jobs, run_dir)
    rss_mib = peak_rss_kib() / 1024     # the stage's peak, before this harness counts bytes
    result = {"seconds": seconds, "images": images, "bytes": sum(folder_bytes(p) for p in out),
              "rss_mib": rss_mib}
    (run_dir / "result.json").write_text(json.dumps(result))


def _timed(fn, *args, **kwargs) -> float:
    started = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - started


def _params(overrides: dict):
    from wsss_core.config import load_params

    return load_params(REPO / "params.yaml", overrides)


def _stage_prepare(layout: Layout, n: int, n_jobs: int, run_dir: Path):
    from wsss_core.pipeline.prepare import prepare_dataset

    spec = layout.spec
    train, val = prepare_split_counts(spec, n)
    if spec.name == "voc12":
        params = _params({"dataset": "voc12", "data.voc12.root": str(layout.data),
                          "data.voc12.train_list": str(layout.list_file("train", train)),
                          "data.voc12.val_list": str(layout.list_file("val", val))})
        return _timed(prepare_dataset, params, run_dir / "prepared"), n, [run_dir / "prepared"]
    root = run_dir / "coco"   # images linked in, annotations of this count, no masks yet
    (root / "annotations").mkdir(parents=True)
    for split, m, folder in (("train", train, "train2014"), ("val", val, "val2014")):
        (root / folder).symlink_to(layout.image_dir(split))
        (root / "annotations" / f"instances_{folder}.json").symlink_to(layout.json_file(split, m))
    params = _params({"dataset": "coco14", "data.coco14.root": str(root),
                      "data.coco14.n_jobs": n_jobs})
    seconds = _timed(prepare_dataset, params, run_dir / "prepared")
    return seconds, n, [run_dir / "prepared", root / "SegmentationClass"]


def _stage_pseudo_labels(layout: Layout, n: int, n_jobs: int, run_dir: Path):
    from wsss_core.data.pseudo_labels import ingest_pseudo_labels

    out = run_dir / "pseudo_labels"
    seconds = _timed(ingest_pseudo_labels, layout.fixtures / f"pseudo_source_{n}",
                     layout.split("train", n), layout.spec.num_classes, out)
    return seconds, n, [out]


def _tiny_net(num_classes: int):
    import torch.nn.functional as F
    from torch import nn

    class TinySegNet(nn.Module):
        """3×3 stride-2 conv, average pooling to DeepLab's stride-8 grid, 1×1 conv."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.head = nn.Conv2d(8, num_classes, 1)

        def forward(self, x):
            grid = (deeplab_grid(x.shape[-2]), deeplab_grid(x.shape[-1]))
            return self.head(F.adaptive_avg_pool2d(F.relu(self.conv(x)), grid))

        def cams(self, x):
            logits = self.forward(x)
            return logits, logits

    return TinySegNet().eval()


def _normalize(image):
    import numpy as np

    return np.ascontiguousarray(((image.astype(np.float32) / 255.0 - 0.5) / 0.25).transpose(2, 0, 1))


def _predict(model, batch):
    return model(batch)


def _stage_cams(layout: Layout, n: int, n_jobs: int, run_dir: Path):
    import torch

    from wsss_core.cam.extract import write_split_cams
    from wsss_core.data.classes import read_class_labels

    torch.set_num_threads(n_jobs)
    torch.manual_seed(0)
    spec = layout.spec
    split = layout.split("train", n)
    labels = read_class_labels(layout.fixtures / "cls_labels.json", spec.num_classes)
    cam = _params({}).pseudo_labels.cam
    out = run_dir / "cams"
    out.mkdir()
    seconds = _timed(write_split_cams, _tiny_net(spec.num_classes - 1), _normalize, split,
                     {i: labels[i] for i in split.ids}, spec.num_classes, cam.scales, cam.flip,
                     cam.stride, out, torch.device("cpu"), run_dir)
    return seconds, n, [out]


def _stage_cam_refine(layout: Layout, n: int, n_jobs: int, run_dir: Path):
    from wsss_core.cam.refine import refine_cam_labels
    from wsss_core.data.classes import read_class_labels
    from wsss_core.parallel import Workers

    spec = layout.spec
    split = layout.split("train", n)
    labels = read_class_labels(layout.fixtures / "cls_labels.json", spec.num_classes)
    refine = _params({}).pseudo_labels.refine
    out = run_dir / "pseudo_labels"
    seconds = _timed(refine_cam_labels, layout.fixtures / "cams", split,
                     {i: labels[i] for i in split.ids}, spec.num_classes, refine, out,
                     workers=Workers(n_jobs=n_jobs, key="pseudo_labels.refine"))
    return seconds, n, [out]


def _infer_rank(layout: Layout, n: int, rank: int, world: int, out: Path) -> None:
    import torch

    from wsss_core.distributed import Context
    from wsss_core.infer import infer_logits

    torch.set_num_threads(1)
    ctx = Context(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"))
    torch.manual_seed(0)
    infer_logits(_tiny_net(layout.spec.num_classes), {"main": _predict}, _normalize,
                 layout.split("val", n), {"main": out}, layout.spec.num_classes, ctx,
                 compact_top_k=layout.spec.compact_top_k)


def _stage_infer(layout: Layout, n: int, n_jobs: int, run_dir: Path):
    import multiprocessing

    out = run_dir / "logits"
    out.mkdir()
    started = time.perf_counter()
    if n_jobs == 1:
        _infer_rank(layout, n, 0, 1, out)
    else:   # torchrun's ranks: every n_jobs-th image each
        context = multiprocessing.get_context("fork")
        ranks = [context.Process(target=_infer_rank, args=(layout, n, r, n_jobs, out))
                 for r in range(n_jobs)]
        for proc in ranks:
            proc.start()
        for proc in ranks:
            proc.join()
            if proc.exitcode:
                raise RuntimeError(f"infer rank failed with exit status {proc.exitcode}")
    return time.perf_counter() - started, n, [out]


def _stage_crf(layout: Layout, n: int, n_jobs: int, run_dir: Path):
    from wsss_core.crf import CRF_PRESETS, refine_split

    out = run_dir / "predictions"
    seconds = _timed(refine_split, layout.split("val", n), layout.fixtures / "logits", out,
                     layout.spec.num_classes, CRF_PRESETS["deeplab"], n_jobs=n_jobs, resume=False)
    return seconds, n, [out]


def _stage_evaluate(layout: Layout, n: int, n_jobs: int, run_dir: Path):
    from wsss_core.evaluate import score_folder

    seconds = _timed(score_folder, layout.fixtures / "predictions", layout.split("val", n),
                     layout.spec.num_classes, "labels", n_jobs=n_jobs)
    return seconds, n, []


def _stage_evaluate_logits(layout: Layout, n: int, n_jobs: int, run_dir: Path):
    from wsss_core.evaluate import score_folder

    seconds = _timed(score_folder, layout.fixtures / "logits", layout.split("val", n),
                     layout.spec.num_classes, "logits", n_jobs=n_jobs)
    return seconds, n, []


def measure_stage(layout: Layout, stage: str, counts: list[int]) -> dict:
    single = [run_child(layout, stage, n, 1) for n in counts]
    double = run_child(layout, stage, counts[-1], 2)
    last = single[-1]
    rss = [round(r["rss_mib"], 1) for r in single]
    return {"n": counts,
            "s_per_image": sig(last["seconds"] / last["images"]),
            "speedup_2_cores": sig(last["seconds"] / double["seconds"], 4),
            "rss_mib": rss,
            "rss_ratio": sig(rss[-1] / rss[0], 4),
            "disk_bytes_per_image": round(last["bytes"] / last["images"])}


# --------------------------------------------------------------------------- DVC
def dvc_executable() -> str:
    local = Path(sys.executable).parent / "dvc"
    return str(local) if local.is_file() else (shutil.which("dvc") or "dvc")


def _run(cmd: list[str], cwd: Path) -> float:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="scale", GIT_AUTHOR_EMAIL="scale@localhost",
               GIT_COMMITTER_NAME="scale", GIT_COMMITTER_EMAIL="scale@localhost")
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} (in {cwd}) failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return seconds


def time_dvc(layout: Layout, pool: Pool, kind: str, files: int) -> dict:
    """dvc add / push / pull (fresh clone) / status (one file changed) of a folder of `files`."""
    dvc = dvc_executable()
    base = Path(tempfile.mkdtemp(prefix=f"dvc_{kind}_", dir=layout.root))
    repo, remote, clone = base / "repo", base / "remote", base / "clone"
    try:
        repo.mkdir()
        _run(["git", "init", "-q"], repo)
        _run([dvc, "init", "-q"], repo)
        _run([dvc, "config", "core.analytics", "false"], repo)
        _run([dvc, "remote", "add", "-d", "store", str(remote)], repo)
        _run(["git", "add", ".dvc", ".dvcignore"], repo)
        _run(["git", "commit", "-q", "-m", "dvc init"], repo)
        split = "train" if kind == "pseudo_labels" else "val"
        offset = 0 if split == "train" else pool.size // 2
        if kind == "logits":
            files = _fit_logits(layout, repo, pool, files)
        write = write_unique_pngs if kind == "pseudo_labels" else write_unique_logits
        size = write(pool, layout.ids(split, files), repo / kind, offset)
        log(f"{layout.spec.name} dvc {kind}: {files} files, {size / 2**20:,.1f} MiB")
        result = {"files": files}
        result["dvc_add_s"] = _run([dvc, "add", "-q", kind], repo)
        _run(["git", "add", f"{kind}.dvc", ".gitignore", ".dvc/config"], repo)
        _run(["git", "commit", "-q", "-m", "add"], repo)
        result["dvc_push_s"] = _run([dvc, "push", "-q"], repo)
        _run(["git", "clone", "-q", str(repo), str(clone)], base)
        result["dvc_pull_s"] = _run([dvc, "pull", "-q"], clone)
        shutil.rmtree(clone)
        replace_one_file(sorted((repo / kind).iterdir())[0])
        result["dvc_status_s"] = _run([dvc, "status"], repo)
        result = {k: (sig(v, 4) if k != "files" else v) for k, v in result.items()}
        log(f"{layout.spec.name} dvc {kind}: add {result['dvc_add_s']} s, push {result['dvc_push_s']} s, "
            f"pull {result['dvc_pull_s']} s, status {result['dvc_status_s']} s")
        return result
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _fit_logits(layout: Layout, repo: Path, pool: Pool, files: int) -> int:
    """The logits set's file count that the disk holds (hardlink cache when copies do not fit)."""
    per_file = pool.file(0, LOGITS + layout.spec.logits_suffix).stat().st_size + 128
    free = shutil.disk_usage(layout.root).free * 0.9
    if per_file * files * 5 <= free:
        return files
    _run([dvc_executable(), "config", "cache.type", "hardlink"], repo)
    log(f"{layout.spec.name} dvc logits: {per_file * files * 5 / 2**30:.0f} GiB do not fit in "
        f"{free / 2**30:.0f} GiB: cache.type hardlink")
    if per_file * files * 3 <= free:
        return files
    fitting = int(free // (per_file * 3))
    log(f"{layout.spec.name} dvc logits: WARNING only {fitting} of {files} files fit on the disk")
    return fitting


# --------------------------------------------------------------------------- report
def projection(spec: DatasetSpec, stages: dict) -> dict:
    out = {}
    for stage, entry in stages.items():
        core_hours = entry["s_per_image"] * stage_images(spec, stage) / 3600
        one_machine, four_machines = (1, 1) if stage in SERIAL else (16, 64)
        out[stage] = {"core_hours": sig(core_hours, 4),
                      "hours_on_16_cores": sig(core_hours / one_machine, 4),
                      "hours_on_4x16_cores": sig(core_hours / four_machines, 4)}
        if stage in ("cams", "infer"):
            out[stage]["source"] = TINY_MODEL
    return out


def table(results: dict) -> str:
    lines = []
    for name, entry in results.items():
        lines.append(f"\n{name}: {entry['train_images']:,} train / {entry['val_images']:,} val, "
                     f"{entry['num_classes']} classes, {entry['image_size']}")
        lines.append(f"  {'stage':16s} {'n':>16s} {'s/image':>9s} {'x2 cores':>8s} {'RSS MiB':>16s} "
                     f"{'ratio':>6s} {'B/image':>10s} {'core-h':>9s} {'h@16':>8s} {'h@64':>8s}")
        for stage, s in entry.get("stages", {}).items():
            p = entry["projection"][stage]
            counts = "/".join(str(n) for n in s["n"])
            rss = "/".join(f"{r:.0f}" for r in s["rss_mib"])
            lines.append(f"  {stage:16s} {counts:>16s} {s['s_per_image']:9.4f} {s['speedup_2_cores']:8.2f} "
                         f"{rss:>16s} {s['rss_ratio']:6.2f} {s['disk_bytes_per_image']:10,d} "
                         f"{p['core_hours']:9.3f} {p['hours_on_16_cores']:8.3f} {p['hours_on_4x16_cores']:8.3f}")
        for kind in ("pseudo_labels", "logits"):
            if kind in entry:
                d = entry[kind]
                lines.append(f"  dvc {kind:13s} {d['files']:>7,d} files: add {d['dvc_add_s']:.2f} s, "
                             f"push {d['dvc_push_s']:.2f} s, pull {d['dvc_pull_s']:.2f} s, "
                             f"status {d['dvc_status_s']:.2f} s")
    return "\n".join(lines)


def rehearse(spec: DatasetSpec, args, stages: list[str], dvc: bool) -> dict:
    layout = Layout(args.work, spec)
    plan = {stage: plan_counts(spec, stage, args) for stage in stages}
    pool = build_fixtures(layout, plan, args.pool, args.size_scale) if plan else None
    result = {"train_images": spec.train_images, "val_images": spec.val_images,
              "image_size": spec.sizes, "num_classes": spec.num_classes,
              "stages": {stage: measure_stage(layout, stage, counts) for stage, counts in plan.items()}}
    if dvc:
        if pool is None:
            pool = Pool(spec, layout.pool, args.pool, scale=args.size_scale)
        files = args.dvc_files or ((spec.train_images, spec.val_images) if args.full else QUICK_DVC)
        result["pseudo_labels"] = time_dvc(layout, pool, "pseudo_labels", files[0])
        result["logits"] = time_dvc(layout, pool, "logits", files[1])
    return result


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=("voc12", "coco14", "both"), default="both")
    parser.add_argument("--full", action="store_true",
                        help="real counts for the cheap stages and the DVC sets (hours)")
    parser.add_argument("--stages", default=",".join(STAGES + ("dvc",)),
                        help=f"comma-separated subset of {', '.join(STAGES)}, dvc (a subset is "
                             f"merged into an existing --out)")
    parser.add_argument("--out", type=Path, default=REPO / "metrics" / "scale.json")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch folder (default: a new one under the system temp dir, removed after)")
    parser.add_argument("--keep-work", action="store_true", help="do not remove --work afterwards")
    parser.add_argument("--cheap-counts", type=int, nargs="+", help="counts of prepare, pseudo_labels, evaluate")
    parser.add_argument("--medium-counts", type=int, nargs="+", help="counts of infer, evaluate_logits")
    parser.add_argument("--heavy-counts", type=int, nargs="+", help="counts of cams, cam_refine, crf")
    parser.add_argument("--dvc-files", type=int, nargs=2, metavar=("LABELS", "LOGITS"))
    parser.add_argument("--pool", type=int, default=POOL, help="distinct rendered samples")
    parser.add_argument("--size-scale", type=float, default=1.0,
                        help="image sizes × this (tests only: the figures are then not the real ones)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--child"]:
        child_main(json.loads(argv[1]))
        return {}
    args = parse_args(argv)
    chosen = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(STAGES) - {"dvc"})
    if unknown:
        raise SystemExit(f"error: unknown stage {unknown[0]} (allowed: {', '.join(STAGES)}, dvc)")
    stages = [s for s in STAGES if s in chosen]
    partial = set(chosen) != set(STAGES) | {"dvc"}
    names = ("voc12", "coco14") if args.dataset == "both" else (args.dataset,)
    own_work = args.work is None
    args.work = Path(tempfile.mkdtemp(prefix="wsss-scale-")) if own_work else Path(args.work)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        results = {}
        if partial and args.out.is_file():
            results = json.loads(args.out.read_text())
        for name in names:
            spec = DATASETS[name]
            fresh = rehearse(spec, args, stages, "dvc" in chosen)
            old = results.get(name, {}) if partial else {}
            merged = {**old.get("stages", {}), **fresh["stages"]}
            entry = {key: fresh[key] for key in ("train_images", "val_images", "image_size", "num_classes")}
            entry["stages"] = {s: merged[s] for s in STAGES if s in merged}
            for kind in ("pseudo_labels", "logits"):
                if kind in fresh or kind in old:
                    entry[kind] = fresh.get(kind, old.get(kind))
            entry["projection"] = projection(spec, entry["stages"])
            results[name] = entry
        write_json(args.out, results)
    finally:
        if own_work and not args.keep_work:
            shutil.rmtree(args.work, ignore_errors=True)
    print(table(results))
    log(f"wrote {args.out} in {(time.perf_counter() - started) / 60:.1f} min")
    return results


if __name__ == "__main__":
    main()

"""Stages of the pretraining pipeline (pretrain/dvc.yaml); see pretrain.pretrain.

    python -m pretrain data                       # the classification set, data/pretrain
    python -m pretrain train --backbone resnet    # → models/init/demo_resnet.pth
    python -m pretrain train --backbone vit       # → models/init/demo_vit.pth

Params: `pretrain` of pretrain/params.yaml, `train.device` of params.yaml (run from the
repository root, as the stages' `wdir: ..` does).
"""
import argparse

from pretrain import pretrain as pretraining
from pretrain.config import load_pretrain_params
from wsss_core.cli import run_stage
from wsss_core.config import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("data")
    commands.add_parser("train").add_argument("--backbone", required=True,
                                              choices=sorted(pretraining.CAM_PRESET))
    args = parser.parse_args()
    p = load_pretrain_params()
    if args.command == "data":
        summary = pretraining.make_classification_set(p)
        print(f"classification set: {summary['images']} images → {pretraining.DATA_DIR}")
    else:
        report = pretraining.pretrain_backbone(p, args.backbone, device=load_params().train.device)
        print(f"pretrained {args.backbone}: {report['iterations']} iterations in "
              f"{report['train_time_s']} s, loss {report['final_loss']}, val mAP "
              f"{report['val_map']} → {report['init_file']}")


if __name__ == "__main__":
    run_stage(main)

"""Convert a COCO instances JSON into VOC-style class-id masks (one palette PNG per image).

`python stages/convert_coco.py instances_train2014.json SegmentationClass/train2014 --list train.txt`
writes `<file_name stem>.png` for every image (class ids 1..80 in sorted category-id order,
crowd = 255), keeps existing valid masks, and optionally writes the split's id list.
"""
import argparse
from pathlib import Path

from wsss_core.cli import run_stage
from wsss_core.data.coco import CROWD_POLICIES, convert_coco


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("annotation_json", type=Path, help="COCO instances_*.json")
    parser.add_argument("out_dir", type=Path, help="folder for the <file_name stem>.png masks")
    parser.add_argument("--n-jobs", type=int, default=1, help="joblib workers over images (-1 = all cores)")
    parser.add_argument("--list", type=Path, dest="out_list", help="also write the image ids to this list file")
    parser.add_argument("--crowd", choices=CROWD_POLICIES, default="ignore",
                        help="what crowd regions become: 255 (ignore, default), their class, or background")
    args = parser.parse_args()
    summary = convert_coco(args.annotation_json, args.out_dir, n_jobs=args.n_jobs, crowd=args.crowd,
                           id_list=args.out_list)
    print(f"{args.annotation_json.name}: {summary['images']} images ({summary['written']} written, "
          f"{summary['skipped']} kept), {summary['annotations']} annotations "
          f"({summary['crowd_annotations']} crowd), {summary['empty_images']} images without "
          f"annotations, {summary['categories']} categories")


if __name__ == "__main__":
    run_stage(main)

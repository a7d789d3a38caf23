import numpy as np
import pytest
from PIL import Image

from wsss_core.errors import DataError
from wsss_core.io import (
    atomic_dir,
    atomic_path,
    colorize,
    decode_label,
    image_size,
    iter_id_list,
    read_id_list,
    read_image,
    read_label,
    voc_palette,
    write_image,
    write_label,
)
from wsss_core.logits_io import read_logits, write_logits


def test_voc_palette_known_colours():
    pal = voc_palette()
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]
    assert pal[15].tolist() == [192, 128, 128]  # person
    assert pal[255].tolist() == [224, 224, 192]  # VOC void border colour


def test_label_roundtrip_is_palette_png(tmp_path):
    label = np.array([[0, 1, 255], [20, 3, 0]], np.uint8)
    write_label(tmp_path / "x.png", label)
    img = Image.open(tmp_path / "x.png")
    assert img.mode == "P"
    assert np.array_equal(read_label(tmp_path / "x.png", 21, expected_hw=(2, 3)), label)
    assert colorize(label)[0, 1].tolist() == [128, 0, 0]


def test_label_errors_name_file_and_problem(tmp_path):
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(rgb)
    with pytest.raises(DataError, match=r"rgb.png: label has mode RGB; expected a single-channel"):
        read_label(rgb)
    write_label(tmp_path / "big.png", np.full((4, 4), 30, np.uint8))
    with pytest.raises(DataError, match=r"big.png: label values \[30\] out of range \(allowed 0..20 or 255\)"):
        read_label(tmp_path / "big.png", 21)
    write_label(tmp_path / "ok.png", np.zeros((4, 5), np.uint8))
    with pytest.raises(DataError, match="label size 5x4 .* differs from the image's 6x4"):
        read_label(tmp_path / "ok.png", 21, expected_hw=(4, 6))
    truncated = tmp_path / "trunc.png"
    write_label(truncated, np.random.default_rng(0).integers(0, 21, (64, 64)).astype(np.uint8))
    truncated.write_bytes(truncated.read_bytes()[:-40])
    with pytest.raises(DataError, match="trunc.png: cannot decode PNG"):
        read_label(truncated)
    with pytest.raises(DataError, match="missing.png: file not found"):
        read_label(tmp_path / "missing.png")



def test_unreadable_label_is_one_clean_line(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(DataError) as info:
        read_label(junk)
    assert str(info.value) == f"{junk}: not a readable PNG image"  # no PIL "<_io.BytesIO ...>"
    jpeg = tmp_path / "photo.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(jpeg, "JPEG")
    with pytest.raises(DataError) as info:
        read_label(jpeg)
    assert str(info.value) == f"{jpeg}: is JPEG, expected PNG"
    # bytes from an archive are named by the location the caller gives
    with pytest.raises(DataError) as info:
        decode_label(junk.read_bytes(), "labels.zip:nested/a1.png")
    assert str(info.value) == "labels.zip:nested/a1.png: not a readable PNG image"

def test_corrupt_jpeg(tmp_path):
    path = tmp_path / "img.jpg"
    write_image(path, np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    assert read_image(path).shape == (32, 32, 3) and image_size(path) == (32, 32)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(DataError, match="img.jpg: cannot decode image"):
        read_image(path)
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="junk.jpg: cannot"):
        image_size(tmp_path / "junk.jpg")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "out.txt"
    dest.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert dest.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_dir_replaces_whole_or_nothing(tmp_path):
    dest = tmp_path / "labels"
    dest.mkdir()
    (dest / "old.png").write_text("x")
    with pytest.raises(RuntimeError):
        with atomic_dir(dest) as tmp:
            (tmp / "new.png").write_text("y")
            raise RuntimeError
    assert [p.name for p in dest.iterdir()] == ["old.png"]
    with atomic_dir(dest) as tmp:
        (tmp / "new.png").write_text("y")
    assert [p.name for p in dest.iterdir()] == ["new.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels"]


def test_id_lists(tmp_path):
    (tmp_path / "a.txt").write_text("2007_000032\n\n2007_000039\n")
    assert read_id_list(tmp_path / "a.txt") == ["2007_000032", "2007_000039"]
    (tmp_path / "b.txt").write_text("/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n")
    assert read_id_list(tmp_path / "b.txt") == ["2007_000032"]
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match="empty.txt: list is empty"):
        read_id_list(tmp_path / "empty.txt")
    (tmp_path / "dup.txt").write_text("a\na\n")
    with pytest.raises(DataError, match="duplicate"):
        read_id_list(tmp_path / "dup.txt")


def test_iter_id_list_streams_the_same_ids_and_errors(tmp_path):
    (tmp_path / "mixed.txt").write_text("a\n\n/JPEGImages/b.jpg /SegmentationClassAug/b.png\n  c  \n")
    streamed = iter_id_list(tmp_path / "mixed.txt")
    assert next(streamed) == "a"                     # one line at a time: a generator
    assert ["a", *streamed] == read_id_list(tmp_path / "mixed.txt") == ["a", "b", "c"]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="empty.txt: list is empty"):
        list(iter_id_list(tmp_path / "empty.txt"))
    (tmp_path / "latin1.txt").write_bytes(b"a\n\xe9t\xe9\n")
    for read in (read_id_list, lambda path: list(iter_id_list(path))):
        with pytest.raises(DataError, match="latin1.txt: list is not a UTF-8 text file"):
            read(tmp_path / "latin1.txt")
    with pytest.raises(DataError, match="nowhere.txt: list file not found"):
        list(iter_id_list(tmp_path / "nowhere.txt"))


def test_logits_float16_by_default(tmp_path):
    logits = np.random.default_rng(0).normal(size=(21, 6, 8)).astype(np.float32)
    write_logits(tmp_path / "x.npy", logits)
    assert np.load(tmp_path / "x.npy").dtype == np.float16
    back = read_logits(tmp_path / "x.npy", num_classes=21)
    assert back.dtype == np.float32 and np.allclose(back, logits, atol=1e-2)
    write_logits(tmp_path / "y.npy", logits, dtype="float32")
    assert np.array_equal(read_logits(tmp_path / "y.npy"), logits)
    with pytest.raises(DataError, match=r"x.npy: logits have shape \(21, 6, 8\); expected \(81, h, w\)"):
        read_logits(tmp_path / "x.npy", num_classes=81)


def test_duplicate_id_names_id_and_lines(tmp_path):
    lines = ["a", "b", "", "/JPEGImages/c.jpg /SegmentationClassAug/c.png", "/JPEGImages/b.jpg x"]
    (tmp_path / "dup.txt").write_text("\n".join(lines) + "\n")
    first, again = lines.index("b") + 1, len(lines)  # 1-based; the last line repeats id b
    with pytest.raises(DataError) as info:
        read_id_list(tmp_path / "dup.txt")
    assert str(info.value) == (f"{tmp_path / 'dup.txt'}: line {again}: duplicate id b "
                               f"(first on line {first})")

import cv2
import numpy as np
import pytest

from marsseg.cli import main
from marsseg.data.ai4mars import MASK_TIE_ORDER, TO_AI4MARS, TO_COURSE, import_ai4mars
from marsseg.data.frames import resize_mask
from marsseg.data.io import load_npz
from tests.frames import save_image

# mars64.npz's class shares (shared/data/README.md): background, soil, bedrock, sand, big rock
MARS64_SHARES = np.array([0.423, 0.197, 0.302, 0.074, 0.0039])


def quadrant_label(side: int) -> np.ndarray:
    """AI4Mars values: soil top left, bedrock top right, big rock bottom left, no label bottom right."""
    label = np.full((side, side), 255, np.uint8)
    half = side // 2
    label[:half, :half], label[:half, half:], label[half:, :half] = 0, 1, 3
    return label


def gradient_image(side: int, shift: int = 0) -> np.ndarray:
    rows, columns = np.mgrid[0:side, 0:side]
    return ((rows + 2 * columns + shift) % 256).astype(np.uint8)


def test_label_values_map_both_ways():
    assert TO_COURSE[[0, 1, 2, 3, 255]].tolist() == [1, 2, 3, 4, 0]
    assert TO_AI4MARS[[0, 1, 2, 3, 4]].tolist() == [255, 0, 1, 2, 3]
    assert MASK_TIE_ORDER == (0, 1, 2, 3, 4)


def test_mask_majority_and_its_tie_rule():
    # 2x2 blocks, course values: a 3-1 majority wins; ties go to the lowest course value (background first), as
    # mars64.npz was made (its data README)
    blocks = {
        (4, 4, 4, 1): 4,
        (0, 0, 1, 1): 0,  # no label against soil: no label
        (0, 0, 4, 4): 0,  # no label against big rock: no label
        (2, 2, 1, 1): 1,  # bedrock against soil: soil
        (4, 4, 3, 3): 3,  # big rock against sand: sand
        (0, 3, 2, 4): 0,  # four values: no label, the lowest course value among them
        (3, 1, 2, 4): 1,  # four labeled values: soil
    }
    mask = np.zeros((2, 2 * len(blocks)), np.uint8)
    for i, block in enumerate(blocks):
        mask[:, 2 * i : 2 * i + 2] = np.array(block, np.uint8).reshape(2, 2)
    assert resize_mask(mask, (1, len(blocks)), MASK_TIE_ORDER)[0].tolist() == list(blocks.values())


def test_full_release_layout_frame_ids_and_unlabelled_frames(tmp_path):
    root = tmp_path / "ai4mars"
    for stem, shift in (("NLA_1", 0), ("NLA_2", 50), ("NLA_3", 100)):  # 512x512: 4x down to the default 128
        gray = gradient_image(512, shift)
        save_image(root / "msl/images/edr" / f"{stem}.JPG", np.stack([gray] * 3, axis=-1), "JPEG")
    save_image(root / "msl/labels/train/NLA_1.png", quadrant_label(512))
    save_image(root / "msl/labels/train/NLA_3.png", quadrant_label(512)[:, ::-1].copy())  # mirrored
    save_image(root / "msl/labels/train/NLA_9.png", quadrant_label(512))  # no image: ignored
    result = import_ai4mars(root)
    arrays = result.arrays
    assert arrays["training_set"].shape == (4, 2, 64, 128) and arrays["training_set"].dtype == np.uint8
    assert arrays["frame_id"].tolist() == [0, 0, 2, 2]  # NLA_2 has no label: frame 1 is in test_set
    assert arrays["test_set"].shape == (2, 64, 128) and arrays["test_frame_id"].tolist() == [1, 1]
    assert arrays["frame_name"].tolist() == ["NLA_1", "NLA_2", "NLA_3"] and int(arrays["frame_size"]) == 128
    assert (result.labelled_frames, result.unlabelled_frames, result.labels_without_image) == (2, 1, 1)
    masks = arrays["training_set"][:, 1]
    top, bottom = np.zeros((64, 128), np.uint8), np.zeros((64, 128), np.uint8)
    top[:, :64], top[:, 64:], bottom[:, :64] = 1, 2, 4  # course values of the quadrants; no label -> 0
    assert np.array_equal(masks[0], top) and np.array_equal(masks[1], bottom)
    assert np.array_equal(masks[2], top[:, ::-1]) and np.array_equal(masks[3], bottom[:, ::-1])
    expected_top = cv2.resize(gradient_image(512), (128, 128), interpolation=cv2.INTER_AREA)[:64]
    assert np.abs(arrays["training_set"][0, 0].astype(int) - expected_top).mean() < 2  # JPEG: close, not equal


def test_flat_layout_other_frame_size_and_exact_images(tmp_path, capsys):
    root = tmp_path / "flat"
    save_image(root / "images/a.png", gradient_image(256))  # PNG: lossless, so the image is exact
    save_image(root / "labels/a.png", quadrant_label(256))
    out = tmp_path / "a.npz"
    assert main(["data", "import", str(root), "--out", str(out), "--frame-size", "256"]) == 0
    assert "training_set 8 crops of 1 frames" in capsys.readouterr().out
    data = load_npz(out)
    assert len(data) == 8 and data.frame_ids.tolist() == [0] * 8 and data.frame_size == 256
    assert np.array_equal(data.images[0], gradient_image(256)[:64, :128])  # no resize: the top-left crop
    assert np.array_equal(data.images[1], gradient_image(256)[:64, 128:])  # crops go row by row
    assert data.masks[0].min() == data.masks[0].max() == 1 and data.masks[7].max() == 0


def test_sample_import_reproduces_the_mars64_recipe(ai4mars_sample, tmp_path, capsys):
    out = tmp_path / "sample.npz"
    assert main(["data", "import", str(ai4mars_sample), "--out", str(out)]) == 0
    data = load_npz(out)
    assert data.images.shape == (400, 64, 128) and data.masks.dtype == np.uint8
    assert data.frame_ids.tolist() == np.repeat(np.arange(200), 2).tolist() and data.frame_size == 128
    names = np.load(out)["frame_name"]
    for frame in (0, 77, 199):  # independently: cv2's decoder, area resize, a numpy majority of each 2x2 block
        gray = cv2.cvtColor(cv2.imread(str(ai4mars_sample / "images" / f"{names[frame]}.jpg")), cv2.COLOR_BGR2GRAY)
        image = cv2.resize(gray, (128, 128), interpolation=cv2.INTER_AREA)
        assert np.abs(np.concatenate(data.images[2 * frame : 2 * frame + 2]).astype(int) - image).max() <= 1
        label = cv2.imread(str(ai4mars_sample / "labels" / f"{names[frame]}.png"), cv2.IMREAD_UNCHANGED)
        blocks = TO_COURSE[label].reshape(128, 2, 128, 2).swapaxes(1, 2).reshape(128, 128, 4)
        # the mode of the course values, ties to the lowest (background first), as mars64 was made
        mode = np.array([[np.bincount(b, minlength=5).argmax() for b in row] for row in blocks])
        assert np.array_equal(np.concatenate(data.masks[2 * frame : 2 * frame + 2]), mode)
    again = tmp_path / "again.npz"
    assert main(["data", "import", str(ai4mars_sample), "--out", str(again)]) == 0
    assert np.array_equal(load_npz(again).images, data.images) and np.array_equal(load_npz(again).masks, data.masks)
    shares = np.bincount(data.masks.reshape(-1), minlength=5) / data.masks.size
    assert np.abs(shares - MARS64_SHARES).max() < 0.05  # the same source: shares within 5 points of mars64's
    capsys.readouterr()
    assert main(["data", "inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "200 camera frames" in printed and f"{100 * shares[4]:.2f}%" in printed


def good_flat_layout(root):
    for stem in ("A", "B"):
        save_image(root / "images" / f"{stem}.png", gradient_image(256))
        save_image(root / "labels" / f"{stem}.png", quadrant_label(256))
    return root


def bad_inputs():
    """(name, how to spoil a good layout, extra flags, the file the message names, words it must contain)"""

    def unreadable(root):
        (root / "images/B.png").write_bytes(b"not an image")
        return root / "images/B.png"

    def truncated(root):
        path = root / "images/B.jpg"
        (root / "images/B.png").unlink()
        save_image(path, gradient_image(256), "JPEG")
        path.write_bytes(path.read_bytes()[:2000])
        return path

    def label_size(root):
        save_image(root / "labels/B.png", quadrant_label(128))
        return root / "labels/B.png"

    def label_values(root):
        label = quadrant_label(256)
        label[0, 0], label[5, 5] = 7, 200
        save_image(root / "labels/B.png", label)
        return root / "labels/B.png"

    def colour_label(root):
        save_image(root / "labels/B.png", np.stack([quadrant_label(256)] * 3, axis=-1))
        return root / "labels/B.png"

    def empty_folder(root):
        for path in sorted(root.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        return root

    def empty_images_folder(root):
        for path in (root / "images").iterdir():
            path.unlink()
        return root / "images"

    def missing_label(root):
        (root / "labels/B.png").unlink()
        return root / "labels"

    def no_labels_at_all(root):
        for path in (root / "labels").iterdir():
            path.unlink()
        return root

    def not_divisible(root):
        save_image(root / "images/B.png", gradient_image(256)[:200])  # 256x200 -> 128x100: not 64x128 crops
        save_image(root / "labels/B.png", quadrant_label(256)[:200])
        return root / "images/B.png"

    yield "unreadable image", unreadable, [], ["unreadable image", "expected a JPEG or PNG"]
    yield "truncated image", truncated, [], ["unreadable image", "truncated"]
    yield (
        "label size differs",
        label_size,
        [],
        ["found size 128x128, expected 256x256 (height x width) like its image B.png"],
    )
    yield "label values", label_values, [], ["found label values [7, 200]", "expected AI4Mars values 0, 1, 2, 3, 255"]
    yield "colour label", colour_label, [], ["mode RGB", "single-channel 8-bit"]
    yield "empty folder", empty_folder, [], ["no images found", "msl/images/edr/ with msl/labels/train/"]
    yield "empty images folder", empty_images_folder, [], ["no JPEG or PNG images"]
    yield "image without a label", missing_label, ["--require-labels"], ["1 of 2 images have no label", "B.png)"]
    yield "no labelled frame", no_labels_at_all, [], ["none of 2 images has a label"]
    yield "frame not divisible into crops", not_divisible, [], ["resized to 100x128", "--frame-size"]


@pytest.mark.parametrize("name,spoil,flags,words", list(bad_inputs()), ids=[case[0] for case in bad_inputs()])
def test_bad_input_gets_one_line_exit_2_and_no_output(tmp_path, capsys, name, spoil, flags, words):
    named = spoil(good_flat_layout(tmp_path / "in"))
    out = tmp_path / "out" / "imported.npz"
    assert main(["data", "import", str(tmp_path / "in"), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(named) in err and all(word in err for word in words), err
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))  # not even a temporary


def test_existing_output_needs_force(tmp_path, capsys):
    root = good_flat_layout(tmp_path / "in")
    out = tmp_path / "imported.npz"
    out.write_bytes(b"precious")
    assert main(["data", "import", str(root), "--out", str(out)]) == 2
    assert out.read_bytes() == b"precious" and "--force" in capsys.readouterr().err
    assert main(["data", "import", str(root), "--out", str(out), "--force"]) == 0
    assert len(load_npz(out)) == 4


def test_clean_keeps_the_frame_names_and_test_frame_ids(tmp_path):
    root = tmp_path / "ai4mars"
    for stem, shift in (("NLA_1", 0), ("NLA_2", 50), ("NLA_3", 100)):
        save_image(root / "images" / f"{stem}.png", gradient_image(256, shift))
    for stem in ("NLA_1", "NLA_3"):
        save_image(root / "labels" / f"{stem}.png", quadrant_label(256))
    assert main(["data", "import", str(root), "--out", str(tmp_path / "imported.npz")]) == 0
    assert main(["data", "clean", str(tmp_path / "imported.npz"), "--out", str(tmp_path / "clean.npz")]) == 0
    with np.load(tmp_path / "imported.npz") as imported, np.load(tmp_path / "clean.npz") as cleaned:
        for key in ("frame_id", "frame_name", "test_frame_id", "frame_size", "test_set"):
            assert np.array_equal(imported[key], cleaned[key]), key

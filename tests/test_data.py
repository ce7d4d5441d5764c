import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from qsegment.data import SegmentationDataset, paper_augmentation, to_tensors
from qsegment.data.transforms import apply
from qsegment.datasets import (
    ChaseDB1,
    DatasetError,
    Sample,
    Split,
    fov_mask,
    load_sample,
    load_split,
)
from qsegment.models import create_model

MULTIPLE = create_model("qsegment").size_multiple  # the network's stride: 8


def scan(folder):
    return ChaseDB1(folder).names()


def test_scan_finds_the_28_images(data_dir):
    names = scan(data_dir)
    assert len(names) == 28 and names[0] == "Image_01L" and names[-1] == "Image_14R"


def test_default_split_is_the_papers_20_to_8(data_dir):
    train, val = load_split(data_dir)
    assert [s.name for s in train] == [f"Image_{i:02d}{e}" for i in range(1, 11) for e in "LR"]
    assert [s.name for s in val] == [f"Image_{i:02d}{e}" for i in range(11, 15) for e in "LR"]
    custom_train, custom_val = load_split(data_dir, Split(("Image_14R",), ("Image_01L",)))
    assert [s.name for s in custom_train] == ["Image_14R"]
    assert [s.name for s in custom_val] == ["Image_01L"]


def test_sample_arrays(data_dir):
    s = load_sample(data_dir, "Image_05R")
    assert s.image.shape == (960, 999, 3) and s.image.dtype == np.float32
    assert s.image.min() >= 0.0 and s.image.max() <= 1.0
    assert s.label.dtype == bool and s.label.shape == (960, 999)
    assert 0.03 < s.label.mean() < 0.15  # vessels are a small fraction of the image
    second = load_sample(data_dir, "Image_05R", observer=2)
    assert second.label.shape == s.label.shape and (second.label != s.label).any()
    with pytest.raises(DatasetError, match="observer"):
        load_sample(data_dir, "Image_05R", observer=3)


@pytest.mark.parametrize("name", ["Image_01L", "Image_08R", "Image_13L"])
def test_fov_covers_the_retina_and_excludes_the_dark_border(data_dir, name):
    s = load_sample(data_dir, name)
    fov = s.fov
    assert 0.6 < fov.mean() < 0.75  # a disc of ~460 px radius in a 960x999 frame
    assert not fov[0, 0] and not fov[-1, -1] and not fov[0, -1] and not fov[-1, 0]
    assert fov[480, 500]
    brightness = s.image.max(axis=2)
    assert brightness[~fov].mean() < 0.03 < brightness[fov].mean()
    assert (s.label & fov).sum() / s.label.sum() > 0.995  # vessels lie inside the FOV
    # a filled disc: no holes, one piece
    from scipy import ndimage
    assert ndimage.label(fov)[1] == 1
    assert np.array_equal(ndimage.binary_fill_holes(fov), fov)


def test_fov_of_float_image_equals_uint8(data_dir):
    s = load_sample(data_dir, "Image_02L")
    rgb = np.round(s.image * 255).astype(np.uint8)
    assert np.array_equal(fov_mask(rgb), fov_mask(s.image))


def test_dataset_pads_to_multiple_of_8_outside_the_fov(data_dir):
    image, label, fov = to_tensors(load_sample(data_dir, "Image_01L"), MULTIPLE)
    assert image.shape == (3, 960, 1000) and label.shape == fov.shape == (1, 960, 1000)
    assert fov[..., 999:].eq(0).all() and image[..., 999:].eq(0).all()


def test_augmentation_keeps_image_label_and_fov_aligned(data_dir):
    s = load_sample(data_dir, "Image_03L")
    torch.manual_seed(0)
    transform = paper_augmentation(crop=256)
    image, label, fov = to_tensors(s, MULTIPLE)
    marked = image.clone()
    marked[0] = label[0]  # a copy of the label hidden in the red channel
    seen_flip = False
    for _ in range(10):
        img, lab, fv = apply(transform, marked, label, fov)
        assert set(lab.unique().tolist()) <= {0.0, 1.0} and set(fv.unique().tolist()) <= {0.0, 1.0}
        hidden = img[0] > 0.4  # brightness factor >= 0.8 keeps ones above it
        agree = (hidden == lab[0].bool()).float().mean()
        assert agree > 0.99
        # vessels are darker than the retina around them in the green channel
        vessel, retina = lab[0].bool(), fv[0].bool() & ~lab[0].bool()
        if vessel.sum() > 50 and retina.sum() > 50:
            assert img[1][vessel].mean() < img[1][retina].mean()
        seen_flip |= not torch.equal(lab, label[..., :256, :256])
    assert seen_flip


def test_augmentation_is_the_papers(data_dir):
    ops = {type(t).__name__: t for t in paper_augmentation().transforms}
    assert ops["RandomHorizontalFlip"].p == ops["RandomVerticalFlip"].p == 0.5
    assert tuple(ops["RandomRotation"].degrees) == (-1.0, 1.0)
    assert tuple(ops["ColorJitter"].brightness) == (0.8, 1.2)
    image, label, fov = to_tensors(load_sample(data_dir, "Image_03L"), MULTIPLE)
    torch.manual_seed(1)
    img, _, _ = apply(paper_augmentation(brightness=0.2, rotation=0.0), image, label, fov)
    ratio = img.sum() / image.sum()  # flips keep the sum; brightness scales it (with clipping)
    assert 0.75 < ratio < 1.2


def test_rotate90_reaches_all_eight_symmetries_exactly(data_dir):
    image, label, fov = (t[..., 300:556, 300:556] for t in
                         to_tensors(load_sample(data_dir, "Image_03L"), MULTIPLE))
    turns = [torch.rot90(label, k, (1, 2)) for k in range(4)]
    views = turns + [t.flip(-1) for t in turns]
    transform = paper_augmentation(rotation=0.0, brightness=0.0, rotate90=True)
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        _, lab, _ = apply(transform, image, label, fov)
        matches = [i for i, view in enumerate(views) if torch.equal(lab, view)]
        assert len(matches) == 1  # a quarter turn moves pixels, it does not resample them
        seen.add(matches[0])
    assert seen == set(range(8))
    assert all(type(t).__name__ != "RandomApply" for t in paper_augmentation().transforms)


def test_acquisition_shifts_touch_the_image_only(data_dir):
    from qsegment.data.transforms import AcquisitionShift

    image, label, fov = to_tensors(load_sample(data_dir, "Image_03L"), MULTIPLE)
    shift = AcquisitionShift(strength=5.0)  # every shift on, every time
    torch.manual_seed(0)
    for _ in range(3):
        img, lab, fv = apply(shift, image, label, fov)
        assert torch.equal(lab, label) and torch.equal(fv, fov)
        assert img.shape == image.shape and img.min() >= 0 and img.max() <= 1
        assert (img - image).abs().mean() > 0.01
        assert torch.allclose(img[0], img[1], atol=0.1)  # red-free: channels nearly equal
        vessel, retina = label[0].bool(), fov[0].bool() & ~label[0].bool()
        assert img[1][vessel].mean() < img[1][retina].mean()  # vessels still darker
    clean = AcquisitionShift(strength=0.0)
    assert torch.equal(apply(clean, image, label, fov)[0], image)


def test_acquisition_jpeg_share_is_its_own_knob():
    """--acquisition-jpeg sets how often JPEG compression is drawn (30-95), alone."""
    from qsegment.data.transforms import AcquisitionShift

    torch.manual_seed(0)
    for share, low, high in [(0.0, 0, 0), (0.5, 70, 130), (1.0, 200, 200)]:
        shift = paper_augmentation(crop=64, acquisition=True, jpeg=share).transforms[-1]
        assert isinstance(shift, AcquisitionShift) and shift.p["blur"] == 0.15
        qualities = [shift.make_params([])["jpeg"] for _ in range(200)]
        drawn = [q for q in qualities if q is not None]
        assert low <= len(drawn) <= high and all(30 <= q <= 95 for q in drawn)


def test_without_colour_shifts_the_pixels_keep_their_colour_relations(data_dir):
    """--no-acquisition-colour (artery/vein fine-tuning) draws blur, noise and JPEG but no
    cast, gamma, contrast or red-free: every shift on, the channels stay apart and each
    pixel's colour moves by blur, noise and compression alone."""
    from qsegment.data.transforms import AcquisitionShift

    shift = paper_augmentation(crop=64, acquisition=True, acquisition_colour=False).transforms[-1]
    assert isinstance(shift, AcquisitionShift)
    torch.manual_seed(0)
    drawn = [shift.make_params([]) for _ in range(200)]
    for kind in ("gains", "gamma", "contrast", "red_free"):
        assert all(params[kind] is None for params in drawn), kind
    for kind in ("blur", "noise", "jpeg"):
        assert any(params[kind] is not None for params in drawn), kind
    image, label, fov = to_tensors(load_sample(data_dir, "Image_03L"), MULTIPLE)
    img = apply(AcquisitionShift(strength=5.0, colour=False), image, label, fov)[0]
    retina = fov[0].bool()
    assert (img - image).abs().mean() > 0.005  # blurred, noisy, compressed
    for channel in range(3):  # the mean colour of the retina stays where it was
        assert abs(img[channel][retina].mean() - image[channel][retina].mean()) < 0.01
    assert (img[0] - img[1]).abs()[retina].mean() > 0.1  # not red-free


def test_acquisition_training_crops_at_other_zooms(data_dir):
    from qsegment.data.transforms import AcquisitionShift, ZoomedCrop

    ops = [type(t) for t in paper_augmentation(crop=128, acquisition=True).transforms]
    assert ops[0] is ZoomedCrop and ops[-1] is AcquisitionShift
    assert AcquisitionShift not in [type(t) for t in paper_augmentation(crop=128).transforms]
    image, label, fov = to_tensors(load_sample(data_dir, "Image_03L"), MULTIPLE)
    torch.manual_seed(0)
    sides = set()
    for _ in range(20):
        params = ZoomedCrop(128).make_params([tv_tensors.Image(image)])
        assert params["height"] == params["width"]
        sides.add(params["height"])
        img, lab, _ = apply(ZoomedCrop(128), image, label, fov)
        assert img.shape[-2:] == lab.shape[-2:] == (128, 128)
        assert set(lab.unique().tolist()) <= {0.0, 1.0}  # masks by nearest neighbour
    assert min(sides) >= 102 and max(sides) <= 160 and len(sides) > 5  # 128 / (1.25 .. 0.8)


@pytest.mark.parametrize("acquisition", [False, True])
def test_a_crop_is_cut_from_the_photograph_as_from_its_padded_tensors(data_dir, acquisition):
    """The dataset cuts a random crop's window from the sample's arrays instead of keeping
    a padded float copy of every photograph: the same draws give the same tensors, padding
    included (a 250x253 piece is padded to 256x256 and cropped at 256)."""
    from qsegment.data.dataset import augment

    whole = load_sample(data_dir, "Image_03L")
    piece = Sample(whole.name, whole.image[:250, 300:553], whole.label[:250, 300:553],
                   whole.fov[:250, 300:553], whole.path)
    for sample, crop in ((whole, 256), (piece, 256)):
        transform = paper_augmentation(crop=crop, acquisition=acquisition)
        tensors = to_tensors(sample, MULTIPLE)
        for seed in range(4):
            torch.manual_seed(seed)
            expected = apply(transform, *tensors)
            torch.manual_seed(seed)
            got = augment(transform, sample, MULTIPLE)
            for a, b in zip(expected, got, strict=True):
                assert a.dtype == b.dtype and torch.equal(a, b), (sample.name, crop, seed)


def test_dataset_repeats_and_augments(data_dir):
    s = load_sample(data_dir, "Image_01L")
    ds = SegmentationDataset([s], paper_augmentation(crop=64), repeats=3, multiple=MULTIPLE)
    assert len(ds) == 3
    x, y, f = ds[2]
    assert x.shape == (3, 64, 64) and y.shape == f.shape == (1, 64, 64)


# --- bad input: every problem names the file -------------------------------------------

def test_missing_label(small_copy):
    (small_copy / "Image_11L_1stHO.png").unlink()
    with pytest.raises(DatasetError, match=r"Image_11L_1stHO\.png: missing label"):
        scan(small_copy)


def test_unexpected_file(small_copy):
    (small_copy / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match=r"notes\.txt: unexpected file"):
        scan(small_copy)


def test_label_without_image(small_copy):
    (small_copy / "Image_01L.jpg").unlink()
    with pytest.raises(DatasetError, match=r"Image_01L_1stHO\.png: label without image"):
        scan(small_copy)


def test_truncated_image(small_copy):
    path = small_copy / "Image_01L.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match=r"Image_01L\.jpg: unreadable or corrupt"):
        load_sample(small_copy, "Image_01L")


def test_corrupt_image(small_copy):
    (small_copy / "Image_11L.jpg").write_bytes(b"\xff\xd8 not really a jpeg" * 100)
    with pytest.raises(DatasetError, match=r"Image_11L\.jpg: unreadable or corrupt"):
        load_split(small_copy, Split(("Image_01L",), ("Image_11L",)))


def test_label_of_the_wrong_size(small_copy):
    path = small_copy / "Image_11L_1stHO.png"
    Image.open(path).resize((500, 480)).save(path)
    with pytest.raises(DatasetError, match=r"Image_11L_1stHO\.png: label is 500x480 but its "
                                           r"image is 999x960"):
        load_sample(small_copy, "Image_11L")


def test_non_binary_label(small_copy):
    path = small_copy / "Image_11L_1stHO.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (960, 999), np.uint8)).save(path)
    with pytest.raises(DatasetError, match=r"Image_11L_1stHO\.png: label is not binary"):
        load_sample(small_copy, "Image_11L")


def test_split_image_not_in_folder(small_copy):
    with pytest.raises(DatasetError, match=r"Image_05R\.jpg: image of the split not found"):
        load_split(small_copy, Split(("Image_05R",), ("Image_11L",)))


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="not a directory"):
        scan(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="no CHASE_DB1 images"):
        scan(tmp_path)


def test_resize_sample_is_what_a_camera_at_that_size_sees(data_dir):
    from qsegment.data import resize_sample

    s = load_sample(data_dir, "Image_04L")
    small = resize_sample(s, 336)
    assert small.image.shape == (336, 336, 3) and small.label.shape == small.fov.shape == (336, 336)
    assert small.label.dtype == bool and small.fov.dtype == bool
    assert abs(small.fov.mean() - s.fov.mean()) < 0.01
    assert abs(small.image.mean() - s.image.mean()) < 0.01
    assert 0.5 < small.label.mean() / s.label.mean() < 1.5  # thin vessels partly vanish


def _save(array, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_a_drive_style_folder_of_your_own_labelled_images(tmp_path, data_dir):
    """images/, 1st_manual/ and mask/ as DRIVE has them: matched by number, the given FOV
    masks used, every image a validation image, one observer."""
    from qsegment.datasets import LabelledFolder, detect_dataset

    chase = {"21": "Image_01L", "22": "Image_02R", "23": "Image_11L"}
    for number, name in chase.items():
        s = load_sample(data_dir, name)
        _save(np.round(s.image * 255).astype(np.uint8), tmp_path / "images" / f"{number}_test.png")
        _save(s.label.astype(np.uint8) * 255, tmp_path / "1st_manual" / f"{number}_manual1.gif")
        fov = s.fov.copy()
        fov[:100] = False  # a given mask, not the derived one
        _save(fov.astype(np.uint8) * 255, tmp_path / "mask" / f"{number}_test_mask.gif")
    folder = detect_dataset(tmp_path)
    assert isinstance(folder, LabelledFolder) and folder.observers == 1
    train, val = folder.split()
    assert train == [] and [s.name for s in val] == ["21", "22", "23"]
    reference = load_sample(data_dir, "Image_02R")
    assert np.array_equal(val[1].label, reference.label)
    assert not val[1].fov[:100].any() and np.array_equal(val[1].fov[100:], reference.fov[100:])


def test_a_stare_style_folder_with_two_observers_and_its_errors(tmp_path, data_dir):
    from qsegment.datasets import LabelledFolder

    for i, name in enumerate(("Image_11L", "Image_12R"), start=1):
        s1, s2 = load_sample(data_dir, name), load_sample(data_dir, name, observer=2)
        _save(np.round(s1.image * 255).astype(np.uint8), tmp_path / f"im000{i}.ppm")
        _save(s1.label.astype(np.uint8) * 255, tmp_path / f"im000{i}.ah.ppm")
        _save(s2.label.astype(np.uint8) * 255, tmp_path / f"im000{i}.vk.ppm")
    folder = LabelledFolder(tmp_path)
    assert folder.names() == ["im0001", "im0002"] and folder.observers == 2
    assert np.array_equal(folder.sample("im0002", 2).label,
                          load_sample(data_dir, "Image_12R", observer=2).label)
    (tmp_path / "im0002.ah.ppm").rename(tmp_path / "im0003.ah.ppm")
    with pytest.raises(DatasetError, match=r"im0002\.ppm: no vessel label matches this image"):
        LabelledFolder(tmp_path)
    _save(np.zeros((10, 10), np.uint8), tmp_path / "im0002.ah.ppm")
    with pytest.raises(DatasetError, match=r"im0003\.ah\.ppm: no image matches this file"):
        LabelledFolder(tmp_path)
    (tmp_path / "im0003.ah.ppm").unlink()
    with pytest.raises(DatasetError, match=r"im0002\.ah\.ppm: label is 10x10 but its image"):
        LabelledFolder(tmp_path).sample("im0002")


def test_evaluate_scores_a_partial_chase_copy_as_your_own_images(small_copy, capsys):
    """Two CHASE_DB1 images are not the paper's split: they are scored as a labelled
    folder, both of them, with the second observer."""
    from qsegment.cli import main

    assert main(["evaluate", "qsegment-nearest", "--data", str(small_copy),
                 "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "pooled over 2 validation images" in out and "second observer vs first" in out
    assert main(["evaluate", "qsegment-nearest", "--data", str(small_copy), "--tta",
                 "flip"]) == 2
    assert "has none: score without --tta" in capsys.readouterr().err

"""read_image / read_mask: every PIL mode, EXIF orientation, in-memory arrays, broken files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_trees import write_rgb
from vqflow.data import Record, read_image, read_mask
from vqflow.errors import VQFlowError


def _rgb(path) -> np.ndarray:
    img = read_image(path)
    assert img.mode == "RGB"
    return np.asarray(img)


def test_rgb_png_roundtrip(tmp_path):
    arr = write_rgb(tmp_path / "a.png", 1)
    np.testing.assert_array_equal(_rgb(tmp_path / "a.png"), arr)


def test_grayscale_repeated_to_three_channels(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, (9, 11), dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    out = _rgb(tmp_path / "g.png")
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_la_and_rgba_opaque_keep_colour_and_transparent_become_black(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    alpha = np.full((8, 8), 255, np.uint8)
    alpha[:, :4] = 0
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "a.png")
    out = _rgb(tmp_path / "a.png")
    np.testing.assert_array_equal(out[:, 4:], rgb[:, 4:])
    assert (out[:, :4] == 0).all()
    Image.fromarray(np.dstack([rgb[:, :, 0], alpha]), "LA").save(tmp_path / "la.png")
    out = _rgb(tmp_path / "la.png")
    np.testing.assert_array_equal(out[:, 4:, 1], rgb[:, 4:, 0])
    assert (out[:, :4] == 0).all()


def test_palette_image_matches_its_rgb_conversion(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (10, 10, 3), dtype=np.uint8)
    pal = Image.fromarray(rgb, "RGB").quantize(16)
    pal.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(_rgb(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))


def test_sixteen_bit_scaled_not_clipped(tmp_path):
    a16 = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    Image.fromarray(a16).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    out = _rgb(tmp_path / "d.png")
    np.testing.assert_array_equal(out[:, :, 0], np.rint(a16 / 257.0).astype(np.uint8))
    assert out.max() == 255 and out.min() == 0 and len(np.unique(out)) > 32


def test_cmyk_and_bilevel(tmp_path):
    rgb = np.random.default_rng(4).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    cmyk = Image.fromarray(rgb, "RGB").convert("CMYK")
    cmyk.save(tmp_path / "c.jpg", quality=100)
    assert _rgb(tmp_path / "c.jpg").shape == (6, 6, 3)
    bits = np.random.default_rng(5).random((7, 9)) > 0.5
    Image.fromarray(bits).convert("1").save(tmp_path / "b.png")
    out = _rgb(tmp_path / "b.png")
    np.testing.assert_array_equal(out[:, :, 2] > 0, bits)


def test_exif_orientation_applied(tmp_path):
    arr = write_rgb(tmp_path / "plain.png", 6, size=(12, 8))  # 12 wide, 8 high
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=100, subsampling=0)
    out = _rgb(tmp_path / "rot.jpg")
    assert out.shape == (12, 8, 3)
    expected = np.rot90(arr, k=-1)  # clockwise
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 12


def test_record_with_array(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = np.asarray(read_image(Record("cifar10:x#0", 0, "c", array=gray)))
    np.testing.assert_array_equal(out[:, :, 1], gray)
    col = np.random.default_rng(0).integers(0, 256, (5, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(read_image(Record("m:y#1", 1, "c", array=col))), col)
    with pytest.raises(VQFlowError, match="m:z#2"):
        read_image(Record("m:z#2", 0, "c", array=col.astype(np.float32)))


def test_missing_truncated_and_non_image_files_name_the_path(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(VQFlowError, match="cannot read image .*nope.png"):
        read_image(missing)
    write_rgb(tmp_path / "full.png", 3, size=(64, 64))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(VQFlowError, match="cut.png"):
        read_image(tmp_path / "cut.png")
    write_rgb(tmp_path / "full.jpg", 3, size=(64, 64), fmt="JPEG")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(VQFlowError, match="cut.jpg"):
        read_image(Record(str(tmp_path / "cut.jpg"), 0, "c"))
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(VQFlowError, match="text.png"):
        read_image(tmp_path / "text.png")


@pytest.mark.parametrize("mode", ["L", "RGB", "P", "I;16", "1", "RGBA"])
def test_read_mask_binarises_any_mode(tmp_path, mode):
    truth = np.zeros((6, 7), bool)
    truth[1:4, 2:6] = True
    base = Image.fromarray(truth.astype(np.uint8) * 255, "L")
    if mode == "I;16":
        img = Image.fromarray(truth.astype(np.uint16) * 1000)
    elif mode == "RGBA":
        img = Image.merge("RGBA", [base, base, base, Image.new("L", base.size, 255)])
    else:
        img = base.convert(mode)
    img.save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), truth)


def test_read_mask_zero_one_values_and_missing(tmp_path):
    truth = np.eye(5, dtype=bool)
    Image.fromarray(truth.astype(np.uint8), "L").save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), truth)
    with pytest.raises(VQFlowError, match="gone_mask.png"):
        read_mask(tmp_path / "gone_mask.png")


@pytest.mark.parametrize(
    ("size", "mean", "std"),
    [((9, 11), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((5, 7), (0.5, 0.25, 0.0), (0.5, 2.0, 1.0))],
)
def test_model_input_is_the_normalised_lanczos_resize(size, mean, std):
    """(x / 255 - mean) / std per channel, channels first, computed here in float64."""
    from vqflow.imageio import model_input

    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8))
    x = model_input(img, size, mean, std)
    pixels = np.asarray(img.resize(size[::-1], Image.Resampling.LANCZOS), dtype=np.float64)
    expected = ((pixels / 255.0 - np.asarray(mean)) / np.asarray(std)).transpose(2, 0, 1)
    assert x.dtype == np.float32 and x.shape == (3, *size) and x.flags.c_contiguous
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-6)

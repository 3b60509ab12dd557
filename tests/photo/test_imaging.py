"""Decoding: complete or not at all, oriented, RGB, bounded size, JPEG downscaled during decode."""

import pytest
from PIL import Image, JpegImagePlugin

from bbsd.errors import IncompletePhotoError, PhotoError
from bbsd.photo import decode as imaging
from tests.conftest import jpeg_bytes, make_photo


def test_exif_orientation_is_applied(tmp_path):
    photo = make_photo(tmp_path / "rot.jpg", size=(400, 200), orientation=6)
    d = imaging.decode(photo, max_side=1000)
    assert (d.width, d.height) == (200, 400)
    assert d.image.size == (200, 400)


def test_longest_side_is_bounded_and_jpeg_uses_draft(tmp_path, monkeypatch):
    photo = make_photo(tmp_path / "big.jpg", size=(2000, 1000))
    drafts = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        drafts.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    d = imaging.decode(photo, max_side=256)
    assert max(d.image.size) == 256 and (d.width, d.height) == (2000, 1000)
    assert drafts == [(500, 250)]  # the DCT decoded at 1/4 scale: 16x fewer pixels


def test_alpha_is_flattened_to_rgb(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGBA", (50, 40), (255, 0, 0, 0)).save(path)
    d = imaging.decode(path, 100)
    assert d.image.mode == "RGB" and d.image.getpixel((5, 5)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["CMYK", "P", "L", "I;16"])
def test_other_modes_become_rgb(tmp_path, mode):
    path = tmp_path / f"m.{'tif' if mode in ('CMYK', 'I;16') else 'png'}"
    Image.new(mode, (30, 20)).save(path)
    assert imaging.decode(path, 100).image.mode == "RGB"


def test_truncated_jpeg_is_incomplete_not_half_decoded(tmp_path):
    data = jpeg_bytes(size=(640, 480))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IncompletePhotoError) as e:
        imaging.decode(path, 256)
    assert e.value.code == "truncated"


def test_empty_and_non_image_files(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not a photo\n" * 20)
    with pytest.raises(IncompletePhotoError, match="empty"):
        imaging.decode(tmp_path / "zero.jpg", 256)
    with pytest.raises(PhotoError) as e:
        imaging.decode(tmp_path / "text.jpg", 256)
    assert e.value.code == "not_an_image" and not isinstance(e.value, IncompletePhotoError)


def test_pixel_limit_is_checked_on_what_is_decoded(tmp_path):
    png = make_photo(tmp_path / "big.png", size=(400, 400), fmt="PNG")
    with pytest.raises(PhotoError) as e:
        imaging.decode(png, 256, max_pixels=100 * 100)  # a PNG is decoded at full size: refused
    assert e.value.code == "too_large" and "max_megapixels" in e.value.hint
    jpeg = make_photo(tmp_path / "big.jpg", size=(1600, 1600))
    assert imaging.decode(jpeg, 100, max_pixels=300 * 300).image.size == (100, 100)  # DCT-scaled to 200 px first
    with pytest.raises(PhotoError, match="scaled for decoding"):
        imaging.decode(jpeg, 100, max_pixels=150 * 150)


def test_capture_time_has_the_shots_fraction_of_a_second_and_its_zone(tmp_path):
    """A camera at 10 frames a second writes ten shots into one DateTimeOriginal second: the
    SubSecTimeOriginal orders them. OffsetTimeOriginal, where written, makes the time absolute."""
    from datetime import datetime, timedelta, timezone

    def shot(name, subsec=None, offset=None):
        exif = Image.Exif()
        ifd = exif.get_ifd(0x8769)
        ifd[0x9003] = "2026:11:24 19:30:05"
        if subsec is not None:
            ifd[0x9291] = subsec
        if offset is not None:
            ifd[0x9011] = offset
        path = tmp_path / name
        Image.new("RGB", (32, 24)).save(path, exif=exif)
        return imaging.capture_time(path)

    local = datetime(2026, 11, 24, 19, 30, 5).timestamp()
    assert shot("plain.jpg") == local
    assert shot("a.jpg", "07") < shot("b.jpg", "3") < shot("c.jpg", "95")  # 0.07 < 0.3 < 0.95
    assert shot("c2.jpg", "95") == pytest.approx(local + 0.95)
    zoned = datetime(2026, 11, 24, 19, 30, 5, tzinfo=timezone(timedelta(hours=-5))).timestamp()
    assert shot("ny.jpg", "5", "-05:00") == pytest.approx(zoned + 0.5)
    assert shot("odd.jpg", "n/a", "local") == local  # unreadable extras are ignored, not the time
    assert imaging.exif_time("2026:11:24 19:30:05", "\xb2") == local  # Latin-1 "²": a digit to isdigit()

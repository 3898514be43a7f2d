"""The folder pipeline's pixel limit (input_pipeline.MAX_IMAGE_PIXELS): an
image whose header declares more pixels is a bad image, never decoded."""

import numpy as np
import pytest
from PIL import Image

from dcgan_jax.data import input_pipeline as ip

_FORMATS = ('png', 'jpg', 'gif', 'bmp')


@pytest.fixture
def folder(tmp_path):
  """40 x 30 = 1,200-pixel images in each format the folder reader takes."""
  rng = np.random.default_rng(0)
  for ext in _FORMATS:
    pixels = rng.integers(0, 256, (30, 40, 3), np.uint8)
    Image.fromarray(pixels).save(tmp_path / f'im_{ext}.{ext}')
  return tmp_path


def _load(folder, **kwargs):
  return ip.load_images(
    dataset=f'folder:{folder}', image_size=8, num_channels=3, **kwargs
  )


def test_images_over_the_pixel_limit_are_bad_images(folder, monkeypatch, caplog):
  assert ip.MAX_IMAGE_PIXELS == 2**28
  monkeypatch.setattr(ip, 'MAX_IMAGE_PIXELS', 1_200)  # Exactly at the limit: read.
  assert _load(folder).shape == (4, 8, 8, 3)
  monkeypatch.setattr(ip, 'MAX_IMAGE_PIXELS', 1_199)
  names = ', '.join(f'im_{ext}.{ext}' for ext in sorted(_FORMATS))
  with pytest.raises(ValueError) as e:
    _load(folder)
  assert str(e.value) == (
    f'4 of 4 images in {folder} cannot be decoded, e.g. {names} (first 5 '
    f'listed); of these, {names} declare more than MAX_IMAGE_PIXELS=1,199 '
    "pixels: fix or remove them, or set config.bad_images='skip'."
  )
  # A PNG header declaring 100,000 x 100,000 pixels (40 GB decoded), with
  # 'skip': left out with a warning, never decoded.
  monkeypatch.setattr(ip, 'MAX_IMAGE_PIXELS', 2**28)
  png = (folder / 'im_png.png').read_bytes()
  huge = bytearray(png)
  huge[16:24] = (100_000).to_bytes(4, 'big') * 2  # IHDR width, height.
  (folder / 'zz_huge.png').write_bytes(bytes(huge))
  with caplog.at_level('WARNING'):
    assert _load(folder, bad_images='skip').shape == (4, 8, 8, 3)
  assert (
    'of these, zz_huge.png declare more than MAX_IMAGE_PIXELS=268,435,456 pixels'
    in caplog.text
  )
  assert "config.bad_images='skip' leaves them out" in caplog.text

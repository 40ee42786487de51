import cv2
import numpy as np
import torch

from nitrogen.inference.preprocessing import preprocess, resize_frame, to_pixels


def test_normalisation_maps_0_and_255_to_minus_one_and_one():
    frame = np.zeros((2, 2, 3), np.uint8)
    frame[0, 0] = 255
    frame[1, 1] = (0, 128, 255)
    x = to_pixels(frame[None])
    assert x.shape == (1, 3, 2, 2) and x.dtype == torch.float32
    assert x[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert x[0, :, 0, 1].tolist() == [-1.0, -1.0, -1.0]
    # Channels stay in RGB order: CHW[c] is the frame's channel c.
    assert torch.allclose(x[0, :, 1, 1], torch.tensor([-1.0, 128 / 255 * 2 - 1, 1.0]), atol=1e-6)


def test_resize_is_inter_area_squash():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)
    out = resize_frame(frame, 256)
    np.testing.assert_array_equal(out, cv2.resize(frame, (256, 256), interpolation=cv2.INTER_AREA))
    same = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    assert resize_frame(same, 256) is same
    assert preprocess(frame, 256).shape == (1, 3, 256, 256)

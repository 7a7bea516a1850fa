"""twinhpc.kernels.image: the fused kernel equals the numpy reference bit for bit."""

import numpy as np
import pytest

from twinhpc.kernels import image

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def params(n, pad, seed=0, flip=True):
    return image.augment_params(image.batch_rng(seed, 1, 2, 3), n, pad=pad, flip=flip)


@pytest.mark.parametrize("layout", image.LAYOUTS)
@pytest.mark.parametrize("pad", [0, 1, 4, 40])  # 40 > 32: a crop may miss the image entirely
@pytest.mark.parametrize("parallel", [False, True])
def test_kernel_equals_reference(layout, pad, parallel):
    x = image.synthetic_batch(16, 32, 32, 3, seed=pad)
    offsets, flips = params(16, pad, seed=pad)
    got = image.normalize_augment(x, MEAN, STD, offsets=offsets, flips=flips, pad=pad, layout=layout, parallel=parallel)
    want = image.normalize_augment_reference(x, MEAN, STD, offsets=offsets, flips=flips, pad=pad, layout=layout)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_reference_steps_by_hand():
    """One image, shifted down-right by one pixel and flipped: the padded corner is black."""
    x = np.arange(2 * 3 * 2, dtype=np.uint8).reshape(1, 2, 3, 2) * 10
    y = image.normalize_augment_reference(x, [0, 0], [1, 1], offsets=[[0, 0]], flips=[True], pad=1, layout="NHWC")
    shifted = np.zeros_like(x)
    shifted[0, 1:, 1:] = x[0, :-1, :-1]
    np.testing.assert_array_equal(y, (shifted[:, :, ::-1] / np.float32(255)).astype(np.float32))


def test_without_augmentation_it_normalises_and_transposes():
    x = image.synthetic_batch(3, 5, 7, 3)
    y = image.normalize_augment(x, MEAN, STD)
    want = ((x.astype(np.float32) / 255 - np.float32(MEAN)) / np.float32(STD)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


def test_writes_into_out():
    x = image.synthetic_batch(2, 4, 4, 3)
    out = np.empty((2, 3, 4, 4), np.float32)
    assert image.normalize_augment(x, MEAN, STD, out=out) is out


def test_same_seed_same_draws_and_streams_differ():
    a, b = params(64, 4), params(64, 4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    others = [image.augment_params(image.batch_rng(0, r, 0, k), 64, pad=4)[0] for r, k in ((0, 1), (1, 0))]
    assert not np.array_equal(others[0], others[1])  # (rank 0, batch 1) != (rank 1, batch 0)
    assert a[0].min() >= 0 and a[0].max() <= 8 and 0 < a[1].sum() < 64
    assert not params(8, 4, flip=False)[1].any()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(x=np.zeros((2, 4, 4, 3), np.float32)), "x"),
        (dict(x=np.zeros((4, 4, 3), np.uint8)), "x"),
        (dict(mean=(0.5, 0.5), std=(0.2, 0.2)), "mean"),
        (dict(std=(0.2, 0.2)), "std"),
        (dict(std=(0.2, 0.0, 0.2)), "std"),
        (dict(layout="CHW"), "layout"),
        (dict(pad=-1), "pad"),
        (dict(offsets=np.zeros((2, 3), np.int64)), "offsets"),
        (dict(offsets=np.full((2, 2), 3), pad=1), "offsets"),
        (dict(flips=np.zeros(3, bool)), "flips"),
        (dict(out=np.zeros((2, 4, 4, 3), np.float32)), "out"),
    ],
)
def test_bad_arguments_are_named(kwargs, name):
    args = dict(x=np.zeros((2, 4, 4, 3), np.uint8), mean=MEAN, std=STD) | kwargs
    with pytest.raises(ValueError, match=f"^{name}:"):
        image.normalize_augment(args.pop("x"), args.pop("mean"), args.pop("std"), **args)


def test_augment_params_reject_bad_values():
    rng = np.random.default_rng(0)
    for kwargs, name in (
        (dict(n=-1, pad=1), "n"),
        (dict(n=1, pad=-1), "pad"),
        (dict(n=1, pad=1, flip_probability=2.0), "flip_probability"),
    ):
        with pytest.raises(ValueError, match=f"^{name}:"):
            image.augment_params(rng, **kwargs)


def test_the_image_check_takes_torch_tensors_too():
    """The CUDA kernels take torch tensors (``__cuda_array_interface__``): the shared check
    reads a torch dtype without numpy, accepting uint8 and naming anything else."""
    import torch

    from twinhpc.kernels.image import _check_images

    _check_images(torch.zeros((2, 4, 4, 3), dtype=torch.uint8))
    with pytest.raises(ValueError, match="torch.float32"):
        _check_images(torch.zeros((2, 4, 4, 3)))
    with pytest.raises(ValueError, match="shape"):
        _check_images(torch.zeros((4, 4, 3), dtype=torch.uint8))

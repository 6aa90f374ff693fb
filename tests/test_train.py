"""Data, supernet training, checkpoints, distributed training and subnet accuracy."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from hwnas.data import DataError, Dataset, cifar, digits, image_folder, load_dataset
from hwnas.evaluate import recalibrate_bn, subnet_accuracy
from hwnas.train import (TrainConfig, TrainError, load_checkpoint, load_supernet, train)


@pytest.fixture(scope="module")
def data():
    tr, va = digits(32)
    # a small, fixed slice keeps the tests fast
    return Dataset(tr.images[:256], tr.labels[:256], 10, "t"), Dataset(
        va.images[:128], va.labels[:128], 10, "v")


def test_digits_split_is_fixed_and_disjoint():
    tr, va = digits(40)
    assert tr.images.shape[1:] == (3, 40, 40) and len(tr) + len(va) == 1797
    assert set(va.labels.tolist()) == set(range(10))
    tr2, va2 = digits(40)
    assert torch.equal(va.images, va2.images)


def test_digits_hard_is_a_fixed_distortion_of_digits():
    from hwnas.data import digits_hard

    (tr, va), (htr, hva) = digits(32), digits_hard(32)
    assert torch.equal(tr.labels, htr.labels) and torch.equal(va.labels, hva.labels)
    assert hva.images.shape == va.images.shape
    assert (hva.images - va.images).abs().mean() > 0.2  # the validation images really changed
    _, again = load_dataset("digits-hard", 32, seed=0)
    assert torch.equal(again.images, hva.images)  # the same task every time
    # training sees the clean digits, distorted afresh by the same augmentation
    assert torch.equal(htr.images, tr.images) and htr.augment is not None
    assert tr.augment is None and va.augment is None and hva.augment is None
    seen = htr.augment(htr.images, torch.Generator().manual_seed(1))
    assert float(seen.std()) == pytest.approx(float(hva.images.std()), rel=0.05)


def test_digits_hard_copies_are_distorted_differently():
    from hwnas.data import digits_hard

    _, va = digits_hard(32)
    _, va3 = digits_hard(32, val_copies=3)
    assert len(va3) == 3 * len(va)
    assert torch.equal(va3.labels, va.labels.repeat(3))
    n = len(va)
    assert (va3.images[:n] - va3.images[n:2 * n]).abs().mean() > 0.2  # not the same copy
    with pytest.raises(DataError, match="val_copies must be >= 1"):
        digits_hard(32, val_copies=0)


def test_augment_draws_from_its_generator_only():
    from hwnas.data import BLACK, NATURAL, Augment

    x, _ = next(digits(32)[0].batches(16, False))
    assert torch.allclose(Augment()(x, torch.Generator()), x, atol=1e-5)  # identity
    assert torch.allclose(Augment(flip=1.0)(x, torch.Generator()), x.flip(-1), atol=1e-5)
    a = NATURAL(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, NATURAL(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, NATURAL(x, torch.Generator().manual_seed(4)))
    # zoomed out by 2: the border comes from outside the image and is black
    white = torch.full((2, 3, 32, 32), 2.0)
    small = Augment(zoom=(0.5, 0.5))(white, torch.Generator())
    assert torch.allclose(small[:, :, 0, 0], BLACK.view(1, 3).expand(2, 3))
    assert torch.allclose(small[:, :, 16, 16], white[:, :, 16, 16])
    noisy = Augment(noise=0.5)(x, torch.Generator().manual_seed(0))
    assert float((noisy - x).std()) == pytest.approx(0.5, rel=0.05)
    with pytest.raises(DataError, match="zoom=.*0 < zoom low <= high"):
        Augment(zoom=(1.2, 0.8))
    with pytest.raises(DataError, match="flip=2"):
        Augment(flip=2)


def test_batches_are_augmented_only_when_asked_and_the_set_has_augmentation():
    from hwnas.data import NATURAL

    tr, _ = digits(32)
    aug = Dataset(tr.images, tr.labels, 10, "a", NATURAL)
    g = torch.Generator
    plain = next(aug.batches(8, False))[0]
    assert torch.equal(plain, tr.images[:8])
    assert not torch.equal(next(aug.batches(8, False, augment=g().manual_seed(0)))[0], plain)
    assert torch.equal(next(tr.batches(8, False, augment=g().manual_seed(0)))[0], plain)


def test_model_input_is_the_resized_batch_in_channels_last_layout():
    from hwnas.data import model_input, resize

    tr, _ = digits(48)
    x = tr.images[:4]
    y = model_input(x, 32)
    assert y.shape == (4, 3, 32, 32)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    assert torch.equal(y, resize(x, 32))  # same values, other layout


def test_bad_dataset_paths_are_clear(tmp_path):
    with pytest.raises(DataError, match="unknown data set 'mnist'"):
        load_dataset("mnist", 32)
    with pytest.raises(DataError, match="is not a directory"):
        load_dataset(f"imagefolder:{tmp_path / 'none'}", 32)
    with pytest.raises(DataError, match="no class sub-directories"):
        image_folder(tmp_path, 32)
    with pytest.raises(DataError, match=r"lacks \['data_batch_1.bin"):
        cifar(tmp_path, 32)
    (tmp_path / "data_batch_1").write_bytes(b"x")
    with pytest.raises(DataError, match="pickle"):
        cifar(tmp_path, 32)
    for i in range(1, 6):
        (tmp_path / f"data_batch_{i}.bin").write_bytes(b"\x00" * 100)
    (tmp_path / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="not a CIFAR-10 binary file"):
        cifar(tmp_path, 32)


def test_image_folder_and_cifar_binary_read(tmp_path):
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / "img" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 20), (i * 40, 10, 200)).save(tmp_path / "img" / c / f"{i}.png")
    tr, va = image_folder(tmp_path / "img", 16, workers=0)
    x, y = next(tr.batches(8, False))
    assert x.shape[1:] == (3, 16, 16) and len(tr) + len(va) == 6 and len(x) == len(tr)
    assert tr.num_classes == 2 and set(y.tolist()) <= {0, 1}
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rec = np.concatenate([rng.integers(0, 10, (4, 1)), rng.integers(0, 256, (4, 3072))], 1)
        rec.astype(np.uint8).tofile(tmp_path / name)
    tr, va = cifar(tmp_path, 32)
    assert len(tr) == 20 and len(va) == 4 and tr.images.shape[1:] == (3, 32, 32)


def test_a_few_steps_reduce_the_loss(small, data, tmp_path):
    tr, _ = data
    cfg = TrainConfig(epochs=4, batch_size=64, lr=0.1, warmup_epochs=0, n_random=1)
    res = train(small, tr, cfg, tmp_path, progress=False)
    losses = [h["loss"] for h in res.history]
    assert losses[-1] < losses[0] - 0.1


def test_resume_reproduces_the_uninterrupted_run(small, data, tmp_path):
    tr, _ = data
    cfg = TrainConfig(epochs=3, batch_size=64, n_random=1)
    full = train(small, tr, cfg, tmp_path / "full", progress=False)
    # interrupted after epoch 1 (its checkpoint kept), then resumed
    first = train(small, tr, dataclasses.replace(cfg), tmp_path / "cut", progress=False,
                  max_steps=4)
    assert first.epochs_done == 1
    resumed = train(small, tr, cfg, tmp_path / "cut", progress=False)
    a = load_checkpoint(full.checkpoint, small)["model"]
    b = load_checkpoint(resumed.checkpoint, small)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(TrainError, match="other settings"):
        train(small, tr, dataclasses.replace(cfg, lr=0.5), tmp_path / "cut", progress=False)


def test_training_distorts_batches_with_the_sets_augmentation(small, data, tmp_path):
    from hwnas.data import NATURAL

    tr, _ = data
    augmented = dataclasses.replace(tr, augment=NATURAL)
    cfg = TrainConfig(epochs=1, batch_size=64, n_random=0)

    def weights(ds, c, name):
        res = train(small, ds, c, tmp_path / name, progress=False, max_steps=2)
        return torch.cat([p.detach().flatten() for p in res.net.parameters()])

    plain = weights(tr, cfg, "plain")
    assert torch.equal(plain, weights(augmented, dataclasses.replace(cfg, augment=False), "off"))
    assert not torch.equal(plain, weights(augmented, cfg, "on"))


def test_calibration_sees_training_images_as_training_does(data):
    from hwnas.data import NATURAL
    from hwnas.evaluate import calibration_batches

    tr, _ = data
    augmented = dataclasses.replace(tr, augment=NATURAL)
    a = calibration_batches(augmented, 2, 32, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a, calibration_batches(augmented, 2, 32, 5)))
    assert not any(torch.equal(x, y) for x, y in zip(a, calibration_batches(tr, 2, 32, 5)))


def test_checkpoints_are_safe_and_space_checked(small, default, data, tmp_path):
    tr, _ = data
    res = train(small, tr, TrainConfig(epochs=2, batch_size=128, n_random=0), tmp_path,
                progress=False, max_steps=1)
    state = torch.load(res.checkpoint, weights_only=True)  # no pickle of arbitrary objects
    assert state["space_id"] == small.id
    with pytest.raises(TrainError, match="space 'small'"):
        load_checkpoint(res.checkpoint, default)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(TrainError, match="not a readable"):
        load_checkpoint(tmp_path / "junk.pt")

    class Code:
        def __reduce__(self):
            return (print, ("this ran",))

    torch.save({"format": 1, "model": Code()}, tmp_path / "code.pt")
    with pytest.raises(TrainError, match="beyond tensors.*never code") as refused:
        load_checkpoint(tmp_path / "code.pt")
    assert "weights_only" not in str(refused.value)  # never advise loading it unsafely
    assert load_supernet(res.checkpoint).space == small


def test_bad_settings():
    with pytest.raises(TrainError, match="label_smoothing=1.5"):
        TrainConfig(label_smoothing=1.5)
    with pytest.raises(TrainError, match="warmup_epochs"):
        TrainConfig(epochs=1, warmup_epochs=2)
    with pytest.raises(TrainError, match="smallest_resolution='max'.*random or min"):
        TrainConfig(smallest_resolution="max")
    # the other methods draw subnets without phases: a silently ignored flag is refused
    with pytest.raises(TrainError, match="progressive=True is not allowed; must be False with "
                                         "method 'fairnas'"):
        TrainConfig(progressive=True, method="fairnas")


def test_progressive_shrinking_sorts_channels_once_as_expand_opens(small, data, tmp_path,
                                                                    monkeypatch):
    """OFA sorts middle channels by importance before the expand phase: once, at the first
    epoch of the last phase, without changing what the widest net computes; a run
    interrupted before that epoch and resumed ends where the uninterrupted one does."""
    from hwnas.data import model_input
    from hwnas.supernet import Supernet

    tr, _ = data
    x = model_input(tr.images[:8], small.largest().r)
    calls = []
    sort = Supernet.reorganize_channels

    def spy(net):
        net.eval()
        net.set_active(small.largest())
        before = net(x).detach()
        sort(net)
        calls.append((before, net(x).detach()))
        net.train()

    monkeypatch.setattr(Supernet, "reorganize_channels", spy)
    cfg = TrainConfig(epochs=3, batch_size=64, n_random=1, progressive=True)  # 4 steps/epoch
    full = train(small, tr, cfg, tmp_path / "full", progress=False)
    assert len(calls) == 1 and torch.allclose(*calls[0], atol=1e-5)
    assert [h.get("channels_reorganized", False) for h in full.history] == [False, False, True]
    first = train(small, tr, cfg, tmp_path / "cut", progress=False, max_steps=8)
    assert first.epochs_done == 2 and len(calls) == 1  # stopped before the last phase
    resumed = train(small, tr, cfg, tmp_path / "cut", progress=False)
    assert len(calls) == 2
    a = load_checkpoint(full.checkpoint, small)["model"]
    b = load_checkpoint(resumed.checkpoint, small)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the expand phase trains from the sorted channels: the run differs from one without
    monkeypatch.setattr(Supernet, "reorganize_channels", lambda net: None)
    unsorted = train(small, tr, cfg, tmp_path / "unsorted", progress=False)
    c = load_checkpoint(unsorted.checkpoint, small)["model"]
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_sandwich_trains_the_smallest_at_drawn_resolutions(small):
    from hwnas.train import sandwich_archs

    def smallest(mode, phase="all"):
        return [sandwich_archs(small, 2, np.random.default_rng(i), phase, mode)[1]
                for i in range(60)]

    assert all(a == small.smallest() for a in smallest("min"))
    drawn = smallest("random")
    assert {a.r for a in drawn} == set(small.resolutions)  # every resolution, nothing else
    assert all((a.d, a.k, a.e) == (small.smallest().d, small.smallest().k, small.smallest().e)
               for a in drawn)
    # the largest (the teacher) and the random archs are the same draws either way
    for i in range(5):
        lo, hi = (sandwich_archs(small, 2, np.random.default_rng(i), "all", m)
                  for m in ("min", "random"))
        assert lo[0] == hi[0] == small.largest() and lo[2:] == hi[2:]
    kernel_phase = smallest("random", "kernel")  # closed dimensions stay at their largest
    assert {a.r for a in kernel_phase} == set(small.resolutions)
    assert all(a.e == small.largest().e for a in kernel_phase)


def test_recalibration_changes_bn_stats_not_weights(small, data):
    from hwnas.supernet import Supernet

    tr, va = data
    net = Supernet(small).subnet(small.largest())
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k
               and "num_batches" not in k}
    before = net[0].bn.running_mean.clone()
    recalibrate_bn(net, [tr.images[:64], tr.images[64:128]])
    assert not torch.allclose(before, net[0].bn.running_mean)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in weights.items())
    # the recalibrated mean is the exact mean over both batches of the stem's conv output
    with torch.no_grad():
        conv = net[0].conv(tr.images[:128])
    assert torch.allclose(net[0].bn.running_mean, conv.mean((0, 2, 3)), atol=1e-5)
    assert not net.training


def test_subnet_accuracy_is_deterministic(small, data):
    from hwnas.supernet import Supernet

    tr, va = data
    torch.manual_seed(0)
    net = Supernet(small)
    archs = [small.largest(), small.smallest()] + small.sample(2, seed=1)
    a = subnet_accuracy(net, archs, tr, va, calib_batches=2, batch_size=64, seed=3)
    b = subnet_accuracy(net, archs, tr, va, calib_batches=2, batch_size=64, seed=3)
    assert np.array_equal(a, b) and a.shape == (4,) and np.all((a >= 0) & (a <= 1))


DDP_SCRIPT = r"""
import sys, torch, torch.distributed as dist
from hwnas.data import digits, Dataset
from hwnas.train import TrainConfig, train, init_distributed
torch.set_num_threads(1)
rank, world = init_distributed()
tr, _ = digits(32)
tr = Dataset(tr.images[:256], tr.labels[:256], 10, "t")
res = train("small", tr, TrainConfig(epochs=1, batch_size=32, n_random=1), sys.argv[1],
            progress=False, max_steps=3)
from hwnas.supernet import Supernet
flat = torch.cat([p.detach().flatten() for p in res.net.parameters()])
torch.save(flat, f"{sys.argv[1]}/rank{rank}.pt")
dist.destroy_process_group()
"""


def test_two_process_gloo_training_keeps_weights_identical(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", "29517", str(script), str(tmp_path)],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert torch.equal(w0, w1)
    from hwnas.supernet import Supernet

    torch.manual_seed(0)  # the trainer's initialisation (seed 0)
    fresh = torch.cat([p.detach().flatten() for p in Supernet("small").parameters()])
    assert not torch.equal(w0, fresh)  # it did train


def test_train_command_and_its_errors(tmp_path):
    cmd = [sys.executable, "-m", "hwnas", "train", "--space", "small", "--data", "digits",
           "--epochs", "1", "--n-random", "0", "--batch-size", "128", "--threads", "1",
           "--out", str(tmp_path / "run")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "after 1 epoch(s)" in r.stdout and "largest" in r.stdout
    assert (tmp_path / "run" / "last.pt").exists()
    bad = cmd[:6] + ["--data", f"cifar10:{tmp_path / 'nope'}"]
    r = subprocess.run(bad, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 2 and "is not a directory" in r.stderr and "Traceback" not in r.stderr

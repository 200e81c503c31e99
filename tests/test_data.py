"""Datasets: the built-in procedural shapes, captioned image folders and webdataset shards, bad-sample
skipping and counting, and the resumable step sampler."""
import io
import itertools
import re
import tarfile

import pytest
import torch
from PIL import Image

from gigagan.data import (COLOURS, CaptionedImageFolder, ShapesDataset, StepSampler, collate_pairs,
                          fixed_prompts, make_dataset, webdataset_pairs)

CAPTION_RE = re.compile(r"^a (small|large) (\w+) (circle|square|triangle) in the "
                        r"(top left|top right|bottom left|bottom right|center) on an? (\w+) background$")


def test_shapes_captions_match_pixels_and_are_deterministic():
    ds = ShapesDataset(32, size=64, seed=5)
    for i in range(64):
        image, caption = ds[i]
        m = CAPTION_RE.match(caption)
        assert m, caption
        assert image.shape == (3, 32, 32) and image.min() >= -1 and image.max() <= 1
        colour, background = m.group(2), m.group(5)
        assert colour != background and colour in COLOURS and background in COLOURS
        # the corner pixel is the background colour; the shape's colour is present where the caption says
        expected_bg = torch.tensor(COLOURS[background], dtype=torch.float32) / 127.5 - 1
        corner = {"top left": (31, 31), "top right": (31, 0), "bottom left": (0, 31), "bottom right": (0, 0),
                  "center": (0, 0)}[m.group(4)]
        assert torch.allclose(image[:, corner[0], corner[1]], expected_bg, atol=0.05)
        cx, cy = {"top left": (0.3, 0.3), "top right": (0.7, 0.3), "bottom left": (0.3, 0.7),
                  "bottom right": (0.7, 0.7), "center": (0.5, 0.5)}[m.group(4)]
        centre_pixel = image[:, int(cy * 32), int(cx * 32)]
        expected_fg = torch.tensor(COLOURS[colour], dtype=torch.float32) / 127.5 - 1
        assert torch.allclose(centre_pixel, expected_fg, atol=0.1), (caption, centre_pixel)
    again = ShapesDataset(32, size=64, seed=5)
    assert torch.equal(again[7][0], ds[7][0]) and again[7][1] == ds[7][1]
    other = ShapesDataset(32, size=64, seed=6)
    assert [other[i][1] for i in range(16)] != [ds[i][1] for i in range(16)]    # the seed matters
    big = ShapesDataset(128, size=64, seed=5)[7]
    assert big[0].shape == (3, 128, 128) and big[1] == ds[7][1]          # same scene at any resolution
    assert len(set(fixed_prompts(8))) == 8


def _png(colour, size=(20, 12)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def test_image_folder_skips_and_counts_bad_samples(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.png").write_bytes(_png((255, 0, 0)))
    (tmp_path / "a.txt").write_text("a red image")
    (tmp_path / "sub" / "b.png").write_bytes(_png((0, 0, 255)))
    (tmp_path / "sub" / "b.txt").write_text("a blue image\n")
    (tmp_path / "nocap.png").write_bytes(_png((0, 255, 0)))                   # no caption: skipped at index time
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # corrupt: a BadSample at load time
    (tmp_path / "broken.txt").write_text("broken")
    with pytest.warns(UserWarning, match="skipped 1 images without a .txt caption"):
        ds = CaptionedImageFolder(str(tmp_path), 16)
    assert len(ds) == 3 and ds.missing_captions == 1
    items = [ds[i] for i in range(len(ds))]
    images, captions, dropped = collate_pairs(items)
    assert dropped == {"unreadable image (OSError)": 1}
    assert sorted(captions) == ["a blue image", "a red image"]
    assert images.shape == (2, 3, 16, 16)
    red = images[captions.index("a red image")]
    assert torch.allclose(red[:, 8, 8], torch.tensor([1.0, -1.0, -1.0]))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        CaptionedImageFolder(str(tmp_path / "nope"), 16)


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards_skip_corrupt_samples(tmp_path):
    pytest.importorskip("webdataset")
    for shard in range(2):
        with tarfile.open(tmp_path / f"{shard:05d}.tar", "w") as tar:
            for k in range(3):
                key = f"{shard:05d}{k:04d}"
                if k == 1 and shard == 0:
                    _add(tar, f"{key}.jpg", b"garbage bytes")                 # corrupt image
                else:
                    _add(tar, f"{key}.png", _png((10 * k, 200, 30)))
                _add(tar, f"{key}.txt", f"caption {shard} {k}".encode())
                _add(tar, f"{key}.json", b"{}")
    ds = webdataset_pairs(str(tmp_path / "{00000..00001}.tar"), 8, shuffle=0)
    items = list(ds)
    assert len(items) == 6
    images, captions, dropped = collate_pairs(items)
    assert sum(dropped.values()) == 1 and len(captions) == 5 and images.shape == (5, 3, 8, 8)
    assert list(dropped) == ["unreadable image (UnidentifiedImageError)"]      # as the folder loader says
    assert "caption 0 1" not in captions
    loader = torch.utils.data.DataLoader(make_dataset(str(tmp_path / "{00000..00001}.tar"), 8), batch_size=3,
                                         collate_fn=collate_pairs)
    assert sum(sum(b[2].values()) for b in loader) == 1 and sum(len(b[1]) for b in loader) == 5


def test_make_dataset_rejects_unknown_specs(tmp_path):
    assert isinstance(make_dataset("builtin:10", 16), ShapesDataset) and len(make_dataset("builtin:10", 16)) == 10
    with pytest.raises(ValueError, match="--data must be"):
        make_dataset("imagenet", 16)
    with pytest.raises(FileNotFoundError, match="no shards match"):
        make_dataset(str(tmp_path / "missing-*.tar"), 16)


def test_step_sampler_resumes_and_shards_ranks():
    full = list(itertools.islice(iter(StepSampler(10, 3, seed=1)), 3 * 7))
    resumed = list(itertools.islice(iter(StepSampler(10, 3, seed=1, start_step=4)), 3 * 3))
    assert resumed == full[12:21]
    assert sorted(full[:10]) == list(range(10)) and sorted(full[10:20]) == list(range(10))   # one permutation per epoch
    assert full[:10] != full[10:20]
    r0 = list(itertools.islice(iter(StepSampler(12, 2, rank=0, world_size=2, seed=0)), 6))
    r1 = list(itertools.islice(iter(StepSampler(12, 2, rank=1, world_size=2, seed=0)), 6))
    assert not set(r0) & set(r1) and len(set(r0) | set(r1)) == 12                  # disjoint, covering the epoch


def _caption_shards(directory, shards=3, per_shard=5):
    for shard in range(shards):
        with tarfile.open(directory / f"{shard:05d}.tar", "w") as tar:
            for k in range(per_shard):
                key = f"{shard:05d}{k:04d}"
                _add(tar, f"{key}.png", _png((40 * shard, 20 * k, 90)))
                _add(tar, f"{key}.txt", f"shard {shard} sample {k}".encode())
    return str(directory) + "/{00000.." + f"{shards - 1:05d}" + "}.tar"


def _captions(dataset, workers, batches_seen, count, rank=0, world=1):
    workers = dataset.position(rank, world, 2, batches_seen, workers)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate_pairs, num_workers=workers)
    return [tuple(b[1]) for b in itertools.islice(loader, count)]


@pytest.mark.parametrize("workers", [0, 2])
def test_tar_shards_resume_exactly_where_the_run_stopped(tmp_path, workers):
    """A stream placed after n batches gives exactly batches n, n+1, ... of an uninterrupted one, across the
    end of a pass (15 samples, batches of 2), with dataloader workers or without."""
    from gigagan.data import TarShards
    urls = _caption_shards(tmp_path)
    whole = _captions(TarShards(urls, 8, shuffle=4, seed=7), workers, 0, 14)
    assert len(set(whole[:7])) == 7                                   # distinct batches within a pass
    for start in (1, 5, 9):
        assert _captions(TarShards(urls, 8, shuffle=4, seed=7), workers, start, 14 - start) == whole[start:], start
    if workers == 0:                  # (with workers, each reads its own shards pass after pass, as webdataset's)
        seen = [c for batch in whole[:7] for c in batch]
        assert len(set(seen)) == 14                                   # one pass reads each sample once
    other_seed = _captions(TarShards(urls, 8, shuffle=4, seed=8), workers, 0, 7)
    assert other_seed != whole[:7]


def test_tar_shards_split_across_ranks(tmp_path):
    from gigagan.data import TarShards
    urls = _caption_shards(tmp_path, shards=4, per_shard=2)
    ranks = [set(c for batch in _captions(TarShards(urls, 8, shuffle=0), 0, 0, 2, rank=r, world=2) for c in batch)
             for r in range(2)]
    assert not ranks[0] & ranks[1] and len(ranks[0] | ranks[1]) == 8
    empty = TarShards(urls, 8)
    assert empty.position(5, 8, 2, 0, 4) == 1 and list(empty) == []     # a rank with no shard gets no data


# ------------------------------------------------------------------------------------------------
# Every decoder failure is a counted sample, in the folder and the tar loader alike (issue 30, item 7)
# ------------------------------------------------------------------------------------------------
def _png_header(width, height):
    """A PNG that declares width x height but carries almost no pixels: opening it reads only the header."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _folder_and_shard(tmp_path, images):
    """The same (name, bytes) images, captioned, as an image folder and as one tar shard."""
    folder = tmp_path / "folder"
    folder.mkdir()
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        for name, data in images:
            (folder / f"{name}.png").write_bytes(data)
            (folder / f"{name}.txt").write_text(f"caption {name}")
            _add(tar, f"{name}.png", data)
            _add(tar, f"{name}.txt", f"caption {name}".encode())
    return str(folder), str(tmp_path / "{00000..00000}.tar")


def _dropped_by_loader(folder, shards, resolution=16):
    pytest.importorskip("webdataset")
    folder_items = [item for item in CaptionedImageFolder(folder, resolution)]
    tar_items = list(webdataset_pairs(shards, resolution, shuffle=0))
    return collate_pairs(folder_items)[2], collate_pairs(tar_items)[2]


def test_a_decompression_bomb_is_a_skipped_sample_in_every_loader(tmp_path, monkeypatch):
    """A 20000x20000 PNG used to stop training with DecompressionBombError (the folder loader caught OSError
    only). Now it is a counted sample in both loaders, and an image between PIL's limit and twice it (a warning
    only, in PIL) is refused from its header, before load() decodes a pixel."""
    from PIL import ImageFile
    too_large = f"image too large (over {Image.MAX_IMAGE_PIXELS} pixels, PIL's decompression-bomb limit)"
    folder, shards = _folder_and_shard(tmp_path, [("bomb", _png_header(20000, 20000)),
                                                  ("big", _png_header(10000, 10000)), ("good", _png((1, 2, 3)))])
    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self.size) or real_load(self))
    for dropped in _dropped_by_loader(folder, shards):
        assert dropped == {too_large: 2}
    assert loads and all(size == (20, 12) for size in loads)                # only the good image was decoded


def test_every_decoder_exception_is_a_counted_sample_in_every_loader(tmp_path, monkeypatch):
    from PIL import PngImagePlugin
    folder, shards = _folder_and_shard(tmp_path, [("a", _png((1, 2, 3))), ("b", _png((4, 5, 6)))])

    def broken_decoder(self):
        raise ZeroDivisionError("a decoder bug")
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", broken_decoder)
    for dropped in _dropped_by_loader(folder, shards):
        assert dropped == {"unreadable image (ZeroDivisionError)": 2}


def test_exif_orientation_is_applied(tmp_path):
    """A photo stored sideways with an EXIF orientation tag trains upright: here rotated 180 degrees, so the
    stored left half (red) ends up on the right."""
    image = Image.new("RGB", (32, 32), (255, 0, 0))
    image.paste((0, 0, 255), (16, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 3                                                     # Orientation: rotate 180
    buf = io.BytesIO()
    image.save(buf, format="PNG", exif=exif)
    folder, shards = _folder_and_shard(tmp_path, [("photo", buf.getvalue())])
    pytest.importorskip("webdataset")
    for tensor, _ in (CaptionedImageFolder(folder, 16)[0], next(iter(webdataset_pairs(shards, 16, shuffle=0)))):
        assert torch.allclose(tensor[:, 8, 2], torch.tensor([-1.0, -1.0, 1.0]))        # blue now on the left
        assert torch.allclose(tensor[:, 8, 13], torch.tensor([1.0, -1.0, -1.0]))


@pytest.mark.parametrize("stats", [True, False])
def test_a_truncated_shard_counts_the_samples_it_lost(tmp_path, stats):
    """A shard cut short in its third sample: with img2dataset's <shard>_stats.json the loss is exact (6 samples
    written, 2 read: 4 lost), without it one sample counts (the rest is unknown). The other shard is whole."""
    pytest.importorskip("webdataset")
    urls = _caption_shards(tmp_path, shards=2, per_shard=6)
    path = tmp_path / "00000.tar"
    with tarfile.open(path) as tar:
        cut = next(m for m in tar.getmembers() if m.name == "000000002.png").offset_data + 10
    path.write_bytes(path.read_bytes()[:cut])
    if stats:
        (tmp_path / "00000_stats.json").write_text('{"count": 6, "successes": 6}')
    with pytest.warns(UserWarning, match="tar shards"):
        items = list(webdataset_pairs(urls, 8, shuffle=0))
    images, captions, dropped = collate_pairs(items)
    assert sorted(captions) == ["shard 0 sample 0", "shard 0 sample 1"] + [f"shard 1 sample {k}" for k in range(6)]
    assert dropped == {"lost in a truncated shard": 4 if stats else 1}


def test_an_unreadable_image_folder_names_the_cause(tmp_path, monkeypatch):
    """A --data folder that cannot be listed (EACCES; injected, as root's chmod stops nothing) used to read as
    "no captioned images": os.walk skips what it cannot list without a word. Now the cause is the error; an
    unreadable subfolder beside readable images is a warning."""
    import errno
    import os

    from gigagan.data import DataError
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a caption")
    (tmp_path / "sub").mkdir()
    real_scandir = os.scandir
    denied = {str(tmp_path)}

    def scandir(path="."):
        if str(path) in denied:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_scandir(path)
    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match=f"cannot list {tmp_path}: Permission denied"):
        CaptionedImageFolder(str(tmp_path), 16)
    denied = {str(tmp_path / "sub")}
    with pytest.warns(UserWarning, match=f"skipped 1 folders that cannot be listed .*{tmp_path / 'sub'}: Permission"):
        assert len(CaptionedImageFolder(str(tmp_path), 16)) == 1

"""Fit the lesion gate of a model's weights (classifier.lesiongate): dermoscopic lesions against pictures that
are not, in the model's own pooled features.

    python -m classifier.training.lesiongate --model FILE --data DIR [--out GATE.json]

Lesions: the model's training images (validation images are kept for measuring). Other pictures: those that
ship inside scikit-image and matplotlib (photographs, faces, textures, documents, microscopy, figures) and
synthetic ones made here (solid colours, gradients, noise, a text page, a screenshot, skin-coloured fields with
and without a spot, as a rough stand-in for clinical close-ups taken without a dermatoscope), each seen in many
random crops, turns and colour changes, and the real ones also in close crops (2-20% of their area, as a phone
held a hand's width away frames skin, fur or brick). Nothing is downloaded.

The regression reads the model's pooled features and the picture statistics (classifier.lesiongate); the
envelope is the range of those statistics over every training image, widened by ``--envelope-margin`` of it on
each side. The threshold lets through all but ``--lesion-percentile`` of the training lesions' scores, and all
but ``--max-withheld`` of the validation lesions outside the locked split (whichever is higher). Printed, and kept
in the gate file: the share of other pictures withheld when their base picture was left out of the fit (5 folds
by base picture, per category; the envelope never sees them), the same for close crops of the two portraits'
skin with and without a drawn spot (``skin_closeups``; each scored by the gate fitted without its portrait), and
the share of validation lesions withheld per source.
"""

import argparse
import logging
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

log = logging.getLogger("classifier.training.lesiongate")


# Pictures that are not dermoscopic lesions ------------------------------------------------------------------

def package_pictures() -> dict[str, tuple[str, Image.Image]]:
    """{name: (category, image)} of the pictures that ship inside scikit-image and matplotlib."""
    import matplotlib
    import skimage

    out = {}
    categories = {
        "photograph": ["astronaut", "chelsea", "coffee", "motorcycle_left", "rocket", "hubble_deep_field", "camera"],
        "texture": ["brick", "grass", "gravel"],
        "document": ["page", "text"],
        "microscopy or medical": ["cell", "ihc", "microaneurysms", "retina", "phantom", "moon", "coins"],
        "figure": ["chessboard_RGB", "color", "logo", "horse", "clock_motion"],
    }
    folder = Path(skimage.__file__).parent / "data"
    for category, names in categories.items():
        for name in names:
            path = next((p for p in folder.glob(f"{name}.*") if p.suffix in (".png", ".jpg")), None)
            if path is not None:
                out[f"skimage {name}"] = (category, Image.open(path).convert("RGB"))
    faces = np.load(folder / "lfw_subset.npy")[:40]  # 25 x 25 grey face crops
    for i, face in enumerate(faces):
        out[f"lfw face {i}"] = ("face", Image.fromarray((face * 255).astype(np.uint8)).convert("RGB")
                                .resize((224, 224), Image.Resampling.BICUBIC))
    try:  # scikit-learn's two sample photographs, where it is installed (a development dependency)
        from sklearn.datasets import load_sample_images

        for name, array in zip(("china", "flower"), load_sample_images().images):
            out[f"sklearn {name}"] = ("photograph", Image.fromarray(array))
    except ImportError:
        pass
    samples = Path(matplotlib.get_data_path()) / "sample_data"
    for name, category in (("grace_hopper.jpg", "face"), ("Minduka_Present_Blue_Pack.png", "photograph"),
                           ("logo2.png", "figure")):
        if (samples / name).is_file():
            out[f"matplotlib {name}"] = (category, Image.open(samples / name).convert("RGB"))
    return out


CLOSE_CROP_AREA = (0.02, 0.2)  # close crops of a real picture: 2-20% of its area
CLOSE_CROP_MIN_SIDE = 200  # smaller pictures give no close crops


def close_crop_worthy(name: str, img: Image.Image) -> bool:
    """Real pictures with pixels to spare: not the LFW faces (25 px crops enlarged, a close crop of them is a
    few pixels)."""
    return not name.startswith("lfw ") and min(img.size) >= CLOSE_CROP_MIN_SIDE


# Skin photographed without a dermatoscope, as it ships: the cheeks, chin and neck of the two portraits above
# (scikit-image's astronaut, Eileen Collins; matplotlib's Grace Hopper), boxes in the pictures' own pixels.
PORTRAIT_SKIN = {
    "skimage astronaut": [("left cheek", (182, 122, 207, 150)), ("right cheek", (243, 122, 268, 150)),
                          ("chin", (207, 160, 243, 180))],
    "matplotlib grace_hopper.jpg": [("left cheek", (178, 232, 226, 292)), ("right cheek", (298, 232, 346, 292)),
                                    ("chin", (232, 300, 290, 330)), ("neck", (236, 340, 300, 378))],
}


def skin_closeups(pictures: dict | None = None, size: int = 256) -> dict[str, tuple[str, Image.Image]]:
    """Real skin photographed without a dermatoscope: each region of ``PORTRAIT_SKIN`` enlarged as a phone's
    close-up would frame it, as it is and with a drawn brown spot. The fit does not take these crops as they
    are (it takes random views and close crops of the whole portraits, which can cover the same skin); it scores
    each with the gate fitted without its portrait. A small stand-in for real clinical close-ups (two people,
    no real lesion)."""
    pictures = pictures if pictures is not None else package_pictures()
    rng = np.random.default_rng(43)
    out = {}
    for base, regions in PORTRAIT_SKIN.items():
        if base not in pictures:
            continue
        for region, box in regions:
            crop = pictures[base][1].crop(box).resize((size, size), Image.Resampling.BICUBIC)
            out[f"{base} {region}"] = ("skin photographed without a dermatoscope", crop)
            spotted = crop.copy()
            draw = ImageDraw.Draw(spotted)
            cx, cy = rng.uniform(0.35, 0.65, 2) * size
            r = rng.uniform(0.08, 0.18) * size
            red = rng.uniform(80, 150)
            green = red * rng.uniform(0.55, 0.7)
            colour = np.array([red, green, green * rng.uniform(0.6, 0.85)])  # shades of brown
            for _ in range(4):  # an irregular blob: overlapping ellipses of close shades
                dx, dy = rng.normal(0, r / 3, 2)
                rr = r * rng.uniform(0.5, 1.0)
                draw.ellipse((cx + dx - rr, cy + dy - rr * rng.uniform(0.6, 1.2), cx + dx + rr, cy + dy + rr),
                             fill=tuple(int(v) for v in colour * rng.uniform(0.85, 1.15)))
            out[f"{base} {region} with a spot"] = ("skin photographed without a dermatoscope",
                                                   spotted.filter(ImageFilter.GaussianBlur(2)))
    return out


def skin_field(rng, size=512, spot=True) -> Image.Image:
    """A skin-coloured field with smooth texture and a lighting gradient, with a small brown spot or without."""
    tone = np.array([rng.uniform(150, 240), rng.uniform(110, 200), rng.uniform(80, 170)])
    texture = np.asarray(Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8))
                         .resize((size, size), Image.Resampling.BICUBIC), np.float64)[..., None] / 255 - 0.5
    light = np.linspace(rng.uniform(0.8, 1.0), rng.uniform(1.0, 1.2), size)[None, :, None]
    img = Image.fromarray(np.clip((tone + 25 * texture) * light, 0, 255).astype(np.uint8))
    if spot:
        r = rng.uniform(0.02, 0.12) * size
        cx, cy = rng.uniform(0.3, 0.7, 2) * size
        colour = tuple(int(v) for v in rng.uniform([50, 30, 20], [140, 90, 70]))
        ImageDraw.Draw(img).ellipse((cx - r, cy - r * rng.uniform(0.7, 1.3), cx + r, cy + r), fill=colour)
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 3)))
    return img


def stained_tissue(rng, size=512, brown=False) -> Image.Image:
    """A stand-in for a stained microscopy slide: a pale pink field crowded with small purple nuclei (and, for an
    immunohistochemistry look, brown deposits)."""
    field = np.array([rng.uniform(215, 245), rng.uniform(170, 215), rng.uniform(195, 235)])
    img = Image.fromarray(np.clip(field + rng.normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(150, 400))):
        x, y = rng.uniform(0, size, 2)
        r = rng.uniform(3, 9)
        colour = tuple(int(v) for v in ((rng.uniform(110, 160), rng.uniform(60, 100), rng.uniform(30, 60)) if brown
                                        and rng.random() < 0.4 else (rng.uniform(60, 120), rng.uniform(30, 70),
                                                                     rng.uniform(110, 170))))
        draw.ellipse((x - r, y - r * rng.uniform(0.6, 1.4), x + r, y + r), fill=colour)
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))


def fundus(rng, size=512) -> Image.Image:
    """A stand-in for a retinal photograph: an orange disc on black, a pale optic disc, dark vessels."""
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    radius = np.hypot(xx, yy)
    base = np.array([rng.uniform(170, 230), rng.uniform(70, 120), rng.uniform(20, 50)])
    shade = np.clip(1.1 - radius * rng.uniform(0.8, 1.4), 0, 1)[..., None]
    img = np.where((radius < 0.45)[..., None], base * shade, 0)
    ox, oy = rng.uniform(-0.2, 0.2, 2)
    img = np.where((np.hypot(xx - ox, yy - oy) < 0.06)[..., None], [250, 220, 160], img)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for _ in range(8):
        x, y = (ox + 0.5) * size, (oy + 0.5) * size
        angle = rng.uniform(0, 2 * np.pi)
        for _ in range(40):
            angle += rng.normal(0, 0.2)
            nx, ny = x + 6 * np.cos(angle), y + 6 * np.sin(angle)
            draw.line((x, y, nx, ny), fill=(int(base[0] * 0.5), int(base[1] * 0.3), 20), width=int(rng.integers(2, 5)))
            x, y = nx, ny
    return out.filter(ImageFilter.GaussianBlur(1))


def grating(rng, size=512) -> Image.Image:
    """A woven or grained texture: crossed sinusoids with noise, in one random colour."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    f1, f2 = rng.uniform(0.05, 0.4, 2)
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    pattern = (0.5 + 0.25 * np.sin(f1 * u) + 0.25 * np.sin(f2 * v + rng.uniform(0, 6))
               + rng.normal(0, 0.08, (size, size)))
    colour = rng.uniform(40, 255, 3)
    return Image.fromarray(np.clip(pattern[..., None] * colour, 0, 255).astype(np.uint8))


def synthetic_pictures(seed: int = 0) -> dict[str, tuple[str, Image.Image]]:
    rng = np.random.default_rng(seed)
    out = {}
    for colour in ((0, 0, 255), (255, 255, 255), (0, 0, 0), (222, 200, 170), (200, 60, 60), (40, 160, 60)):
        out[f"solid {colour}"] = ("solid or gradient", Image.new("RGB", (512, 512), colour))
    ramp = np.linspace(0, 255, 512, dtype=np.uint8)
    out["grey gradient"] = ("solid or gradient", Image.fromarray(np.tile(ramp, (512, 1))).convert("RGB"))
    out["colour gradient"] = ("solid or gradient", Image.fromarray(np.stack(
        [np.tile(ramp, (512, 1)), np.tile(ramp[:, None], (1, 512)), np.full((512, 512), 128, np.uint8)], -1)))
    out["noise"] = ("noise", Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)))
    out["smooth noise"] = ("noise", Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
                           .resize((512, 512), Image.Resampling.BICUBIC))
    font = ImageFont.load_default()
    page = Image.new("RGB", (600, 800), "white")
    draw = ImageDraw.Draw(page)
    for line in range(40):
        draw.text((40, 30 + 18 * line), "Referral letter: patient seen today, lesion on the back, " * 2, fill="black",
                  font=font)
    out["text page"] = ("document", page)
    screen = Image.new("RGB", (1280, 800), (245, 245, 245))
    draw = ImageDraw.Draw(screen)
    draw.rectangle((0, 0, 1280, 56), fill=(33, 37, 41))
    for i in range(8):
        draw.rectangle((40, 100 + 80 * i, 1240, 160 + 80 * i), outline=(200, 200, 200), fill="white")
        draw.text((60, 120 + 80 * i), f"Case {100 + i}  benign  p 0.0{i}", fill="black", font=font)
    out["application screenshot"] = ("screenshot", screen)
    for i in range(12):
        out[f"skin field {i}"] = ("skin without a dermatoscope (synthetic)", skin_field(rng, spot=i % 3 != 0))
    for i in range(6):
        out[f"stained tissue {i}"] = ("microscopy or medical", stained_tissue(rng, brown=i % 2 == 1))
    for i in range(4):
        out[f"fundus {i}"] = ("microscopy or medical", fundus(rng))
    for i in range(4):
        out[f"grating {i}"] = ("texture", grating(rng))
    return out


def variants(img: Image.Image, k: int, rng, size: int = 256, area=(0.25, 1.0)) -> list[Image.Image]:
    """``k`` random views of a picture: a crop of ``area`` (25-100%) of it, a quarter turn or mirror, a colour
    change."""
    out = []
    w, h = img.size
    for _ in range(k):
        area_px = rng.uniform(*area) * w * h
        aspect = rng.uniform(0.75, 1.33)
        cw, ch = min(w, int(round((area_px * aspect) ** 0.5))), min(h, int(round((area_px / aspect) ** 0.5)))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        view = img.crop((x, y, x + cw, y + ch)).resize((size, size), Image.Resampling.BILINEAR)
        view = view.rotate(90 * int(rng.integers(4)))
        if rng.random() < 0.5:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            view = enhance(view).enhance(rng.uniform(0.7, 1.3))
        out.append(view)
    return out


# Fitting ------------------------------------------------------------------------------------------------------

def features(predictor, images: list, batch_size: int = 16) -> np.ndarray:
    """(n, d + k): the pooled features of each image as given (the first view), as the worker's checks see them,
    and its picture statistics. ``images``: PIL images or paths."""
    from classifier.lesiongate import picture_statistics

    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([predictor.prepare(img) for img in images[start:start + batch_size]])
        with torch.inference_mode():
            pooled = predictor.runner.both(batch)[1].float().cpu().numpy()
        out.append(np.hstack([pooled, picture_statistics(batch, predictor.metadata.mean, predictor.metadata.std)]))
        if (start // batch_size) % 25 == 0:
            log.info("features: %d/%d", min(start + batch_size, len(images)), len(images))
    return np.concatenate(out)


def statistics_only(predictor, paths: list, batch_size: int = 64) -> np.ndarray:
    """The picture statistics of many images (no network pass: the envelope's lesions)."""
    from classifier.lesiongate import picture_statistics

    out = []
    for start in range(0, len(paths), batch_size):
        batch = torch.stack([predictor.prepare(p) for p in paths[start:start + batch_size]])
        out.append(picture_statistics(batch, predictor.metadata.mean, predictor.metadata.std))
    return np.concatenate(out)


def envelope(statistics: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """The range of each statistic over the lesions, widened by ``margin`` of it on each side."""
    low, high = statistics.min(0), statistics.max(0)
    span = np.maximum(high - low, 1e-6)
    return low - margin * span, high + margin * span


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iterations: int = 200):
    """(mean, scale, weight, bias) of a class-balanced L2 logistic regression of y (1: not a lesion) on x."""
    mean, scale = x.mean(0), x.std(0) + 1e-6
    xs = torch.tensor((x - mean) / scale, dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.float64)
    w_pos = 0.5 / max(yt.mean().item(), 1e-9)
    sample_w = torch.where(yt > 0, w_pos, 0.5 / max(1 - yt.mean().item(), 1e-9))
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        z = xs @ weight + bias
        loss = (sample_w * torch.nn.functional.binary_cross_entropy_with_logits(z, yt, reduction="none")).mean()
        loss = loss + l2 * (weight ** 2).sum() / 2
        loss.backward()
        return loss

    opt.step(closure)
    return mean, scale, weight.detach().numpy(), float(bias.detach())


def fit(lesions: np.ndarray, others: np.ndarray, lesion_percentile: float, l2: float, envelope_range, mean_std):
    """A gate and its threshold: the regression's score that ``lesion_percentile`` of the training lesions stay
    below. Rows: pooled features then picture statistics (``features``)."""
    from classifier.lesiongate import STATISTICS, LesionGate

    x = np.concatenate([lesions, others])
    y = np.concatenate([np.zeros(len(lesions)), np.ones(len(others))])
    mean, scale, weight, bias = fit_logistic(x, y, l2)
    gate = LesionGate(mean, scale, weight, bias, 0.0, {}, envelope_range[0], envelope_range[1], *mean_std)
    k = len(STATISTICS)
    gate.cutoff = float(np.percentile(gate.regression_scores(lesions[:, :-k], lesions[:, -k:]), lesion_percentile))
    return gate


def split_columns(x: np.ndarray):
    from classifier.lesiongate import STATISTICS

    k = len(STATISTICS)
    return x[:, :-k], x[:, -k:]


def run(args) -> dict:
    from classifier import lesiongate
    from classifier.modelfile import read_metadata
    from classifier.predictor import Predictor
    from classifier.training.data import load_samples, locked_test_split, split_as_recorded

    rng = np.random.default_rng(args.seed)
    meta = read_metadata(args.model)
    predictor = Predictor.from_file(args.model, device="cpu", runtime="torch")
    samples = load_samples(args.data)
    train, val = split_as_recorded(samples, meta.training.get("recipe", {}))
    locked = {s.path for s in locked_test_split(samples)}
    chosen = [train[i] for i in rng.permutation(len(train))[:args.train_images]]
    lesions = features(predictor, [s.path for s in chosen])
    log.info("picture statistics of the %d training images (the envelope) …", len(train))
    env = envelope(statistics_only(predictor, [s.path for s in train]), args.envelope_margin)
    mean_std = (tuple(predictor.metadata.mean), tuple(predictor.metadata.std))
    packaged = package_pictures()
    pictures = {**packaged, **synthetic_pictures(args.seed)}
    views, groups, categories = [], [], []
    for name, (category, img) in pictures.items():
        for view in variants(img, args.views, rng):
            views.append(view)
            groups.append(name)
            categories.append(category)
    # Close crops of the real pictures, as a phone framing something from a hand's width would: the skin of a
    # face, a cat's fur, a brick, a leaf. Each is its base picture's, so it leaves the fit with it.
    for name, (category, img) in packaged.items():
        if close_crop_worthy(name, img):
            for view in variants(img, args.close_views, rng, area=CLOSE_CROP_AREA):
                views.append(view)
                groups.append(name)
                categories.append(f"{category}, close crop")
    others = features(predictor, views)
    groups, categories = np.array(groups), np.array(categories)
    closeups = skin_closeups(packaged)
    closeup_features = features(predictor, [img for _, img in closeups.values()])
    closeup_bases = np.array([next(base for base in PORTRAIT_SKIN if name.startswith(base)) for name in closeups])
    val_lesions = features(predictor, [s.path for s in val])
    # The threshold also lets through all but ``max_withheld`` of the validation lesions outside the locked
    # split (training lesions score lower than new ones); the locked ones and the shipped check set measure it.
    selection = np.array([s.path not in locked for s in val])

    def fitted(others_part):
        gate = fit(lesions, others_part, args.lesion_percentile, args.l2, env, mean_std)
        if selection.any():
            z = gate.regression_scores(*split_columns(val_lesions[selection]))
            gate.cutoff = max(gate.cutoff, float(np.quantile(z, 1 - args.max_withheld, method="higher")))
        return gate

    # Other pictures withheld when their base picture took no part in the fit (5 folds by base picture).
    fold = np.array([zlib.crc32(g.encode()) % 5 for g in groups])
    closeup_fold = np.array([zlib.crc32(g.encode()) % 5 for g in closeup_bases])
    held_flags = np.zeros(len(others), bool)
    closeup_flags = np.zeros(len(closeups), bool)
    for f in range(5):
        gate = fitted(others[fold != f])
        held_flags[fold == f] = gate.scores(*split_columns(others[fold == f])) > gate.cutoff
        if (closeup_fold == f).any():  # the portraits' skin, scored by the gate fitted without that portrait
            closeup_flags[closeup_fold == f] = (gate.scores(*split_columns(closeup_features[closeup_fold == f]))
                                                > gate.cutoff)
    gate = fitted(others)
    val_scores = gate.scores(*split_columns(val_lesions))
    val_flags = val_scores > gate.cutoff
    sources = np.array([s.source for s in val])
    close = np.char.endswith(categories.astype(str), ", close crop")
    spotted = np.array([name.endswith("with a spot") for name in closeups])
    figures = {
        "other_pictures_held_out": {
            "views": int(len(others)), "pictures": int(len(pictures)), "share_withheld": round(held_flags.mean(), 4),
            "whole_views_share_withheld": round(float(held_flags[~close].mean()), 4),
            "close_crops_share_withheld": round(float(held_flags[close].mean()), 4) if close.any() else None,
            "per_category": {c: round(float(held_flags[categories == c].mean()), 4) for c in sorted(set(categories))}},
        "skin_closeups_held_out": {"n": int(len(closeups)), "withheld": int(closeup_flags.sum()),
                                   "plain_withheld": int(closeup_flags[~spotted].sum()),
                                   "with_a_spot_withheld": int(closeup_flags[spotted].sum())},
        "validation_lesions": {"n": int(len(val)), "share_withheld": round(float(val_flags.mean()), 4),
                               "locked_images_among_them": int(sum(s.path in locked for s in val)),
                               "locked_share_withheld": round(float(val_flags[~selection].mean()), 4)
                               if (~selection).any() else None,
                               "per_source": {src: {"n": int((sources == src).sum()),
                                                    "share_withheld": round(float(val_flags[sources == src].mean()), 4)}
                                              for src in sorted(set(sources))}},
    }
    gate.meta = {"weights_version": meta.weights_version, "fitted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "train_lesions": int(len(lesions)), "other_views": int(len(others)),
                 "lesion_percentile": args.lesion_percentile, "max_withheld": args.max_withheld, "l2": args.l2,
                 "envelope_images": len(train), "envelope_margin": args.envelope_margin,
                 "figures": figures}
    out = Path(args.out) if args.out else lesiongate.gate_path(args.model)
    lesiongate.save(out, gate)
    return {"gate": str(out), "threshold": gate.cutoff, **figures}


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description="Fit the lesion gate of a model's weights.", add_help=add_help)
    p.add_argument("--model", required=True, help="model file (.safetensors); the gate is written beside it")
    p.add_argument("--data", required=True, help="the dataset the model was trained on (its split is remade)")
    p.add_argument("--out", help="the gate file (default: <model>.lesion-gate.json)")
    p.add_argument("--train-images", type=int, default=1500, help="training lesions to fit on")
    p.add_argument("--views", type=int, default=20, help="random views of each other picture")
    p.add_argument("--close-views", type=int, default=20,
                   help="random close crops (2-20%% of the area) of each real picture from a package")
    p.add_argument("--lesion-percentile", type=float, default=99.5,
                   help="the threshold lets this percentile of the training lesions' scores through")
    p.add_argument("--max-withheld", type=float, default=0.01,
                   help="the threshold also withholds at most this share of the validation lesions outside the "
                        "locked split")
    p.add_argument("--l2", type=float, default=1e-2)
    p.add_argument("--envelope-margin", type=float, default=0.05,
                   help="the envelope: the training images' range of each picture statistic, widened by this share "
                        "of it on each side")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    from classifier.training.cli import run_and_print

    return run_and_print(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))

"""The `marsseg` command: parses arguments and calls the library; nothing more.

Bad input (a file, a field, a flag) ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

from marsseg.config import DataConfig, InferenceSettings, inference_settings, valid_tta_scales
from marsseg.errors import UserError

DATA_HELP = "an .npz in the course layout (training_set, test_set); omit for the embedded synthetic data"


# ---------------------------------------------------------------- data commands


def cmd_data_inspect(args) -> int:
    from marsseg.data.clean import duplicate_groups
    from marsseg.data.io import CLASS_NAMES, load_npz

    data = load_npz(args.file)
    print(f"{args.file}")
    print(f"  training_set: {len(data)} samples, images and masks {data.images.shape[1:]} uint8")
    if data.test_images is not None:
        print(f"  test_set:     {len(data.test_images)} images {data.test_images.shape[1:]} {data.test_images.dtype}")
    if data.frame_ids is not None:
        size = f", frames resized to {data.frame_size} before cutting" if data.frame_size else ""
        print(f"  frame_id:     {len(np.unique(data.frame_ids))} camera frames{size}")
    if data.sources is not None:
        shares = ", ".join(
            f"{name} {count}" for name, count in zip(data.source_names, np.bincount(data.sources), strict=False)
        )
        print(f"  source:       {len(data.source_names)} merged files ({shares} samples)")
    counts = np.bincount(data.masks.reshape(-1), minlength=5)
    present = [(data.masks == c).any(axis=(1, 2)).sum() for c in range(5)]
    print(f"  {'class':<12}{'pixel share':>12}{'images containing':>20}")
    for c, name in enumerate(CLASS_NAMES):
        print(f"  {c} {name:<10}{100 * counts[c] / counts.sum():>11.2f}%{present[c]:>20d}")
    flat = data.masks.reshape(len(data), -1)
    uniform = (flat == flat[:, :1]).all(axis=1)
    labeled_classes = [np.unique(m[m > 0]).size for m in data.masks]
    print(f"  uniform masks (one value everywhere): {int(uniform.sum())}")
    print(f"  masks with a single labeled class (plus background): {sum(n == 1 for n in labeled_classes)}")
    for what, arrays in (("mask", data.masks), ("image", data.images)):
        groups = duplicate_groups(arrays)
        sizes = ", ".join(str(len(g)) for g in groups[:8])
        print(
            f"  identical {what}s: {len(groups)} groups covering {sum(map(len, groups))} samples"
            + (f" (largest: {sizes})" if groups else "")
        )
    return 0


def cmd_data_synth(args) -> int:
    from marsseg.data.io import refuse_to_overwrite, save_npz
    from marsseg.data.synth import make_synthetic

    if args.n_train < 1 or args.n_test < 1 or args.seed < 0:
        raise UserError(
            f"--n-train, --n-test, --seed: found {args.n_train}, {args.n_test}, {args.seed}, expected >= 1, >= 1, >= 0"
        )
    refuse_to_overwrite(args.out, args.force)
    save_npz(args.out, make_synthetic(args.n_train, n_test=args.n_test, seed=args.seed))
    print(f"wrote {args.out}: {args.n_train} training and {args.n_test} test samples (seed {args.seed})")
    return 0


def cmd_data_import(args) -> int:
    from marsseg.data.ai4mars import import_ai4mars
    from marsseg.data.io import refuse_to_overwrite, save_npz

    refuse_to_overwrite(args.out, args.force)
    result = import_ai4mars(
        args.directory, frame_size=args.frame_size, require_labels=args.require_labels, progress=True
    )
    save_npz(args.out, result.arrays)
    arrays = result.arrays
    print(
        f"wrote {args.out}: training_set {len(arrays['training_set'])} crops of {result.labelled_frames} frames"
        + (
            f", test_set {len(arrays['test_set'])} crops of {result.unlabelled_frames} frames without a label"
            if result.unlabelled_frames
            else ""
        )
        + f" (frames resized to {args.frame_size} on their longer side, then cut into 64x128 crops)"
    )
    if result.labels_without_image:
        print(f"  ignored {result.labels_without_image} labels whose image is not in {result.images_folder}")
    return 0


def cmd_data_merge(args) -> int:
    from marsseg.data.io import refuse_to_overwrite, save_npz
    from marsseg.data.merge import merge_data_files

    refuse_to_overwrite(args.out, args.force)
    if any(Path(args.out).resolve() == Path(path).resolve() for path in args.files):
        raise UserError(f"{args.out}: is one of the input files; write the merged data to a new file")
    arrays = merge_data_files(args.files, keep_test=not args.drop_test)
    save_npz(args.out, arrays)
    counts = np.bincount(arrays["source"], minlength=len(arrays["source_name"]))
    tests = arrays.get("test_set")
    print(
        f"wrote {args.out}: training_set {len(arrays['training_set'])} crops of {len(np.unique(arrays['frame_id']))} "
        f"frames, test_set {'dropped' if args.drop_test else len(tests) if tests is not None else 'none'}"
    )
    for name, count in zip(arrays["source_name"], counts, strict=True):
        print(f"  {count:6d}  {name}")
    return 0


def cmd_data_clean(args) -> int:
    from marsseg import report
    from marsseg.data.clean import find_contaminated, remove_contaminated
    from marsseg.data.io import load_npz, refuse_to_overwrite, save_npz, to_course_layout, write_text_atomically

    report_path = Path(str(args.out).removesuffix(".npz") + ".removed.json")
    for path in (args.out, report_path, args.show):
        if path:
            refuse_to_overwrite(path, args.force)
    if Path(args.out).resolve() == Path(args.file).resolve():
        raise UserError(f"{args.out}: is the input file; write the cleaned data to a new file")
    data = load_npz(args.file)
    found = find_contaminated(data)
    arrays = to_course_layout(remove_contaminated(data, found))
    # What cleaning does not touch: arrays indexed by frame or by test image.
    with np.load(args.file, allow_pickle=False) as original:
        arrays.update({key: original[key] for key in ("frame_name", "test_frame_id") if key in original.files})
    save_npz(args.out, arrays)
    removed = [{"index": i, "reason": reason} for i, reason in sorted(found.removed.items())]
    write_text_atomically(
        report_path, json.dumps({"input": str(args.file), "samples": len(data), "removed": removed}, indent=1)
    )
    print(f"{args.file}: {len(data)} samples, removed {len(found.removed)}, kept {len(data) - len(found.removed)}")
    for rule, count in sorted(found.counts_by_rule().items()):
        print(f"  {count:5d}  {rule}")
    for template in found.templates:
        print(
            f"  contaminated mask group: {len(template.mask_group)} samples with one identical mask, "
            f"pasted pixels covering {100 * template.region.mean():.1f}% of the image"
        )
    print(f"wrote {args.out} and {report_path}")
    if args.show:
        indices = found.removed_indices()
        report.plot_samples(data.images, data.masks, indices, args.show, limit=args.show_limit)
        print(f"wrote {args.show} ({min(len(indices), args.show_limit)} of {len(indices)} removed samples)")
    return 0


def cmd_data_split(args) -> int:
    from marsseg.config import load_config
    from marsseg.data.prepare import prepare_data

    fields = {
        "path": args.file or "",
        "val_fraction": args.val_fraction,
        "test_fraction": args.test_fraction,
        "split_seed": args.seed,
    }
    cfg = load_config(None, overrides={f"data.{key}": value for key, value in fields.items()}).data
    prepared = prepare_data(cfg)
    data, split = prepared.data, prepared.split
    print(
        f"{args.file or '<synthetic>'}: {len(data) + len(prepared.cleaning.removed)} samples, "
        f"{len(prepared.cleaning.removed)} contaminated removed"
    )
    print(f"  {'part':<6}{'images':>8}{'with big rock':>15}{'big rock pixels':>17}")
    for name in ("train", "val", "test"):
        indices = getattr(split, name)
        masks = data.masks[indices]
        print(
            f"  {name:<6}{len(indices):>8}{int((masks == 4).any(axis=(1, 2)).sum()):>15}"
            f"{100 * (masks == 4).mean():>16.2f}%"
        )
    if args.out:
        split.save(args.out)
        print(f"wrote {args.out}")
    return 0


# ---------------------------------------------------------------- training and scoring


def parse_overrides(args) -> dict:
    """Flags and --set key=value pairs as dotted config overrides (values parsed as YAML scalars)."""
    overrides = {}
    for flag, key in (
        ("data", "data.path"),
        ("model", "model.name"),
        ("width", "model.width"),
        ("members", "model.members"),
        ("epochs", "optim.epochs"),
        ("minutes", "optim.minutes"),
        ("lr", "optim.lr"),
        ("batch_size", "optim.batch_size"),
        ("seed", "seed"),
        ("device", "device"),
        ("semi", "semi.weight"),
        ("unlabeled", "data.unlabeled"),
        ("teacher", "semi.teachers"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    for pair in getattr(args, "set", None) or []:
        if "=" not in pair:
            raise UserError(f"--set {pair}: expected KEY=VALUE, e.g. --set optim.lr=0.001")
        key, value = pair.split("=", 1)
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"--set {pair}: {value!r} is not a YAML value") from None
    return overrides


def relaunch_with_torchrun(argv: list[str], nproc: int) -> int:
    """`marsseg train --nproc K ...` is `torchrun --standalone --nproc_per_node K -m marsseg train ...`."""
    import subprocess

    rest = []
    skip = False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            rest.append(item)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.call([*command, "-m", "marsseg", *rest])


def fields_set(args, overrides: dict) -> list[str]:
    """The dotted config fields a command sets: by its flags (`overrides`) and in its --config file (which
    load_config has already read and checked)."""
    from marsseg.config import dotted_names

    names = list(overrides)
    if args.config:
        with open(args.config) as handle:
            names += dotted_names(yaml.safe_load(handle) or {})
    return names


def cmd_train(args) -> int:
    from marsseg import report
    from marsseg.checkpoints import check_resume_matches_run, run_device_name
    from marsseg.config import load_config
    from marsseg.distributed import check_processes_per_gpu
    from marsseg.engine import fit

    if args.nproc < 1:
        raise UserError(f"--nproc: found {args.nproc}, expected >= 1")
    overrides = parse_overrides(args)
    cfg = load_config(args.config, overrides=overrides)
    if args.resume:
        # The command that started the run, plus --resume: its flags may repeat the run's values, not change them.
        check_resume_matches_run(args.out, cfg, fields_set(args, overrides))
    if cfg.semi.weight > 0 and cfg.data.unlabeled:
        from marsseg.data.prepare import load_data

        load_data(cfg.data.unlabeled)  # a bad unlabeled file is refused before the run directory is written
    prepared = None  # the data cleaned and split, when the checks below needed it (fit reuses it)
    if cfg.semi.teachers and not args.resume:
        from marsseg.checkpoints import load_model
        from marsseg.data.prepare import prepare_data
        from marsseg.teachers import check_teachers

        # so is a teacher that is not a finished run, or one that trained on this run's held-out crops
        for teacher in cfg.semi.teachers:
            load_model(teacher)
        prepared = prepare_data(cfg.data)
        check_teachers(cfg.semi.teachers, prepared)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        check_processes_per_gpu(run_device_name(cfg, args.out, args.resume), args.nproc)
        return relaunch_with_torchrun(args.argv, args.nproc)
    result = fit(cfg, args.out, resume=args.resume, force=args.force, prepared=prepared)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    from marsseg.checkpoints import saved_config

    keep = (saved_config(args.out) or cfg).optim.keep  # a resumed run keeps what it kept when it started
    for k, member in enumerate(result.members):
        print(
            f"member_{k}: validation mIoU {member.best_val_miou:.4f} {_kept_words(keep, member.best_epoch)} "
            f"({member.epochs_run} epochs, {member.train_seconds / 60:.1f} min)"
        )
    if result.members:
        print(
            f"soft vote of {len(result.members)} members: validation mIoU {result.best_val_miou:.4f} before the "
            f"big-rock scale ({result.train_seconds / 60:.1f} min in all)"
        )
    else:
        print(
            f"validation mIoU {result.best_val_miou:.4f} {_kept_words(keep, result.best_epoch)} "
            f"({result.epochs_run} epochs, {result.train_seconds / 60:.1f} min)"
        )
    if result.test is not None:
        print(
            report.format_iou_table(
                result.test.ious, result.test.miou, title=f"local test part ({inference_settings(cfg).describe()}):"
            )
        )
        metrics = json.loads((Path(args.out) / "metrics.json").read_text())
        low, high = metrics["test_miou_interval90"]
        print(f"90 % interval of mIoU: {low:.3f} - {high:.3f} (bootstrap over {metrics['test_groups']} frame groups)")
        if "test_by_source" in metrics:
            from marsseg.evaluation import by_source_text

            print("by source:\n" + by_source_text(metrics["test_by_source"]))
    files = "metrics.json, metrics.csv, curves.png, confusion.png, best.pt"
    if result.members:  # their metrics.csv and last.pt are in the members' folders
        files = "metrics.json, curves.png, confusion.png, best.pt; member_K/: each member's run, with its metrics.csv"
    print(f"run directory: {args.out} ({files})")
    return 0


def _kept_words(keep: str, epoch: int | list[int]) -> str:
    """Which model a run kept (optim.keep), for the line that gives its validation mIoU."""
    if keep == "best_and_last":
        best, last = epoch
        if best == last:
            return f"at epoch {last}, both the best on validation and the last, kept"
        return f"for the vote of epoch {best} (the best on validation) and epoch {last} (the last), kept"
    return f"at epoch {epoch}, the {keep}, kept"


def _parse_scales(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(part) for part in text.split(","))
    except ValueError:
        scales = ()
    if not valid_tta_scales(scales):
        raise UserError(f"--tta-scales: found {text!r}, expected numbers in 0.25..4 separated by commas, e.g. 1,0.875")
    return scales


def _inference_settings(cfg, args, *, model=None) -> InferenceSettings:
    """The run's inference settings (config.inference_settings) with the command line's --tta/--no-tta,
    --tta-scales, --whole-frames/--no-whole-frames and --precision where given. --no-tta drops the flip and the
    run's other scales: no test-time augmentation at all, unless --tta-scales asks for scales. bf16 is refused for
    a `model` that is an exported .onnx graph (it computes in fp32)."""
    settings = inference_settings(cfg)
    if args.tta is not None:
        settings = settings.replace(tta=args.tta)
    if args.tta is False:
        settings = settings.replace(scales=(1.0,))
    if args.tta_scales is not None:
        settings = settings.replace(scales=_parse_scales(args.tta_scales))
    if args.whole_frames is not None:
        settings = settings.replace(whole_frames=args.whole_frames)
    if args.precision:
        settings = settings.replace(precision=args.precision)
    if settings.precision == "bf16" and model is not None:
        from torch import nn

        if not isinstance(model, nn.Module):
            raise UserError(f"--precision bf16: {args.run_dir} is an .onnx file, which computes in fp32")
    return settings


def _prepared_for_run(run_dir: str, data_path: str | None):
    """The run's data, cleaned and split exactly as in training; refuses a different file."""
    from marsseg.checkpoints import load_model
    from marsseg.data.prepare import prepare_data, recorded_fingerprint
    from marsseg.data.split import Split

    model, cfg = load_model(run_dir)
    path = cfg.data.path if data_path is None else data_path
    split_path = Path(run_dir) / "split.json"
    if not split_path.is_file():
        raise UserError(f"{split_path}: missing; is {run_dir} a marsseg run directory?")
    try:
        split = Split.load(split_path)
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{split_path}: unreadable; is {run_dir} a marsseg run directory?") from None
    prepared = prepare_data(
        replace(cfg.data, path=path), split=split, expected_fingerprint=recorded_fingerprint(run_dir)
    )
    return model, cfg, prepared


def _model_source(run_dir: str | None) -> str:
    """The model a command uses: the one named, or the shipped model, said in one line."""
    from marsseg.checkpoints import shipped_model

    if run_dir is not None:
        return run_dir
    path = shipped_model()
    print(f"using the shipped model {path} (MSL NavCam frames at 128 px; see docs/model-card.md)")
    return str(path)


def _evaluate_frames(args) -> int:
    from torch import nn

    from marsseg import report
    from marsseg.data.io import refuse_to_overwrite, write_text_atomically
    from marsseg.evaluation import CLASS_KEYS, evaluate_labeled_frames
    from marsseg.export import load_for_inference
    from marsseg.precision import resolve_device

    if args.json:
        refuse_to_overwrite(args.json, args.force)
    source = _model_source(args.run_dir)
    model, cfg = load_for_inference(source)
    device = resolve_device(args.device or cfg.device)
    if isinstance(model, nn.Module):
        model = model.to(device)
    settings = _inference_settings(cfg, args, model=model)
    scored = evaluate_labeled_frames(
        model,
        args.images,
        cfg.data.frame_size,
        settings=settings,
        device=device,
        big_rock_scale=cfg.big_rock_scale or 1.0,
        progress=True,
    )
    result, (low, high) = scored.evaluation, scored.interval
    words = f"{settings.replace(whole_frames=False).describe()}, {settings.precision}"
    title = f"{args.images}: {len(scored.names)} labeled frames at their own size ({words}):"
    print(report.format_iou_table(result.ious, result.miou, title=title))
    print(f"90 % interval of mIoU: {low:.3f} - {high:.3f} (bootstrap over {len(scored.names)} frames)")
    if args.json:
        figures = {
            "model": str(source),
            "images": str(args.images),
            "frames": len(scored.names),
            "miou": result.miou,
            "miou_interval90": [low, high],
            "iou": dict(zip(CLASS_KEYS, result.ious.tolist(), strict=True)),
            "tta": settings.tta,
            "scales": list(settings.scales),
            "precision": settings.precision,
        }
        write_text_atomically(args.json, json.dumps(figures, indent=1))
        print(f"wrote {args.json}")
    return 0


def cmd_evaluate(args) -> int:
    from marsseg import report
    from marsseg.data.io import refuse_to_overwrite
    from marsseg.evaluation import by_source_text, evaluate, figures_by_source, miou_interval
    from marsseg.precision import resolve_device

    if args.images:
        return _evaluate_frames(args)
    if args.run_dir is None or not Path(args.run_dir).is_dir():
        raise UserError(
            f"{args.run_dir or 'RUN'}: --split scores a run directory on its own parts; name one, or score any "
            "model on labeled frames with --images DIR"
        )
    out = Path(args.run_dir)
    pictures = [out / f"confusion_{args.split}.png", out / f"worst_{args.split}.png"]
    for picture in pictures:
        refuse_to_overwrite(picture, args.force)
    model, cfg, prepared = _prepared_for_run(args.run_dir, args.data)
    device = resolve_device(args.device or cfg.device)
    indices = getattr(prepared.split, args.split)
    if len(indices) == 0:
        raise UserError(f"{args.run_dir}: the {args.split} part of this run is empty; choose another --split")
    images, masks = prepared.data.images[indices], prepared.data.masks[indices]
    settings = _inference_settings(cfg, args)
    scale = cfg.big_rock_scale or 1.0  # 0 (choose on validation) only reaches here if finish_run did not run
    result = evaluate(
        model.to(device), images, masks, settings=settings, device=device, keep_predictions=True, big_rock_scale=scale
    )
    name = {"val": "validation part", "test": "local test part", "train": "training part"}[args.split]
    print(
        report.format_iou_table(
            result.ious, result.miou, title=f"{name}, {len(indices)} images ({settings.describe()}):"
        )
    )
    low, high, groups = miou_interval(result, prepared.data.subset(indices))
    print(f"90 % interval of mIoU: {low:.3f} - {high:.3f} (bootstrap over {groups} frame groups)")
    by_source = figures_by_source(result, prepared.data.subset(indices))
    if by_source:
        print("by source:\n" + by_source_text(by_source))
    print("confusion matrix (rows true 1..4, columns predicted 0..4):")
    print(np.array2string(result.matrix[1:], max_line_width=120))
    report.plot_confusion(result.matrix, pictures[0], title=name)
    report.plot_predictions(images, masks, result.predictions, result.per_image_miou, pictures[1])
    print(f"wrote {pictures[0]} and {pictures[1]}")
    return 0


def _predicted_shares(counts: np.ndarray) -> str:
    """Pixel shares of the predicted classes 1..4 from a count per label 0..4."""
    shares = counts[1:] / counts.sum()
    return ", ".join(
        f"{name} {100 * s:.1f}%" for name, s in zip(("soil", "bedrock", "sand", "big rock"), shares, strict=True)
    )


def cmd_predict(args) -> int:
    from torch import nn

    from marsseg.data.io import refuse_to_overwrite
    from marsseg.data.prepare import load_data
    from marsseg.export import load_for_inference
    from marsseg.precision import resolve_device
    from marsseg.predict import MAX_FRAME_PIXELS, predict_image_files, predict_labels, write_submission

    if args.images and args.data is not None:
        raise UserError("--images and --data: found both, expected one (image files, or a data file's test_set)")
    max_pixels = MAX_FRAME_PIXELS if args.max_pixels is None else args.max_pixels
    if max_pixels < 1:
        raise UserError(f"--max-pixels: found {max_pixels}, expected >= 1")
    if not args.images:
        refuse_to_overwrite(args.out, args.force)
    if args.run_dir is None and not args.images and args.data is None:
        raise UserError("with the shipped model, name the images (--images) or the data file (--data) to predict")
    source = _model_source(args.run_dir)
    model, cfg = load_for_inference(source)  # a run directory, a model file or an exported .onnx file
    if not args.images and args.data is None and not cfg.data.path:
        # a model trained on the embedded synthetic data: its "own" data is no default for a file someone was sent
        raise UserError(f"{source}: name the images (--images) or the data file (--data) to predict")
    device = resolve_device(args.device or cfg.device)
    if isinstance(model, nn.Module):
        model = model.to(device)
    settings = _inference_settings(cfg, args, model=model)
    scale = cfg.big_rock_scale or 1.0  # 1 for an .onnx file: its graph applies the scale
    if args.images:
        files, counts = predict_image_files(
            model,
            args.images,
            args.out,
            cfg.data.frame_size,
            settings=settings,
            device=device,
            big_rock_scale=scale,
            max_pixels=max_pixels,
            force=args.force,
            progress=True,
        )
        print(
            f"wrote {args.out}/labels and {args.out}/overlays: {len(files)} images "
            f"({settings.replace(whole_frames=False).describe()}, "
            f"resized by {cfg.data.frame_size} / their longer side); predicted shares {_predicted_shares(counts)}"
        )
        return 0
    data = load_data(args.data if args.data is not None else cfg.data.path, require_test=True)
    labels = predict_labels(
        model, data.test_images, settings=settings, device=device, progress=True, big_rock_scale=scale
    )
    write_submission(labels, args.out)
    print(
        f"wrote {args.out}: {len(labels)} images ({settings.describe()}); predicted shares "
        + _predicted_shares(np.bincount(labels.reshape(-1), minlength=5))
    )
    return 0


def cmd_export(args) -> int:
    from marsseg.checkpoints import load_model
    from marsseg.data.io import refuse_to_overwrite
    from marsseg.export import GRAPH_CONTRACT, export_onnx

    if not str(args.out).endswith(".onnx"):
        raise UserError(f"--out {args.out}: expected a file name ending in .onnx")
    refuse_to_overwrite(args.out, args.force)
    model, cfg = load_model(_model_source(args.run_dir))
    export_onnx(model, cfg, args.out)
    print(f"wrote {args.out} (big-rock scale {cfg.big_rock_scale or 1.0:g} inside). {GRAPH_CONTRACT}")
    return 0


def cmd_pack(args) -> int:
    from marsseg.checkpoints import load_model, pack_model
    from marsseg.data.io import refuse_to_overwrite
    from marsseg.predict import predict_labels

    if not str(args.out).endswith(".pt"):
        raise UserError(f"--out {args.out}: expected a file name ending in .pt")
    if not Path(args.run_dir).is_dir():
        raise UserError(f"{args.run_dir}: not a run directory, expected one written by marsseg train")
    refuse_to_overwrite(args.out, args.force)
    staged = Path(args.out).with_name(f".{Path(args.out).name}.tmp")  # checked before it replaces --out
    pack_model(args.run_dir, staged, half=args.half)
    words = "fp16 weights" if args.half else "fp32 weights"
    try:
        if args.half:
            model, cfg, prepared = _prepared_for_run(args.run_dir, None)
            indices = np.concatenate([prepared.split.val, prepared.split.test])
            images = prepared.data.images[indices]
            settings, scale = inference_settings(cfg), cfg.big_rock_scale or 1.0
            full = predict_labels(model, images, settings=settings, big_rock_scale=scale, progress=True)
            half = predict_labels(load_model(staged)[0], images, settings=settings, big_rock_scale=scale, progress=True)
            agreement = float((full == half).mean())
            words += f"; labels agree with the fp32 model's on {100 * agreement:.3f} % of {len(images)} crops' pixels"
            if agreement < 0.999:
                print(
                    f"marsseg: fp16 weights change {100 * (1 - agreement):.3f} % of the labels; {args.out} not written"
                )
                return 1
        os.replace(staged, args.out)
    finally:
        staged.unlink(missing_ok=True)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 2**20:.1f} MiB, {words})")
    return 0


def cmd_convert_run(args) -> int:
    from marsseg.checkpoints import convert_trusted_run

    print(
        f"trusting the checkpoints in {args.run_dir} as written by an earlier marsseg: each is loaded once as a full "
        "pickle, which runs any code it holds, and rewritten with tensors and plain values only"
    )
    for path in convert_trusted_run(args.run_dir):
        print(f"rewrote {path}")
    return 0


def overfit_one_batch(
    cfg,
    *,
    batch_size: int = 32,
    target: float = 0.95,
    max_steps: int = 300,
    lr: float = 1e-3,
    check_every: int = 10,
) -> tuple[int, float]:
    """The study's first sanity check (`marsseg overfit-batch`): can the model drive one fixed batch to mIoU >=
    `target`? training_step alone: no augmentation, no oversampling. Returns (steps taken, the batch's mIoU in eval
    mode at the end).
    """
    import torch
    from tqdm import tqdm

    from marsseg.config import InferenceSettings
    from marsseg.data.dataset import images_to_tensor
    from marsseg.data.prepare import prepare_data
    from marsseg.evaluation import evaluate
    from marsseg.losses import build_loss
    from marsseg.models import build_network
    from marsseg.precision import resolve_device, resolve_precision
    from marsseg.training import configure_threads, seed_everything, training_step

    configure_threads(cfg.threads)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    prepared = prepare_data(cfg.data)
    rng = np.random.default_rng(cfg.seed)
    chosen = rng.choice(prepared.split.train, size=min(batch_size, len(prepared.split.train)), replace=False)
    images, masks = prepared.data.images[chosen], prepared.data.masks[chosen]
    x = images_to_tensor(images, in_channels=cfg.data.in_channels).to(device)
    y = torch.from_numpy(masks).long().to(device)
    model = build_network(cfg).to(device)  # one network, as each member trains
    loss_fn = build_loss(cfg.loss, masks).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    miou, step = 0.0, 0
    precision = resolve_precision(cfg.precision, device)
    bar = tqdm(range(1, max_steps + 1), desc="overfit one batch", leave=False, disable=None)
    for step in bar:
        model.train()
        loss = training_step(model, x, y, loss_fn, optimizer, device=device, precision=precision)
        if step % check_every == 0 or step == max_steps:
            settings = InferenceSettings(in_channels=cfg.data.in_channels, precision=precision)
            miou = evaluate(model, images, masks, settings=settings, device=device).miou
            bar.set_postfix(loss=f"{loss.item():.4f}", miou=f"{miou:.3f}")
            if miou >= target:
                break
    return step, miou


def cmd_overfit_batch(args) -> int:
    from marsseg.config import load_config

    cfg = load_config(args.config, overrides=parse_overrides(args))
    size = args.batch_size or 32
    steps, miou = overfit_one_batch(cfg, batch_size=size, target=args.target, max_steps=args.max_steps)
    if miou >= args.target:
        print(f"overfit one batch of {size}: mIoU {miou:.4f} >= {args.target} after {steps} steps")
        return 0
    print(f"FAILED to overfit one batch of {size}: mIoU {miou:.4f} < {args.target} after {steps} steps")
    return 1


def parse_model_list(text: str) -> list[str]:
    """--models a,b,c: names checked against the model zoo."""
    from marsseg.models import MODELS

    models = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in models if name not in MODELS]
    if unknown or not models:
        raise UserError(f"--models: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(MODELS)}")
    return models


def cmd_experiments(args) -> int:
    from marsseg.config import load_config, one_network
    from marsseg.experiments import run_experiments

    overrides = parse_overrides(args)
    cfg = load_config(args.config, overrides=overrides)
    # A row is one network unless asked: models compared at an equal budget.
    if "model.members" not in fields_set(args, overrides):
        cfg = one_network(cfg)
    models = parse_model_list(args.models)
    if args.seeds < 1:
        raise UserError(f"--seeds: found {args.seeds}, expected >= 1")
    run_experiments(cfg, args.out, models, args.seeds, ensemble=not args.no_ensemble)
    print((Path(args.out) / "results.md").read_text())
    print(f"wrote {args.out}/results.csv, results.md, results.png; runs in {args.out}/runs")
    return 0


def cmd_cv(args) -> int:
    from marsseg.config import load_config
    from marsseg.cv import cross_validate

    if args.folds < 2 or args.seeds < 1:
        raise UserError(f"--folds, --seeds: found {args.folds}, {args.seeds}, expected >= 2 and >= 1")
    overrides = parse_overrides(args)
    data = overrides.pop("data.path", "")
    configs = args.config or [None]
    rows = [(Path(path).stem if path else "default", load_config(path, overrides=overrides)) for path in configs]
    records = cross_validate(rows, data, args.out, folds=args.folds, seeds=args.seeds)
    first = records[0]["name"] if records else ""
    print(f"wrote {args.out}/cv.md, cv.csv" + (", cv.png" if len(records) > 1 else "") + f" (differences from {first})")
    return 0


def cmd_tune(args) -> int:
    from marsseg.config import load_config
    from marsseg.tune import tune

    cfg = load_config(args.config, overrides=parse_overrides(args))
    models = parse_model_list(args.models)
    try:
        widths = [int(w) for w in args.widths.split(",")]
    except ValueError:
        raise UserError(f"--widths: found {args.widths!r}, expected comma-separated integers") from None
    if args.trials < 1 or min(widths) < 1:
        raise UserError(f"--trials and --widths: found {args.trials} and {args.widths}, expected positive numbers")
    study = tune(
        cfg,
        args.out,
        args.trials,
        storage=args.storage,
        name=args.study,
        timeout=args.timeout,
        heartbeat=args.heartbeat,
        models=models,
        widths=widths,
    )
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if complete:
        best = max(complete, key=lambda t: t.value)
        print(f"best validation mIoU {best.value:.4f} (trial {best.number}); {len(study.trials)} trials in the study")
        print(f"wrote {args.out}/best.yaml (marsseg train --config {args.out}/best.yaml), trials.csv, history.png")
    return 0


# ---------------------------------------------------------------- parser


def _add_training_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, help=DATA_HELP)
    parser.add_argument("--config", help="YAML file of config fields (defaults < file < flags)")
    parser.add_argument(
        "--model", help="architecture: res_unet (default), unet (the study's baseline), dual_unet, deeplab, danet"
    )
    parser.add_argument("--width", type=int, help="channels of the first level")
    parser.add_argument(
        "--members",
        type=int,
        help="train this many networks one after another (seeds seed, seed + 1, ...; each a whole run of "
        "its own, in RUN/member_K) and predict their soft vote (averaged probabilities); each costs one network's "
        "training and prediction time",
    )
    parser.add_argument(
        "--epochs", type=int, help="epochs of the schedule (all trained unless early stopping is asked for)"
    )
    parser.add_argument(
        "--minutes",
        type=float,
        help="wall-clock training budget (the schedule follows it); an ensemble's members share it, each taking an "
        "even share of what the members before it left",
    )
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--batch-size", type=int, help="images a step (default: the config's optim.batch_size, 64)")
    parser.add_argument(
        "--seed", type=int, help="seeds initialisation, sampling and augmentation (the split has data.split_seed)"
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        help="where to train (default: the config's device, auto: CUDA if there)",
    )
    parser.add_argument(
        "--semi",
        type=float,
        metavar="WEIGHT",
        help="semi-supervised training: each step also learns the EMA's confident labels of unlabeled crops (a strong "
        "view against a weak one; with --teacher, the teachers' labels, or with --set semi.loss=soft their "
        "probabilities), with this weight; 0 switches it off (semi.* holds thresholds and batch size)",
    )
    parser.add_argument(
        "--unlabeled",
        metavar="FILE.npz",
        help="the unlabeled crops for --semi (default: the data file's test_set and the images of its validation "
        "and local-test parts; masks are never read)",
    )
    parser.add_argument(
        "--teacher",
        action="append",
        metavar="RUN",
        help="offline self-training (with --semi W, the weight of its loss): this finished run's model (best.pt) "
        "labels the unlabeled crops once, before training, and the new model learns them; repeat it for an "
        "ensemble of teachers, whose probabilities are averaged. A teacher must not have trained on this run's "
        "validation or local-test crops",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any config field, e.g. --set loss.focal_gamma=1.5 (repeatable)",
    )


class HelpFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default (where it has one); a text with line breaks keeps them."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "%(default)" in text or unset or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class Parser(argparse.ArgumentParser):
    """argparse's parser with HelpFormatter, for the command and every subcommand (add_subparsers uses this class)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="marsseg",
        description="Semantic segmentation of Mars terrain (0 unlabeled, 1 soil, 2 bedrock, 3 sand, 4 big rock) "
        "in 64x128 grayscale rover crops. Scored by mean IoU over classes 1..4, unlabeled pixels ignored.",
        epilog="start with:\n"
        "  marsseg predict --images FRAMES/ --out labeled/   label your JPEGs with the shipped model (seconds)\n"
        "  marsseg train --out runs/first --minutes 4        train on the embedded synthetic data (about 5 minutes)\n"
        "  marsseg predict runs/first --out submission.csv   then its Kaggle CSV",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="inspect, import, merge, synthesize, clean or split data files")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = data_commands.add_parser("inspect", help="validate a file and print class shares and duplicate groups")
    p.add_argument("file")
    p.set_defaults(run=cmd_data_inspect)
    p = data_commands.add_parser("synth", help="write the embedded synthetic data set in the course layout")
    p.add_argument("--out", required=True, help="the .npz to write")
    p.add_argument("--n-train", type=int, default=2615, help="labeled training crops")
    p.add_argument("--n-test", type=int, default=1000, help="test crops without labels")
    p.add_argument("--seed", type=int, default=0, help="the same seed writes the same bytes")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(run=cmd_data_synth)
    p = data_commands.add_parser("import", help="read AI4Mars image and label files into the course layout")
    p.add_argument(
        "directory", help="the AI4Mars release (msl/images/edr/*.JPG, msl/labels/train/*.png) or images/ + labels/"
    )
    p.add_argument("--out", required=True, help="the .npz to write (course layout plus frame_id)")
    p.add_argument(
        "--frame-size",
        type=int,
        default=DataConfig().frame_size,
        help="resize each frame so that its longer side is this many pixels before cutting it into 64x128 crops "
        "(default %(default)s: 2x down for 256x256 frames, 8x for the release's 1024x1024)",
    )
    p.add_argument(
        "--require-labels",
        action="store_true",
        help="every image must have a label (by default images without one go to test_set)",
    )
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(run=cmd_data_import)
    p = data_commands.add_parser(
        "merge",
        help="merge data files into one (a source per file, frame ids kept apart) to train on all of them",
        description="Concatenate the training sets (and test sets) of several course-layout files. Each sample keeps "
        "its source (the file's name), so the local test figure is also given per source; frame ids stay distinct "
        "per file and are inferred from frame halves where a file has none (the course file), so no frame "
        "straddles a split. Duplicates across files are grouped when the merged file is split.",
    )
    p.add_argument("files", nargs="+", help="two or more .npz files in the course layout (e.g. `data import` output)")
    p.add_argument("--out", required=True, help="the merged .npz to write")
    p.add_argument("--drop-test", action="store_true", help="leave the inputs' test sets out (default: keep them)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(run=cmd_data_merge)
    p = data_commands.add_parser("clean", help="remove contaminated samples; writes CLEAN.npz and CLEAN.removed.json")
    p.add_argument("file")
    p.add_argument("--out", required=True, help="the cleaned .npz (the report goes beside it)")
    p.add_argument("--show", help="also write a PNG grid of the removed samples")
    p.add_argument("--show-limit", type=int, default=24, help="at most this many samples in the grid")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.set_defaults(run=cmd_data_clean)
    p = data_commands.add_parser("split", help="clean, then print the train/val/local-test split")
    p.add_argument("file", nargs="?", default="", help=DATA_HELP)
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of the crops in the validation part")
    p.add_argument("--test-fraction", type=float, default=0.1, help="share of the crops in the local test part")
    p.add_argument("--seed", type=int, default=0, help="the split's seed (data.split_seed)")
    p.add_argument("--out", help="also save the indices as JSON")
    p.set_defaults(run=cmd_data_split)

    p = commands.add_parser("train", help="train a model; writes checkpoints, curves and metrics to --out")
    p.add_argument("--out", required=True, help="run directory")
    _add_training_flags(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--force", action="store_true", help="replace an existing run directory's files")
    p.add_argument(
        "--nproc", type=int, default=1, help="train with DistributedDataParallel in this many processes (via torchrun)"
    )
    p.set_defaults(run=cmd_train)

    for name, function, text in (
        ("evaluate", cmd_evaluate, "score a run on its validation or local test part"),
        ("predict", cmd_predict, "write a Kaggle CSV for the test_set, or label images for image files (--images)"),
    ):
        p = commands.add_parser(name, help=text)
        p.add_argument(
            "run_dir",
            nargs="?",
            help="a run directory written by marsseg train, a model file (.pt: a run's best.pt, marsseg pack's) or "
            "an exported .onnx; omit it to use the model marsseg ships (docs/model-card.md)",
        )
        p.add_argument("--data", default=None, help="the data file (default: the one the run was trained on)")
        p.add_argument(
            "--device", choices=("auto", "cpu", "cuda"), help="where to predict (default: the run's device, auto)"
        )
        p.add_argument(
            "--precision",
            choices=("auto", "fp32", "bf16"),
            help="inference precision (default: the run's inference_precision, fp32, whose labels an exported .onnx "
            "file reproduces; bf16 is about 1.4x faster on a CPU with native bf16)",
        )
        tta = p.add_mutually_exclusive_group()
        tta.add_argument("--tta", dest="tta", action="store_true", default=None, help="average over a flip")
        tta.add_argument(
            "--no-tta",
            dest="tta",
            action="store_false",
            default=None,
            help="no test-time augmentation: no flip, and the run's own scale only unless --tta-scales",
        )
        p.add_argument(
            "--tta-scales",
            metavar="S,S,...",
            help="also predict every image resized by these factors and average (default: the run's tta_scales)",
        )
        halves = p.add_mutually_exclusive_group()
        halves.add_argument(
            "--whole-frames",
            dest="whole_frames",
            action="store_true",
            default=None,
            help="predict crops that are the two halves of one frame together (default: the run's whole_frames, on)",
        )
        halves.add_argument(
            "--no-whole-frames", dest="whole_frames", action="store_false", default=None, help="every crop alone"
        )
        p.set_defaults(run=function)
    p = commands.choices["evaluate"]
    p.description = (
        "Score a run on its validation, local-test or training part (as split when it trained), or, with --images, "
        "any model on labeled frames of any size in the AI4Mars layout, predicted as predict --images labels them."
    )
    p.add_argument(
        "--split", choices=("val", "test", "train"), default="val", help="the part of the run's split to score"
    )
    p.add_argument(
        "--images",
        metavar="DIR",
        help="labeled frames: DIR/images/NAME.jpg with DIR/labels/NAME.png (AI4Mars values), or the AI4Mars "
        "release's layout; each scored at its own size",
    )
    p.add_argument("--json", metavar="FILE", help="with --images, also write the figures to this JSON file")
    p.add_argument("--force", action="store_true", help="overwrite --json, confusion_SPLIT.png and worst_SPLIT.png")
    p = commands.choices["predict"]
    p.description = (
        "RUN_DIR is a run directory, a model file (.pt) or an .onnx file from marsseg export (run by onnxruntime); "
        "without it, the model marsseg ships. Without --images: the Kaggle CSV for the data file's test_set. With "
        "--images: a label PNG (AI4Mars values) and a colour overlay with a legend per image, for images of any size."
    )
    p.add_argument("--out", required=True, help="the CSV to write; with --images, the folder for labels/ and overlays/")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument(
        "--images",
        nargs="+",
        metavar="PATH",
        help="JPEG or PNG files (gray or colour, any size) or folders of them; each is resized by the run's "
        "data.frame_size / its longer side (the scale the model was trained at)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        help="a resized frame with more pixels than this is predicted in overlapping tiles, one at a time "
        "(default: predict.MAX_FRAME_PIXELS, a 1024x1024 frame)",
    )

    p = commands.add_parser("export", help="write a run's model as an ONNX file (dynamic batch, height, width)")
    p.add_argument(
        "run_dir",
        nargs="?",
        help="a run directory written by marsseg train or a model file (.pt); omit it for the shipped model",
    )
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.set_defaults(run=cmd_export)

    p = commands.add_parser(
        "pack",
        help="write a run's model as one file to share or ship (weights and config only; --half: fp16 weights)",
        description="One .pt file with the run's model (best.pt's weights and config, nothing to resume from), "
        "which predict, evaluate --images, export and marsseg.load accept in place of the run directory. Like every "
        "marsseg model file it holds only tensors and plain values. With --half the weights are stored in fp16 "
        "(half the size) and computed in fp32; the labels are compared with the fp32 model's on the run's "
        "validation and local test parts, and a file that changes more than 0.1 % of them is not written.",
    )
    p.add_argument("run_dir", help="a run directory written by marsseg train")
    p.add_argument("--out", required=True, help="the .pt file to write")
    p.add_argument("--half", action="store_true", help="store the weights in fp16")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.set_defaults(run=cmd_pack)

    p = commands.add_parser(
        "convert-run",
        help="rewrite a trusted run of an earlier marsseg so that its checkpoints hold no code",
        description="marsseg loads model files with weights_only: tensors and plain values only, so a file someone "
        "sends you cannot run code. Runs written by marsseg before that rule kept numpy's RNG state in last.pt and "
        "are refused. This command loads such a run's checkpoints once as full pickles (which runs any code they "
        "hold: use it only on runs you made or trust) and rewrites them in the safe form.",
    )
    p.add_argument("run_dir", help="a run directory written by an earlier marsseg train")
    p.set_defaults(run=cmd_convert_run)

    p = commands.add_parser(
        "experiments",
        help="train several models with one recipe, budget and split (one network a row unless --members N); write "
        "a results table",
    )
    p.add_argument("--out", required=True, help="directory for results.csv, results.md, results.png and runs/")
    _add_training_flags(p)
    p.add_argument("--models", default="unet,dual_unet,deeplab,danet,res_unet", help="comma-separated model names")
    p.add_argument("--seeds", type=int, default=1, help="training seeds per model (the split stays the same)")
    p.add_argument("--no-ensemble", action="store_true", help="skip the ensemble row (softmax averaged)")
    p.set_defaults(run=cmd_experiments)

    p = commands.add_parser(
        "cv",
        help="K-fold cross-validation of one or more configurations, compared in pairs on the same folds (resumable)",
        description="Train each configuration on the same K group-stratified folds (every labeled crop held out once; "
        "the two halves of a frame and near-duplicates on one side), pool the held-out crops into one confusion "
        "matrix, and write OUT/cv.md, cv.csv and cv.png: the out-of-fold mIoU and per-class IoU with a 90 % "
        "bootstrap interval over frame groups, and each configuration's paired difference from the first with its "
        "interval. Re-running the command continues where a killed run stopped.",
    )
    p.add_argument("--data", default=None, help=DATA_HELP)
    p.add_argument("--out", required=True, help="directory for the folds' runs (ROW_seedS_foldK/) and the tables")
    p.add_argument("--folds", type=int, default=3, help="folds: each trains on the others (less a validation part)")
    p.add_argument("--seeds", type=int, default=1, help="training seeds per configuration (the folds stay the same)")
    p.add_argument(
        "--config",
        action="append",
        metavar="FILE.yaml",
        help="a configuration (e.g. recipes/NAME.yaml), a row named by the file's stem; repeat it to compare; the "
        "first is the one the others are compared with (default: marsseg's defaults, a row named default)",
    )
    p.add_argument("--epochs", type=int, help="epochs of every configuration's schedule")
    p.add_argument("--minutes", type=float, help="training budget of every fold, in minutes")
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), help="where to train (default: the config's device, auto)"
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a config field for every configuration")
    p.set_defaults(run=cmd_cv)

    p = commands.add_parser("tune", help="hyperparameter search with Optuna; resumable, shareable between workers")
    p.add_argument("--out", required=True, help="directory for the study, best.yaml, trials.csv and plots")
    _add_training_flags(p)
    p.add_argument("--trials", type=int, required=True, help="trials in the study, counting every worker's")
    p.add_argument("--storage", help="SQLAlchemy URL of a shared study (default: sqlite in --out)")
    p.add_argument("--study", default="marsseg", help="study name within the storage")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument(
        "--models",
        default="res_unet,deeplab",
        help="models the search may choose (unet is left out by default: 4x res_unet's cost per image on a CPU)",
    )
    p.add_argument("--widths", default="16,24,32,48", help="widths the search may choose")
    p.add_argument("--heartbeat", type=int, default=60, help=argparse.SUPPRESS)
    p.set_defaults(run=cmd_tune)

    p = commands.add_parser("overfit-batch", help="sanity check: can the model overfit one batch? exit 1 if not")
    _add_training_flags(p)
    p.add_argument("--target", type=float, default=0.95, help="mIoU to reach on the batch")
    p.add_argument("--max-steps", type=int, default=300, help="give up after this many steps (exit 1)")
    p.set_defaults(run=cmd_overfit_batch)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.run(args)
    except UserError as error:
        print(f"marsseg: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("marsseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

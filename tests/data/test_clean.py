import json

import numpy as np

from marsseg.cli import main
from marsseg.data.clean import duplicate_groups, find_contaminated
from marsseg.data.io import load_npz, validate_arrays
from marsseg.data.synth import make_synthetic


def test_synthetic_planted_samples_all_removed_and_no_legitimate_one():
    arrays, planted = make_synthetic(n_train=400, n_test=4, seed=5, return_planted=True)
    data = validate_arrays("synthetic", arrays)
    report = find_contaminated(data)
    assert len(planted) > 0
    assert set(report.removed) == set(planted.tolist())
    # legitimate identical masks exist and survive
    kept = set(report.kept_indices().tolist())
    legitimate_groups = [g for g in duplicate_groups(data.masks) if not set(g) & set(planted.tolist())]
    assert legitimate_groups and max(len(g) for g in legitimate_groups) >= 3
    assert all(set(g) <= kept for g in legitimate_groups)


def test_clean_command_writes_file_report_and_grid(tmp_path, tiny_npz, capsys):
    out = tmp_path / "clean.npz"
    grid = tmp_path / "removed.png"
    assert main(["data", "clean", str(tiny_npz), "--out", str(out), "--show", str(grid)]) == 0
    report = json.loads((tmp_path / "clean.removed.json").read_text())
    original, cleaned = load_npz(tiny_npz), load_npz(out)
    assert len(cleaned) == len(original) - len(report["removed"]) > 0
    assert grid.stat().st_size > 1000
    assert "mask-group+sprite" in capsys.readouterr().out
    # a second run refuses to overwrite
    assert main(["data", "clean", str(tiny_npz), "--out", str(out)]) == 2


def test_real_data_removes_the_sprite_group_only(real_npz):
    data = load_npz(real_npz)
    report = find_contaminated(data)
    removed = report.removed_indices()
    assert len(removed) == 110
    # all removed share one mask, and they are exactly the samples with that mask
    assert len({data.masks[i].tobytes() for i in removed}) == 1
    same_mask = np.flatnonzero((data.masks == data.masks[removed[0]]).all(axis=(1, 2)))
    assert set(same_mask.tolist()) == set(removed.tolist())
    # the other large groups of identical (legitimate, near-uniform) masks are all kept
    kept = set(report.kept_indices().tolist())
    others = [g for g in duplicate_groups(data.masks) if g[0] not in set(removed.tolist())]
    assert sum(len(g) for g in others if len(g) >= 5) > 100
    assert all(set(g) <= kept for g in others)
    # the removed images carry a bright pasted sprite that the kept ones lack
    region = report.templates[0].region
    assert data.images[removed][:, region].mean() > data.images[sorted(kept)][:, region].mean() + 50

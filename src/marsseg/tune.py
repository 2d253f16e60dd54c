"""Hyperparameter search with Optuna (TPE sampler, median pruner), calling the same `fit` as `marsseg train`.

Every trial trains on one fixed split and is scored on the validation part only; the local test part is never
looked at while tuning. The study lives in a database (SQLite in the output directory by default, or any
SQLAlchemy URL), so several processes or machines can work on one study and a re-run resumes it.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import fcntl
import os
import threading
import time
import warnings
from datetime import datetime
from pathlib import Path

from tqdm import tqdm

from marsseg.config import Config, get_field, one_network, save_config, set_field
from marsseg.data.io import write_atomically
from marsseg.data.prepare import prepare_data
from marsseg.engine import fit
from marsseg.errors import UserError

# States that count towards the study's number of trials. A failed trial (a killed worker's, once its heartbeat
# stops) does not count: its place is taken by a new trial.
COUNTED = ("COMPLETE", "PRUNED", "RUNNING")
# The plain unet costs about 4x res_unet's FLOPs per image; on a CPU its trials are that much slower.
DEFAULT_MODELS = ("res_unet", "deeplab")
DEFAULT_WIDTHS = (16, 24, 32, 48)


def _optuna():
    try:
        import optuna
    except ImportError:
        raise UserError("marsseg tune needs Optuna: pip install 'marsseg[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats, fail_stale_trials and the matplotlib plots are marked experimental, and heartbeats outside
    # Study.optimize warn on every trial: noise for a user of `marsseg tune`, which uses them on purpose.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    return optuna


def search_space(models=DEFAULT_MODELS, *, widths=DEFAULT_WIDTHS) -> dict[str, tuple[str, str, tuple]]:
    """The search space, one place for it: parameter name -> (config field, kind, range).

    Kinds: "float" with (low, high, log), "int" with (low, high), "categorical" with the choices. The Dice
    weight stays the base's: the focal weight sets the balance.
    """
    return {
        "lr": ("optim.lr", "float", (1e-4, 3e-3, True)),
        "weight_decay": ("optim.weight_decay", "float", (1e-6, 1e-2, True)),
        "batch_size": ("optim.batch_size", "categorical", (16, 32, 64)),
        "scheduler": ("optim.scheduler", "categorical", ("cosine", "onecycle", "plateau")),
        "model": ("model.name", "categorical", tuple(models)),
        "width": ("model.width", "categorical", tuple(widths)),
        "focal_weight": ("loss.focal_weight", "float", (0.25, 4.0, True)),
        "focal_gamma": ("loss.focal_gamma", "float", (0.0, 3.0, False)),
        "class_weights": ("loss.class_weights", "categorical", ("none", "inverse_sqrt", "inverse")),
        "oversample_factor": ("data.oversample_factor", "int", (1, 8)),
        "elastic": ("augment.elastic", "float", (0.0, 0.5, False)),
        "grid_distortion": ("augment.grid_distortion", "float", (0.0, 0.5, False)),
        "brightness_limit": ("augment.brightness_limit", "float", (0.0, 0.4, False)),
        "contrast_limit": ("augment.contrast_limit", "float", (0.0, 0.4, False)),
        "gamma": ("augment.gamma", "float", (0.0, 0.6, False)),
    }


def _suggest(trial, name: str, kind: str, spec: tuple):
    if kind == "float":
        low, high, log = spec
        return trial.suggest_float(name, low, high, log=log)
    if kind == "int":
        return trial.suggest_int(name, *spec)
    return trial.suggest_categorical(name, list(spec))


def _inside(kind: str, spec: tuple, value) -> bool:
    return value in spec if kind == "categorical" else spec[0] <= value <= spec[1]


def suggest_config(trial, base: Config, *, models=DEFAULT_MODELS, widths=DEFAULT_WIDTHS) -> Config:
    """The base config with every parameter of the search space drawn by `trial`."""
    cfg = copy.deepcopy(base)
    for name, (dotted, kind, spec) in search_space(models, widths=widths).items():
        set_field(cfg, dotted, _suggest(trial, name, kind, spec))
    if cfg.model.name != base.model.name:
        cfg.model.options = {}  # the base's options belong to the base's model
    return cfg


def base_params(base: Config, *, models=DEFAULT_MODELS, widths=DEFAULT_WIDTHS) -> dict | None:
    """`base` as a point of the search space, or None when it lies outside the space.

    A new study starts with this point as its first trial, so the study measures the recipe it starts from
    under the same budget and can only report a best that is at least as good on validation.
    """
    params = {}
    for name, (dotted, kind, spec) in search_space(models, widths=widths).items():
        params[name] = get_field(base, dotted)
        if not _inside(kind, spec, params[name]):
            return None
    return params


def check_same_split_for_study(study, split) -> None:
    """Trials are compared on one validation part: a study records its split's digest and refuses to go on with
    another (other data, split settings, or the split's grouping of frames since 2026-11-29). A study with trials
    but no digest was started before it was recorded, and so on the split of before."""
    recorded = study.user_attrs.get("split_digest")
    if recorded is None and study.get_trials(deepcopy=False):
        raise UserError(
            f"study '{study.study_name}' was started before studies recorded their split, and the split has changed "
            "since (2026-11-29); start a new study (--study NAME or a new --out)"
        )
    if recorded is None:
        study.set_user_attr("split_digest", split.digest())
    elif recorded != split.digest():
        raise UserError(
            f"study '{study.study_name}' was run on another split (digest {recorded}, now {split.digest()}); "
            "start a new study (--study NAME or a new --out)"
        )


def check_same_kept_epoch_for_study(study, keep: str) -> None:
    """A trial's score is the validation mIoU of the model its run keeps (optim.keep): the best epoch, the last, or
    the vote of the two. A study records its rule and refuses to mix another in; one with trials but no rule recorded
    was started before optim.keep existed, when every trial kept its best epoch."""
    trials = study.get_trials(deepcopy=False)
    recorded = study.user_attrs.get("keep", "best" if trials else None)
    if recorded is None:
        study.set_user_attr("keep", keep)
    elif recorded != keep:
        raise UserError(
            f"study '{study.study_name}' scored its trials with optim.keep {recorded}, this command with {keep}; "
            f"start a new study (--study NAME or a new --out) or --set optim.keep={recorded}"
        )


def check_same_choices(study, models, widths) -> None:
    """A study's categorical choices are fixed when it starts (Optuna refuses others): say so in one line."""
    for trial in study.get_trials(deepcopy=False):
        for name, flag, choices in (("model", "--models", models), ("width", "--widths", widths)):
            distribution = trial.distributions.get(name)
            if distribution is not None and tuple(distribution.choices) != tuple(choices):
                raise UserError(
                    f"study '{study.study_name}' was started with {flag} {','.join(map(str, distribution.choices))}; "
                    f"found {','.join(map(str, choices))}: pass the same to continue it"
                )


def open_study(out_dir: Path, storage: str | None, name: str, seed: int, *, heartbeat: int = 60):
    """Create or load the study; trials of dead workers (no heartbeat for 2 intervals) are marked failed."""
    optuna = _optuna()
    url = storage or f"sqlite:///{out_dir / 'study.db'}"
    rdb = optuna.storages.RDBStorage(
        url,
        heartbeat_interval=heartbeat,
        grace_period=2 * heartbeat,
        engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {},
    )
    study = optuna.create_study(
        study_name=name,
        storage=rdb,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
        load_if_exists=True,
    )
    return study, rdb


@contextlib.contextmanager
def heartbeat_while_running(rdb, trial, interval: int):
    """Record the trial's heartbeat every `interval` seconds, so a killed worker's trial is seen as stale."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            rdb.record_heartbeat(trial._trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def _claim_lock(out_dir: Path):
    """Workers on one machine take turns to claim a trial, so together they never start more than asked."""
    with open(out_dir / ".claim.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fail_trials_without_heartbeat(study, rdb) -> None:
    """Mark failed the running trials that never recorded a heartbeat and started over a grace period ago: a worker
    killed between asking for a trial and its first beat (claim_trial records it at once) left them. Optuna's
    fail_stale_trials never sees such a trial, which would count as running for ever."""
    import sqlalchemy

    grace = rdb.grace_period or 2 * rdb.heartbeat_interval
    with rdb.engine.connect() as connection:
        rows = connection.execute(
            sqlalchemy.text(
                "SELECT number, datetime_start FROM trials WHERE study_id = :study AND state = 'RUNNING' "
                "AND trial_id NOT IN (SELECT trial_id FROM trial_heartbeats)"
            ),
            {"study": study._study_id},
        ).fetchall()
    for number, started in rows:
        if isinstance(started, str):  # SQLite returns text
            started = datetime.fromisoformat(started)
        # Optuna stamps datetime_start with the worker's local clock, as here
        if started is None or (datetime.now() - started).total_seconds() > grace:
            study.tell(number, state=_optuna().trial.TrialState.FAIL)


def claim_trial(study, rdb, n_trials: int, out_dir: Path):
    """A new trial, or None once the study holds `n_trials` finished or running trials."""
    optuna = _optuna()
    with _claim_lock(out_dir):
        optuna.storages.fail_stale_trials(study)
        fail_trials_without_heartbeat(study, rdb)
        counted = [t for t in study.get_trials(deepcopy=False) if t.state.name in COUNTED]
        if len(counted) >= n_trials:
            return None
        trial = study.ask()
        # A running trial without any heartbeat is never seen as stale: a worker killed before its heartbeat
        # thread started would leave a trial that counts as running for ever. So the first beat is recorded here.
        rdb.record_heartbeat(trial._trial_id)
        return trial


def run_trial(study, trial, base: Config, prepared, out_dir: Path, space: dict) -> None:
    optuna = _optuna()
    # A trial tunes one network: an ensemble's members train one after another with the same recipe (engine.fit),
    # and best.yaml keeps the base's number of members.
    cfg = suggest_config(trial, base, **space)
    cfg = one_network(cfg)

    def report(epoch: int, val_miou: float) -> None:
        trial.report(val_miou, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()

    try:
        result = fit(
            cfg,
            out_dir / "trials" / f"trial_{trial.number:04d}",
            force=True,
            prepared=prepared,
            on_epoch=report,
            score_test=False,
        )
    except optuna.TrialPruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return
    except Exception:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    study.tell(trial, result.best_val_miou)


def tune(
    base: Config,
    out_dir: str | os.PathLike,
    n_trials: int,
    *,
    storage: str | None = None,
    name: str = "marsseg",
    timeout: float | None = None,
    heartbeat: int = 60,
    models=DEFAULT_MODELS,
    widths=DEFAULT_WIDTHS,
):
    """Run trials until the study holds `n_trials` (counting other workers') or `timeout` seconds pass."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prepared = prepare_data(base.data)  # one split for every trial
    with _claim_lock(out_dir):  # two workers creating one SQLite schema at once collide
        study, rdb = open_study(out_dir, storage, name, base.seed, heartbeat=heartbeat)
        check_same_choices(study, models, widths)
        check_same_split_for_study(study, prepared.split)
        check_same_kept_epoch_for_study(study, base.optim.keep)
        start_point = base_params(base, models=models, widths=widths)
        if start_point is not None and not study.get_trials(deepcopy=False):
            study.enqueue_trial(start_point)
    start = time.monotonic()
    space = {"models": tuple(models), "widths": tuple(widths)}
    done_before = sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.get_trials(deepcopy=False))
    bar = tqdm(total=n_trials, initial=done_before, desc="trials", disable=None)
    while timeout is None or time.monotonic() - start < timeout:
        trial = claim_trial(study, rdb, n_trials, out_dir)
        if trial is None:
            break
        with heartbeat_while_running(rdb, trial, heartbeat):
            run_trial(study, trial, base, prepared, out_dir, space)
        bar.update(1)
    bar.close()
    write_outputs(study, base, out_dir, space)
    return study


def write_outputs(study, base: Config, out_dir: Path, space: dict) -> None:
    """best.yaml (for `marsseg train --config`), trials.csv, and the optimisation history and importance plots."""
    optuna = _optuna()
    trials = study.get_trials(deepcopy=False)
    names = sorted({key for t in trials for key in t.params})

    def write_csv(temporary: str) -> None:
        with open(temporary, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["number", "state", "val_miou", "seconds", *names])
            for t in trials:
                seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else ""
                writer.writerow([t.number, t.state.name, t.value, seconds, *(t.params.get(n, "") for n in names)])

    write_atomically(out_dir / "trials.csv", write_csv)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if not complete:
        return
    best = max(complete, key=lambda t: t.value)
    save_config(suggest_config(optuna.trial.FixedTrial(best.params), base, **space), out_dir / "best.yaml")
    from marsseg import report

    axis = optuna.visualization.matplotlib.plot_optimization_history(study)
    report.save_figure(axis.figure, out_dir / "history.png")
    if len(complete) >= 2:
        axis = optuna.visualization.matplotlib.plot_param_importances(study)
        report.save_figure(axis.figure, out_dir / "importances.png")

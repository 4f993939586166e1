"""The side-by-side benchmark's parity claims, checked without TRL (benchmarks/vs_trl.py)."""

import argparse
import random
import re
from itertools import islice

import pytest
from PIL import Image

from benchmarks.reward_cost import make_rollout
from benchmarks.scaling import FIXED_G, FIXED_TOKENS, points
from benchmarks.vs_trl import (
    REWARDS,
    Setup,
    shapes_examples,
    srmcr_overrides,
    trl_reward,
    worker_command,
)
from benchmarks.vs_trl_report import PHASES, report, report_scaling
from datamodules.image_question import ImageQuestionDataModule
from srmcr.reward import SelfReward


def test_trl_reward_wrapper_returns_srmcrs_own_reward():
    questions = ["How many red circles are there?"] * 2 + ["Is there a blue square?"] * 2
    texts = ["<think>Step 1: I count the red circles.\nStep 2: There are two red circles."
             "</think><answer>2</answer>", "red red red", "<think>Step 1: a blue square is at "
             "the top.</think><answer>yes</answer>", "<answer>no</answer>"]
    wrapped = trl_reward(REWARDS["trivial"], group_size=2)
    got = wrapped(prompts=[None] * 4, completions=[[{"role": "assistant", "content": t}]
                                                   for t in texts], question=questions)
    expected = SelfReward(cues=list(REWARDS["trivial"]))(make_rollout(questions, texts, 2))
    assert got == pytest.approx(expected.rewards.tolist())


SETUPS = [pytest.param(Setup(), id="default"),
          pytest.param(Setup(image_size=224, gradient_checkpointing=True), id="prompt-heavy"),
          pytest.param(Setup(image_size=448, gradient_checkpointing=True, group_size=8),
                       id="256-image-tokens-G8")]


@pytest.mark.parametrize("s", SETUPS)
def test_trl_side_streams_the_same_prompts_as_the_datamodule(s):
    data = ImageQuestionDataModule(train=s.train, batch_size=s.prompts,
                                   max_pixels=s.max_pixels, min_pixels=s.min_pixels, seed=s.seed)
    data.setup("fit")
    batches = list(islice(iter(data.train_dataloader()), 2))
    examples = shapes_examples(s, 2 * s.prompts)
    assert [q for b in batches for q in b.questions] == [e.question for e in examples]
    first = batches[0].images[0]
    assert first.size == examples[0].image.size and first.tobytes() == examples[0].image.tobytes()
    assert first.size == (s.image_size, s.image_size)


@pytest.mark.parametrize("s", SETUPS)
def test_srmcr_overrides_pin_the_shared_settings(s):
    from benchmarks.step_time import build

    module, data = build("configs/tiny.yaml", srmcr_overrides(s, REWARDS["text"]))
    assert (module.sampling.group_size, module.sampling.max_new_tokens, data.batch_size) == \
        (s.group_size, s.max_new_tokens, s.prompts)
    assert (module.policy_args.lora.r, module.policy_args.lora.alpha) == (s.lora_r, s.lora_alpha)
    assert module.grpo_args.beta == s.beta and module.grpo_args.aggregation == "grpo"
    assert list(module.reward.names) == list(REWARDS["text"])
    assert not module.reward.needs  # TRL's rewards see texts: no log-probs, no policy
    assert module.policy_args.gradient_checkpointing == s.gradient_checkpointing
    assert (module.policy_args.max_pixels, data.decode_args.max_pixels) == (s.max_pixels,) * 2
    assert data.specs["train"] == [s.train]


def test_each_worker_runs_the_setting_and_group_size_it_is_given():
    args = argparse.Namespace(steps=3, warmup=1, threads=1, image_size=448,
                              gradient_checkpointing=True)
    command = worker_command("trl", "text", args, group_size=16)
    assert command[command.index("--worker") + 1] == "trl"
    assert {"--rewards", "text", "--steps=3", "--warmup=1", "--threads=1", "--image-size=448",
            "--group-sizes=16", "--gradient-checkpointing"} <= set(command)


def _run(step: float, cpu: float) -> dict:
    record = {"step": step, "cpu": cpu, "tokens": 48, "completions": 1, "truncated": 1,
              "phases": dict.fromkeys(PHASES, 0.0)}
    return {"steps": [record], "peak_rss_mb": 1.0}


def test_report_pairs_the_runs_of_each_round(capsys):
    # Round 1: 1.0 / 2.0; round 2: 1.2 / 2.0. The pooled medians (1.1 / 2.0) hide that spread.
    report({"text": {"srmcr": [_run(1.0, 1.0), _run(1.2, 1.2)],
                     "trl": [_run(2.0, 2.0), _run(2.0, 2.0)]}}, 48)
    text = capsys.readouterr().out
    assert "**0.55x**" in text
    assert "text: srmcr / TRL round by round: 0.50, 0.60 (range 0.50-0.60;" in text


def test_scaling_report_has_one_row_per_group_size(capsys):
    report_scaling("text", {4: {"srmcr": [_run(1.0, 0.9)], "trl": [_run(2.5, 2.4)]},
                            16: {"srmcr": [_run(2.0, 1.8)], "trl": [_run(8.0, 7.2)]}})
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| 4 ")
            or ln.startswith("| 16 ")]
    assert len(rows) == 2
    assert "**0.40x**" in rows[0] and "0.38x" in rows[0]
    assert "**0.25x**" in rows[1] and "0.25x |" in rows[1]


def test_scaling_points_cover_both_sweeps_once():
    pairs = points()
    assert len(pairs) == len(set(pairs))
    assert {g for g, t in pairs if t == FIXED_TOKENS} == {2, 4, 8, 16}
    assert {t for g, t in pairs if g == FIXED_G} == {32, 64, 128}


# ---- benchmarks/toy_world.py -------------------------------------------------------------------
def test_toy_world_variants_configure_what_they_name(tmp_path, capsys, monkeypatch):
    """Each variant's fit command, parsed by main.py itself (--print_config: nothing is built)."""
    import yaml

    monkeypatch.setattr("sys.argv", ["main.py"])  # the CLI warns when pytest's argv is there too

    from benchmarks.toy_world import (
        COOLING,
        CUES,
        ROOT,
        all_variants,
        fit_args,
        parse_args,
        write_no_cooling,
    )
    from main import main

    a = parse_args(["--out", str(tmp_path), "--steps", "40"])
    write_no_cooling(a.out)
    controls = {"oracle": [{"path": "benchmarks.rewards:oracle", "weight": 1.0,
                            "uses_labels": True}],  # trains on labels: the ceiling
                "random": [{"path": "benchmarks.rewards:random_reward", "weight": 1.0,
                            "uses_labels": False}]}  # no signal, no labels
    for name, v in all_variants().items():
        with pytest.raises(SystemExit):
            main([*fit_args(v, 7, a, tmp_path / "runs" / name / "s7"), "--print_config"])
        config = yaml.safe_load(capsys.readouterr().out)
        model = config["model"]["init_args"]
        reward = model["reward"]["init_args"]
        callbacks = [c["class_path"] for c in config["trainer"]["callbacks"]]
        recipe = ROOT / "configs" / "recipes" / f"{name}.yaml"
        expected = (yaml.safe_load(recipe.read_text())["model"]["reward"]["init_args"]["cues"]
                    if v.group == "recipe" else [] if v.group == "control"
                    else [c for c in CUES if name != f"no_{c}"])
        assert reward["cues"] == expected, name
        assert reward["functions"] == controls.get(name, []), name
        assert reward["reliability"] == (name not in ("no_reliability", "mm_upt",
                                                      "vision_sr1_labelfree")), name
        assert (COOLING in callbacks) == (name not in ("no_cooling", "mm_upt")), name
        assert model["sampling"]["temperature"] == 1.0
        assert model["sampling"]["max_new_tokens"] == 48  # the shapes world: no tally overlay
        assert model["grpo"]["beta"] == (0.1 if name == "kl_0.1" else 0.01), name
        assert model["optimizer"]["init_args"]["lr"] == (5e-4 if name == "lr_5e-4" else 1e-4), name
        assert model["sampling"]["val_group_size"] == 0  # curves need the greedy accuracy only
        assert (config["seed_everything"], config["data"]["init_args"]["seed"]) == (7, 7)
        assert (config["trainer"]["max_steps"], config["trainer"]["val_check_interval"]) == (40, 10)
        assert model["policy"]["model"] == "warm:small"
        assert config["trainer"]["logger"]["init_args"]["version"] == "s7"
    assert not any("oracle" in str(p.read_text()) for p in (ROOT / "configs").rglob("*.yaml"))


def test_toy_world_tally_sets_the_overlay_the_splits_and_the_retention_evaluation(
        tmp_path, capsys, monkeypatch):
    """--world tally: every main.py call gets configs/tally.yaml after tiny.yaml, the warm start
    is warm:tally, selection and report on the frontier, and the warm start and both
    checkpoints of each run are also evaluated on the base level (retention), accuracy only."""
    import yaml

    monkeypatch.setattr("sys.argv", ["main.py"])
    import benchmarks.toy_world as tw
    from main import main

    a = tw.parse_args(["--world", "tally", "--out", str(tmp_path), "--val-n", "64"])
    assert (a.model, a.world.name) == ("warm:tally", "tally")
    assert a.select == "tally:val?level=frontier&n=128"
    assert a.split == a.preflight_split == "tally:heldout?level=frontier&n=64"
    assert a.retention == "tally:heldout?level=base&n=64"
    fit = tw.fit_args(tw.all_variants()["srmcr"], 0, a, tmp_path / "runs" / "srmcr" / "s0")
    assert fit[1:7] == ["-c", tw.BASE, "-c", "configs/tally.yaml", "-c", tw.SRMCR]
    with pytest.raises(SystemExit):
        main([*fit, "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["init_args"]["policy"]["model"] == "warm:tally"
    assert config["model"]["init_args"]["sampling"]["max_new_tokens"] == 112
    assert config["data"]["init_args"]["val"] == a.select
    assert config["data"]["init_args"]["train"] == "tally:train?level=frontier"

    keys = {trained: [(e.key, e.checkpoint, e.split, e.scored)
                      for e in tw.evaluations_of(a, trained)] for trained in (False, True)}
    assert keys[False] == [("eval", "eval", a.split, True),
                           ("retention", "eval", a.retention, False)]
    assert keys[True] == [("eval", "eval", a.split, True), ("eval_best", "best", a.split, True),
                          ("retention", "eval", a.retention, False),
                          ("retention_best", "best", a.retention, False)]
    folders = {tw.eval_folder(tmp_path / "s0", e).name for e in tw.evaluations_of(a, True)}
    assert folders == {"s0-eval-heldout64", "s0-best-heldout64", "s0-eval-heldout-retention64",
                       "s0-best-heldout-retention64"}
    retention = tw.evaluations_of(a, True)[3]
    predict = tw.eval_args(a, tmp_path / "s0-x", tmp_path / "s0.best.ckpt", retention)
    assert predict[:7] == ["predict", "-c", tw.BASE, "-c", "configs/tally.yaml", "-c", tw.SRMCR]
    assert f"--data.predict={a.retention}" in predict and tw.ACCURACY_ONLY[0] in predict
    assert tw.ACCURACY_ONLY[0] not in tw.eval_args(a, tmp_path, None, tw.evaluations_of(a, 0)[0])

    calls = []
    monkeypatch.setattr(tw, "run_main", lambda argv, log: calls.append(argv) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        tw.preflight(a)
    assert calls[0][:7] == ["preflight", "-c", tw.BASE, "-c", "configs/tally.yaml", "-c",
                            tw.SRMCR]
    assert f"--data.val={a.split}" in calls[0]

    shapes = tw.parse_args(["--out", str(tmp_path), "--val-n", "64"])
    assert shapes.retention is None and shapes.model == "warm:small"
    assert [e.key for e in tw.evaluations_of(shapes, True)] == ["eval", "eval_best"]
    assert tw.eval_folder(tmp_path / "s0", tw.evaluations_of(shapes, True)[1]).name == \
        "s0-best-heldout64"  # the names of the shapes runs cached before worlds existed
    assert tw.parse_args(["--quick", "--world", "tally"]).model == "warm:tally-tiny"


def test_toy_world_tally_base_level_trains_selects_and_reports_on_the_base(tmp_path, capsys,
                                                                          monkeypatch):
    """--level base: the warm start's own level for training data, selection and the report,
    no retention split, results kept apart from the frontier's; a level is the tally world's."""
    import yaml

    monkeypatch.setattr("sys.argv", ["main.py"])
    import benchmarks.toy_world as tw
    from main import main

    a = tw.parse_args(["--world", "tally", "--level", "base", "--val-n", "64"])
    assert a.select == "tally:val?level=base&n=128"
    assert a.split == a.preflight_split == "tally:heldout?level=base&n=64"
    assert a.retention is None and a.out.name == "toy_world_tally_base"
    a.out = tmp_path
    fit = tw.fit_args(tw.all_variants()["oracle"], 0, a, tmp_path / "runs" / "oracle" / "s0")
    with pytest.raises(SystemExit):
        main([*fit, "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["data"]["init_args"]["train"] == "tally:train?level=base"
    assert config["data"]["init_args"]["val"] == a.select
    with pytest.raises(SystemExit):
        tw.parse_args(["--level", "base"])  # the shapes world has no levels
    assert "--level is the tally world's" in capsys.readouterr().err


def test_toy_world_the_world_keys_the_cache(tmp_path, monkeypatch):
    """A run trained in one world is never reused in the other (even under one --out); one
    cached before worlds existed is the shapes world's."""
    import json

    import benchmarks.toy_world as tw

    trained = []

    def train(v, seed, a, folder):
        trained.append(a.world.name)
        folder.mkdir(parents=True, exist_ok=True)
        return {"variant": v.name, "seed": seed, "settings": a.settings, "fit_s": 1.0,
                "best_step": 1}
    monkeypatch.setattr(tw, "train", train)
    monkeypatch.setattr(tw, "run_main", lambda argv, log: 0.0)  # evaluations: nothing to run
    monkeypatch.setattr(tw, "curves", lambda folder: ({}, None))
    monkeypatch.setattr(tw, "evaluations", lambda folder, a, trained: {"eval": {"accuracy": 0}})
    shapes = tw.parse_args(["--out", str(tmp_path)])
    tally = tw.parse_args(["--out", str(tmp_path), "--world", "tally"])
    assert shapes.out != tw.parse_args(["--world", "tally"]).out  # each world its own default
    folder = tmp_path / "runs" / "srmcr" / "s0"
    folder.mkdir(parents=True)
    before_worlds = {k: v for k, v in shapes.settings.items() if k != "world"}
    (folder / "result.json").write_text(json.dumps(
        {"variant": "srmcr", "seed": 0, "settings": before_worlds, "fit_s": 1.0,
         "best_step": 1}))
    srmcr = tw.all_variants()["srmcr"]
    tw.run_variant(srmcr, 0, shapes)
    assert trained == []  # reused
    tw.run_variant(srmcr, 0, tally)
    assert trained == ["tally"]
    tw.run_variant(srmcr, 0, tally)
    tw.run_variant(srmcr, 0, shapes)
    assert trained == ["tally", "shapes"]
    assert tw._same(tally.settings, tw.parse_args(["--world", "tally", "--val-n", "1024"])
                    .settings, tw.EVALUATED_ON)  # more questions: evaluated, not retrained


def test_toy_world_adapter_at_step_0_reuses_the_warm_start_evaluation(tmp_path, monkeypatch):
    """A best checkpoint at step 0 is the warm start itself (LoRA B = 0): its predictions are
    the warm start's, copied, not computed again; a later best checkpoint is evaluated."""
    import json

    import benchmarks.toy_world as tw

    a = tw.parse_args(["--out", str(tmp_path), "--world", "tally", "--val-n", "4"])
    warm = tmp_path / "runs" / "warm" / "s0"
    warm.mkdir(parents=True)
    for e in tw.evaluations_of(a, False):
        out = tw.eval_folder(warm, e)
        out.mkdir(parents=True)
        (out / "predictions.jsonl").write_text(f"{e.key}\n")
    (warm / "result.json").write_text(json.dumps({"settings": a.settings}))
    evaluated = []
    monkeypatch.setattr(tw, "run_main", lambda argv, log: evaluated.append(
        next(x for x in argv if x.startswith("--ckpt_path"))) or 0.0)
    monkeypatch.setattr(tw, "curves", lambda folder: ({}, None))
    monkeypatch.setattr(tw, "evaluations", lambda folder, a, trained: {"eval": {"accuracy": 0}})
    for step in (0, 3):
        monkeypatch.setattr(tw, "train", lambda v, seed, a, folder: folder.mkdir(
            parents=True, exist_ok=True) or {"variant": v.name, "seed": seed, "fit_s": 1.0,
                                             "settings": a.settings, "best_step": step})
        evaluated.clear()
        tw.run_variant(tw.all_variants()["srmcr"], step, a)
        run = tmp_path / "runs" / "srmcr" / f"s{step}"
        kept = [tw.eval_folder(run, e) for e in tw.evaluations_of(a, True)
                if e.checkpoint == "best"]
        if step == 0:
            assert all(".best.ckpt" not in path for path in evaluated) and len(evaluated) == 2
            assert [(f / "predictions.jsonl").read_text() for f in kept] == ["eval\n",
                                                                             "retention\n"]
        else:
            assert sum(".best.ckpt" in path for path in evaluated) == 2


def test_toy_world_set_overrides_every_run_and_keys_its_results(tmp_path, capsys, monkeypatch):
    """--set reaches main.py after the variant's own overrides (so it wins), and results cached
    under other overrides are not reused (the settings differ)."""
    import yaml

    monkeypatch.setattr("sys.argv", ["main.py"])
    from benchmarks.toy_world import all_variants, fit_args, parse_args
    from main import main

    plain = parse_args(["--out", str(tmp_path)])
    a = parse_args(["--out", str(tmp_path), "--set", "model.sampling.group_size=8",
                    "--set=--model.optimizer.init_args.lr=0.0003"])
    assert a.settings != plain.settings
    with pytest.raises(SystemExit):
        main([*fit_args(all_variants()["lr_5e-4"], 0, a, tmp_path / "r" / "s0"), "--print_config"])
    model = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    assert model["sampling"]["group_size"] == 8
    assert model["optimizer"]["init_args"]["lr"] == 3e-4
    with pytest.raises(SystemExit):
        parse_args(["--set", "model.sampling.group_size"])
    # runs validate (curves, best.ckpt) on the selection split, never on the one they report
    assert "--data.val=shapes:val?n=128" in fit_args(all_variants()["srmcr"], 0, plain, tmp_path)
    with pytest.raises(SystemExit):
        parse_args(["--split", "val"])  # would select the adapter on its own test set
    tuning = parse_args(["--split", "val", "--select", "test", "--select-n", "64"])
    assert tuning.settings["select"] == "shapes:test?n=64" != plain.settings["select"]


def test_toy_world_aggregates_seeds_and_schedules_longest_first():
    from benchmarks.toy_world import CUES, makespan
    from benchmarks.toy_world_report import aggregate, table
    from toyworld.flaws import DETECTORS

    def run(variant, seed, acc):
        kl = [(step, seed + step / 10) for step in range(20)]  # last 10%: steps 18, 19
        evaluation = {"accuracy": acc, "format_rate": 1.0, "cues": {c: 0.5 for c in CUES},
                      "flaw_rate": 0.1, "flaws": {f: 0.0 for f in DETECTORS}}
        out = {"variant": variant, "seed": seed, "fit_s": 60.0, "curves": {"train/kl": kl},
               "eval": evaluation}
        if variant != "warm":  # the best checkpoint on the selection split: 0.125 better here
            out |= {"eval_best": {**evaluation, "accuracy": acc + 0.125}, "best_step": 10 * seed}
        return out
    rows = aggregate([run("warm", 0, 0.25), run("srmcr", 0, 0.25), run("srmcr", 1, 0.5),
                      run("srmcr", 2, 0.75)])
    assert [r["variant"] for r in rows] == ["warm", "srmcr"]
    assert rows[1]["accuracy"] == pytest.approx(0.5) and rows[1]["accuracy_sd"] == 0.25
    assert rows[0]["accuracy_sd"] is None  # one seed: no spread
    assert rows[1]["kl"] == pytest.approx(1 + 1.85)  # seeds 0, 1, 2: 1.85 + seed, averaged
    assert rows[1]["best_accuracy"] == pytest.approx(0.625) and rows[1]["best_steps"] == [0, 10, 20]
    assert rows[0]["best_accuracy"] is None and rows[0]["best_steps"] == []
    text = table(rows, {"srmcr": "SR-MCR"})
    assert "| SR-MCR | 3 | 0.500 ± 0.250 | +0.250 | 0.625 ± 0.250 | +0.375 | 0, 10, 20 |" in text
    assert "| warm | 1 | 0.250 |  |  |  |  |" in text
    assert makespan([3, 3, 2, 2, 2], 2) == 7 and makespan([5, 1], 4) == 5


def test_toy_world_pairs_each_adapter_with_the_warm_start_question_by_question():
    from benchmarks.toy_world import CUES
    from benchmarks.toy_world_report import aggregate, mcnemar, table
    from toyworld.flaws import DETECTORS

    before = {f"q{i}": i < 4 for i in range(10)}  # q0..q3 right
    # 6 fixed, none broken: p = 2 * (1/2)^6; 3 fixed and 1 broken: p = 2 * (1 + 4) / 2^4
    assert mcnemar(before, {q: True for q in before}) == (6, 0, pytest.approx(2 / 2 ** 6))
    after = {**before, "q4": True, "q5": True, "q6": True, "q0": False}
    assert mcnemar(before, after) == (3, 1, pytest.approx(0.625))
    assert mcnemar(before, before) == (0, 0, 1.0)  # nothing changed: no evidence either way
    with pytest.raises(ValueError, match="different questions"):
        mcnemar(before, {"q0": True})

    def run(variant, correct):
        evaluation = {"accuracy": 0.4, "format_rate": 1.0, "cues": {c: 0.5 for c in CUES},
                      "flaw_rate": 0.1, "flaws": {f: 0.0 for f in DETECTORS}, "correct": correct}
        out = {"variant": variant, "seed": 0, "fit_s": 60.0, "curves": {}, "eval": evaluation}
        return out | ({} if variant == "warm" else {"eval_best": {**evaluation, "correct": correct},
                                                    "best_step": 5})
    rows = aggregate([run("warm", before), run("srmcr", after)])
    assert rows[0]["paired"] == [] and rows[1]["paired"] == [(3, 1, pytest.approx(0.625))]
    assert "| 5 | 3/1 (0.62) |" in table(rows, {})


N_QUESTIONS = 1000
WARM_RIGHT = 500  # the warm start answers q0..q499 right
RETENTION = 0.8  # the warm start's retention accuracy


def _verdict_results(arms: dict[str, list[tuple[int, int]]], retention: float | None) -> list:
    """The warm start and each arm's seeds, each seed (fixed, broken): questions it answers
    right that the warm start got wrong, and the reverse; ``retention``: every arm's change on
    the retention split (None: the world has none)."""
    from statistics import fmean

    before = {f"q{i}": i < WARM_RIGHT for i in range(N_QUESTIONS)}

    def evaluation(correct: dict[str, bool]) -> dict:
        return {"accuracy": fmean(map(float, correct.values())), "correct": correct,
                "format_rate": 1.0, "cues": {}, "flaw_rate": 0.0, "flaws": {}}

    def run(variant: str, seed: int, correct: dict[str, bool], keep: float) -> dict:
        out = {"variant": variant, "seed": seed, "fit_s": 60.0, "eval": evaluation(correct)}
        if variant != "warm":  # the adapter: here the last checkpoint itself
            out |= {"eval_best": out["eval"], "best_step": 2}
        if retention is not None:
            out["retention"] = {"accuracy": RETENTION + keep}
            if variant != "warm":
                out["retention_best"] = out["retention"]
        return out
    results = [run("warm", 0, before, 0.0)]
    for variant, seeds in arms.items():
        for seed, (fixed, broken) in enumerate(seeds):
            after = dict(before)
            for i in range(fixed):
                after[f"q{WARM_RIGHT + i}"] = True
            for i in range(broken):
                after[f"q{i}"] = False
            results.append(run(variant, seed, after, retention or 0.0))
    return results


GOOD = {"oracle": [(150, 0)], "srmcr": [(80, 0), (90, 0), (100, 0)], "random": [(10, 0)]}
VERDICT_CASES = [  # (arms, retention change, pre-flight GO, expected per criterion), reason
    pytest.param(GOOD, -0.01, True, dict(oracle=True, srmcr=True, random=True, retention=True,
                                         preflight=True), id="every criterion met"),
    pytest.param({**GOOD, "oracle": [(80, 0)]}, -0.01, True,
                 dict(oracle=False, srmcr=True, random=True, retention=True, preflight=True),
                 id="oracle +8: the loop cannot learn enough in these steps"),
    pytest.param({**GOOD, "srmcr": [(30, 0)] * 3}, -0.01, True,
                 dict(oracle=True, srmcr=False, random=True, retention=True, preflight=True),
                 id="SR-MCR +3: a real gain, below +5"),
    pytest.param({**GOOD, "srmcr": [(140, 0), (120, 0), (0, 10)]}, -0.01, True,
                 dict(oracle=True, srmcr=False, random=True, retention=True, preflight=True),
                 id="SR-MCR +8.3 on average, one seed below the start"),
    pytest.param({"srmcr": [(400, 350)] * 3}, None, True,
                 dict(oracle=None, srmcr=False, random=None, retention=None, preflight=False),
                 id="SR-MCR +5 with 400 fixed, 350 broken: the interval reaches below 0"),
    pytest.param({**GOOD, "oracle": [(300, 0)], "srmcr": [(100, 0)] * 3}, -0.01, True,
                 dict(oracle=True, srmcr=False, random=True, retention=True, preflight=True),
                 id="SR-MCR +10, under half the oracle's +30"),
    pytest.param({**GOOD, "random": [(30, 0)]}, -0.01, True,
                 dict(oracle=True, srmcr=True, random=False, retention=True, preflight=True),
                 id="random +3: a gain without signal"),
    pytest.param({**GOOD, "random": [(0, 25)]}, -0.01, True,
                 dict(oracle=True, srmcr=True, random=False, retention=True, preflight=True),
                 id="random -2.5"),
    pytest.param(GOOD, -0.03, True,
                 dict(oracle=True, srmcr=True, random=True, retention=False, preflight=True),
                 id="retention -3: the frontier costs the warm-up's level"),
    pytest.param({**GOOD, "srmcr": [(0, 0)] * 3}, -0.01, False,
                 dict(oracle=True, srmcr=False, random=True, retention=True, preflight=True),
                 id="NO-GO and no gain: the pre-flight foretold it"),
    pytest.param({**GOOD, "srmcr": [(0, 0)] * 3}, -0.01, True,
                 dict(oracle=True, srmcr=False, random=True, retention=True, preflight=False),
                 id="GO but no gain"),
    pytest.param(GOOD, -0.01, False,
                 dict(oracle=True, srmcr=True, random=True, retention=True, preflight=False),
                 id="NO-GO but SR-MCR gains"),
    pytest.param({"srmcr": GOOD["srmcr"]}, None, None,
                 dict(oracle=None, srmcr=True, random=None, retention=None, preflight=None),
                 id="no controls, no retention split, no pre-flight: not judged"),
]


@pytest.mark.parametrize(("arms", "retention", "go", "expected"), VERDICT_CASES)
def test_toy_world_verdict_judges_each_criterion(arms, retention, go, expected):
    from benchmarks.toy_world_report import aggregate, criteria, verdict_line

    rows = aggregate(_verdict_results(arms, retention))
    assert {c.name: c.met for c in criteria(rows, go)} == expected
    assert {c.name: c.met for c in criteria(rows, go, "adapter")} == expected
    line = verdict_line("tally", rows, go)
    marks = {True: "met", False: "NOT met", None: "not run"}
    assert re.findall(r": (met|NOT met|not run)(?=; | -> )", line) == \
        [marks[m] for m in expected.values()]
    judged = [m for m in expected.values() if m is not None]
    assert line.endswith(f"{sum(judged)} of {len(judged)} judged criteria met")


def test_toy_world_report_pairs_the_last_checkpoint_and_shows_retention():
    from benchmarks.toy_world_report import aggregate, table

    rows = aggregate(_verdict_results({"srmcr": [(80, 20), (100, 0)]}, -0.01))
    srmcr = rows[1]
    assert srmcr["paired_last"] == [(80, 20, pytest.approx(0, abs=1e-6)),
                                    (100, 0, pytest.approx(0, abs=1e-6))]
    assert srmcr["interval"][0] == pytest.approx(0.08)  # (0.06 + 0.10) / 2, question by question
    assert 0 < srmcr["interval"][1] < 0.08 < srmcr["interval"][2]
    assert srmcr["retention"] == pytest.approx(RETENTION - 0.01)
    text = table(rows, {"srmcr": "SR-MCR"})
    assert "retention (last)" in text.splitlines()[0]
    assert "| 0.790 ± 0.000 | -0.010 |" in text.splitlines()[3]
    shapes = table(aggregate(_verdict_results({"srmcr": [(80, 20)]}, None)), {})
    assert "retention" not in shapes


def test_toy_world_preflight_keeps_every_margin_and_prints_the_reward_s():
    """The pre-flight's JSON holds every signal's best-of-G margin; its line shows maj@G -
    greedy and the reward's margin, each with its interval."""
    import json

    from benchmarks.toy_world import preflight_result
    from benchmarks.toy_world_report import preflight_line
    from srmcr.validity import Headroom, SignalSummary

    summary = {"group_size": 8, "questions": 100, "sample_accuracy": 0.4, "mixed_groups": 30,
               "majority_accuracy": 0.5, "greedy_accuracy": 0.45,
               "signals": {"reward": SignalSummary(0.7, 0.6, 0.8, 30),
                           "step_consistency": SignalSummary(0.4, 0.3, 0.45, 30)},
               "headroom": Headroom(0.05, 0.01, 0.09, 10, 5, 100),
               "margins": {"reward": Headroom(0.06, 0.02, 0.1, 12, 6, 100),
                           "step_consistency": Headroom(-0.02, -0.05, 0.01, 3, 5, 100)}}
    result = json.loads(json.dumps(preflight_result(summary, {"world": "tally"})))
    assert result["margins"] == {"reward": [0.06, 0.02, 0.1],
                                 "step_consistency": [-0.02, -0.05, 0.01]}
    assert result["lead"] == [0.05, 0.01, 0.09]
    assert result["go"] and result["verdict"].startswith("GO")
    line = preflight_line(result, "tally:heldout?level=frontier&n=100", 8)
    assert "maj@8 0.500, maj - greedy +0.050 [+0.010, +0.090], reward best-of-8 - greedy " \
        "+0.060 [+0.020, +0.100], reward AUC 0.700 [0.600, 0.800]. GO" in line
    nogo = preflight_result({**summary, "margins": {
        "reward": Headroom(0.0, -0.03, 0.03, 4, 4, 100)}}, {})
    assert not nogo["go"] and nogo["verdict"].startswith("NO-GO")


def test_tally_world_counts_a_completion_flawed_when_check_trace_finds_a_slip(tmp_path):
    import json

    from benchmarks.toy_worlds import SLIPS, WORLDS, summarize, tally_slips
    from srmcr.parsing import parse
    from toyworld import tally

    record, trace = tally.make_trace(0, "heldout", 3, "frontier")
    assert tuple(tally.check_trace(record, [], None)) == SLIPS
    clean = parse(trace)
    wrong_total = [*clean.steps[:-1], clean.steps[-1].replace(
        f"total {clean.answer}", f"total {int(clean.answer) + 1}")]
    source = "tally:heldout:frontier:3"
    rows = [{"source": source, "steps": list(clean.steps), "parsed_answer": clean.answer},
            {"source": source, "steps": wrong_total, "parsed_answer": str(int(clean.answer) + 1)},
            {"source": source, "steps": ["I cannot tell"], "parsed_answer": None}]
    split = "tally:heldout?level=frontier&n=4"
    assert tally_slips(split, rows) == [set(), {"sum"}, {"garbled", "missed", "answer"}]
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps({
        **row, "correct": i == 0, "well_formed": True, "completion_len": 50,
        "scores": {"answer_support": 1.0}}) + "\n" for i, row in enumerate(rows)))
    got = summarize(predictions, split, WORLDS["tally"], ["answer_support", "step_consistency"])
    assert got["flaw_rate"] == pytest.approx(2 / 3) and list(got["flaws"]) == list(SLIPS)
    assert got["flaws"]["sum"] == pytest.approx(1 / 3)
    assert got["cues"] == {"answer_support": 1.0, "step_consistency": None}  # not scored


def test_toy_world_dry_run_plans_both_worlds_of_the_issue(tmp_path, capsys):
    import benchmarks.toy_world as tw

    plan = tw.main(["--dry-run", "--preset", "issue", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert sorted(plan["runs"]) == sorted(
        ["oracle seed 0", "random seed 0", "no_step_consistency seed 0",
         *(f"{v} seed {s}" for v in ("srmcr", "mm_upt") for s in range(3))])
    assert set(plan["worlds_s"]) == {"shapes", "tally"}
    assert plan["both_s"] == pytest.approx(sum(plan["worlds_s"].values()))
    assert plan["planned_s"] == plan["worlds_s"]["shapes"]
    assert plan["worlds_s"]["tally"] > 2 * plan["worlds_s"]["shapes"]  # 2x the tokens, retention
    assert "toy world shapes:" in out and "toy world tally:" in out
    assert "both worlds: ~" in out and f"budget of {tw.BUDGET_MIN} min" in out
    a = tw.parse_args(["--preset", "issue", "--world", "tally", "--val-n", "256"])
    assert a.val_n == 256 and a.every_seed == "srmcr,mm_upt"  # options beside it win
    from benchmarks.toy_worlds import planned_parts

    parts = planned_parts("srmcr", a)
    w = a.world
    assert parts["evaluate"] == pytest.approx(2 * 256 * (w.record_s + w.retention_record_s))
    assert planned_parts(None, a)["start"] == 2 * tw.START_S  # report + retention predicts


@pytest.mark.slow
def test_toy_world_quick_runs_end_to_end(tmp_path):
    """warm:tiny, 2 steps: baseline and SR-MCR through main.py fit / predict (~35 s), then the
    same runs evaluated on more questions (~30 s)."""
    from benchmarks.toy_world import main

    summary = main(["--quick", "--out", str(tmp_path)])
    assert not summary["failed"]
    assert [r["variant"] for r in summary["rows"]] == ["warm", "srmcr"]
    for run in summary["runs"]:
        assert run["eval"]["n"] == 8 and 0 <= run["eval"]["flaw_rate"] <= 1
    trained = summary["runs"][1]
    assert [s for s, _ in trained["curves"]["val/accuracy"]] == [0, 1, 2]  # step 0: the start
    assert trained["eval_best"]["n"] == 8 and trained["best_step"] in (0, 1, 2)
    assert len(trained["curves"]["train/reward_raw"]) == 2
    md = (tmp_path / "toy_world.md").read_text()
    assert "| SR-MCR | 1 |" in md and "maj - greedy " in md  # the pre-flight's paired lead
    assert len(summary["preflight"]["lead"]) == 3

    # More questions: the finished runs are evaluated again, not retrained; the earlier
    # evaluations stay on disk.
    runs = tmp_path / "runs" / "srmcr"
    fitted = (runs / "s0.fit.log").stat().st_mtime_ns
    again = main(["--quick", "--out", str(tmp_path), "--val-n", "12"])
    assert (runs / "s0.fit.log").stat().st_mtime_ns == fitted
    assert [run["eval"]["n"] for run in again["runs"]] == [12, 12]
    assert again["runs"][1]["eval_best"]["n"] == 12
    assert again["runs"][1]["best_step"] == trained["best_step"]
    assert (runs / "s0-eval-heldout8" / "predictions.jsonl").exists()
    assert again["preflight"]["settings"]["split"] == "shapes:heldout?n=12"


@pytest.mark.slow
def test_toy_world_quick_tally_runs_end_to_end_with_the_controls(tmp_path, monkeypatch):
    """--quick --world tally on warm:tally-tiny, SR-MCR and the oracle: the warm start, the
    pre-flight, each fit and every evaluation (report and retention splits) through main.py's
    own entry point, in this process (one job: the subprocesses' imports would cost most of the
    time)."""
    import json

    import benchmarks.toy_world as tw
    from main import main

    monkeypatch.setattr("sys.argv", ["main.py"])
    monkeypatch.chdir(tw.ROOT)
    commands = []

    def in_process(args, log):
        commands.append(args[0])
        main(list(args))
        return 0.0
    monkeypatch.setattr(tw, "run_main", in_process)
    summary = tw.main(["--quick", "--world", "tally", "--variants", "srmcr,oracle", "--jobs", "1",
                       "--val-n", "4", "--out", str(tmp_path)])
    assert not summary["failed"] and summary["world"] == "tally"
    assert [r["variant"] for r in summary["rows"]] == ["warm", "srmcr", "oracle"]
    moved = sum(r["best_step"] != 0 for r in summary["runs"][1:])  # step 0: the warm start's
    assert sorted(commands) == ["fit"] * 2 + ["predict"] * (2 + 2 * 2 + 2 * moved) + ["preflight"]
    for run in summary["runs"]:
        assert run["eval"]["n"] == run["retention"]["n"] == 4
        assert list(run["eval"]["flaws"]) == list(tw.WORLDS["tally"].flaw_kinds)
    assert all(r["eval_best"]["n"] == r["retention_best"]["n"] == 4 for r in summary["runs"][1:])
    assert summary["preflight"]["settings"]["world"] == "tally"
    assert "reward" in summary["preflight"]["margins"]
    assert [c["name"] for c in summary["verdict"]] == ["oracle", "srmcr", "random", "retention",
                                                       "preflight"]
    retention = tmp_path / "runs" / "warm" / "s0-eval-heldout-retention4" / "predictions.jsonl"
    rows = [json.loads(line) for line in retention.read_text().splitlines()]
    assert [r["source"] for r in rows] == [f"tally:heldout:base:{i}" for i in range(4)]
    assert all(list(r["scores"]) == ["answer_support"] for r in rows)  # accuracy only: no cues
    md = (tmp_path / "toy_world.md").read_text()
    assert "| oracle (reward: the label) | 1 |" in md and "retention (last)" in md
    assert "Verdict (tally world, last checkpoints" in md


def test_strip_reward_state_keeps_only_the_adapter(tmp_path):
    """What toy_world evaluates and reward_auc --ckpt samples from: the LoRA weights, without
    the run's reward state (other cues) or its temperature and RNG state (the caller's decide)."""
    import torch

    from benchmarks.toy_world import strip_reward_state

    lora = "model.base_model.model.layers.0.q_proj.lora_A.default.weight"
    torch.save({"state_dict": {lora: torch.ones(2, 3), "reward.reliability_ema": torch.zeros(6)},
                "srmcr": {"temperature": 0.4}, "global_step": 7}, tmp_path / "run.ckpt")
    state = torch.load(strip_reward_state(tmp_path / "run.ckpt", tmp_path / "eval.ckpt"),
                       weights_only=True)
    assert list(state["state_dict"]) == [lora] and torch.equal(state["state_dict"][lora],
                                                                 torch.ones(2, 3))
    assert "srmcr" not in state and state["global_step"] == 7


def test_shifted_view_moves_the_scene_on_its_own_background():
    from benchmarks.warm_start import shifted_view
    image = Image.new("RGB", (8, 6), (250, 250, 250))
    image.putpixel((3, 2), (255, 0, 0))  # one red pixel: where it lands shows the shift
    rng, again = random.Random("val:7"), random.Random("val:7")
    dx, dy = again.randint(-2, 2), again.randint(-2, 2)  # what shifted_view draws, in order
    view = shifted_view(image, rng, 2)
    assert view.size == image.size
    assert view.getpixel((3 + dx, 2 + dy)) == (255, 0, 0)
    # Whatever was uncovered is the image's background, not black: 47 background pixels stay.
    assert sum(px == (250, 250, 250) for px in view.getdata()) == 8 * 6 - 1
    assert list(shifted_view(image, random.Random("val:7"), 2).getdata()) == list(view.getdata())
    assert list(shifted_view(image, random.Random("x"), 0).getdata()) == list(image.getdata())


def test_toy_world_preflight_samples_as_the_runs_do(tmp_path, monkeypatch):
    """The pre-flight describes the runs' own sampling: --set overrides reach it, and a cached
    pre-flight under other overrides is not reused."""
    import json

    import benchmarks.toy_world as tw

    calls = []

    def stop(argv, log):
        calls.append(argv)
        raise RuntimeError("stop before loading the signals")

    monkeypatch.setattr(tw, "run_main", stop)
    a = tw.parse_args(["--out", str(tmp_path), "--set", "model.sampling.top_p=0.7"])
    a.preflight_split = "shapes:heldout?n=8"
    (tmp_path / "preflight").mkdir()
    (tmp_path / "preflight" / "result.json").write_text(json.dumps(
        {"settings": {"model": a.model, "split": a.preflight_split, "group_size": 8}}))
    with pytest.raises(RuntimeError, match="stop"):
        tw.preflight(a)  # the cached result was computed without top_p: not reused
    assert "--model.sampling.top_p=0.7" in calls[0]
    assert calls[0].index("--model.sampling.top_p=0.7") > calls[0].index("--model.sampling."
                                                                          "val_group_size=8")


def test_contrastive_greedy_is_greedy_without_contrast_or_under_a_full_cut():
    """VCD's decoding reduces to greedy at alpha 0, and at beta 1 (only the image's own argmax is
    plausible, whatever the blank says); the blank is each image's mean colour."""
    from benchmarks.warm_start import contrastive_greedy
    from srmcr.evaluation import generate_greedy
    from srmcr.logprobs import mean_colour_blank
    from srmcr.rollout import SamplingArgs
    from tests.fixtures import (
        MEAN_COLOURS,
        QUESTIONS,
        randomize_lora,
        tiny_policy,
        two_images,
    )

    model, processor = tiny_policy()
    randomize_lora(model)
    model.eval()
    args = SamplingArgs(max_new_tokens=8)
    greedy = generate_greedy(model, processor, two_images(), QUESTIONS, args).texts
    assert any(greedy)  # something was decoded, so the comparisons below can fail
    assert contrastive_greedy(model, processor, two_images(), QUESTIONS, args, 0.0) == greedy
    assert contrastive_greedy(model, processor, two_images(), QUESTIONS, args, 5.0,
                              beta=1.0) == greedy
    blanks = [mean_colour_blank(im) for im in two_images()]
    assert [b.getpixel((0, 0)) for b in blanks] == MEAN_COLOURS
    assert [b.size for b in blanks] == [im.size for im in two_images()]

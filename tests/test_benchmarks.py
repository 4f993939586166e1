"""The side-by-side benchmark's parity claims, checked without TRL (benchmarks/vs_trl.py)."""

import argparse
import random
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
from benchmarks.vs_trl_report import PHASES, report_scaling
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


def test_scaling_report_has_one_row_per_group_size(capsys):
    def run(step: float, cpu: float) -> dict:
        record = {"step": step, "cpu": cpu, "tokens": 48, "completions": 1, "truncated": 1,
                  "phases": dict.fromkeys(PHASES, 0.0)}
        return {"steps": [record], "peak_rss_mb": 1.0}

    report_scaling("text", {4: {"srmcr": [run(1.0, 0.9)], "trl": [run(2.5, 2.4)]},
                            16: {"srmcr": [run(2.0, 1.8)], "trl": [run(8.0, 7.2)]}})
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
    for name, v in all_variants().items():
        with pytest.raises(SystemExit):
            main([*fit_args(v, 7, a, tmp_path / "runs" / name / "s7"), "--print_config"])
        config = yaml.safe_load(capsys.readouterr().out)
        model = config["model"]["init_args"]
        reward = model["reward"]["init_args"]
        callbacks = [c["class_path"] for c in config["trainer"]["callbacks"]]
        recipe = ROOT / "configs" / "recipes" / f"{name}.yaml"
        expected = (yaml.safe_load(recipe.read_text())["model"]["reward"]["init_args"]["cues"]
                    if v.group == "recipe" else [c for c in CUES if name != f"no_{c}"])
        assert reward["cues"] == expected, name
        assert reward["reliability"] == (name not in ("no_reliability", "mm_upt",
                                                      "vision_sr1_labelfree")), name
        assert (COOLING in callbacks) == (name not in ("no_cooling", "mm_upt")), name
        assert model["sampling"]["temperature"] == 1.0
        assert model["grpo"]["beta"] == (0.1 if name == "kl_0.1" else 0.01), name
        assert model["optimizer"]["init_args"]["lr"] == (5e-4 if name == "lr_5e-4" else 1e-4), name
        assert model["sampling"]["val_group_size"] == 0  # curves need the greedy accuracy only
        assert (config["seed_everything"], config["data"]["init_args"]["seed"]) == (7, 7)
        assert (config["trainer"]["max_steps"], config["trainer"]["val_check_interval"]) == (40, 10)
        assert model["policy"]["model"] == "warm:small"
        assert config["trainer"]["logger"]["init_args"]["version"] == "s7"


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
    from benchmarks.toy_world import CUES, DETECTORS, makespan
    from benchmarks.toy_world_report import aggregate, table

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
    from benchmarks.toy_world import CUES, DETECTORS
    from benchmarks.toy_world_report import aggregate, mcnemar, table

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
    from tests.fixtures import MEAN_COLOURS, QUESTIONS, randomize_lora, tiny_policy, two_images

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

"""Training library pieces without a training run: tokenizer, optimiser groups, schedule, checkpoints, arguments."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from magnet_hf.commands.train import main as train_main
from magnet_hf.commands.train import parse_args
from magnet_hf.data.tokenizer import train_wordpiece_tokenizer
from magnet_hf.training.trainer_state import TrainerState
from magnet_hf.training import (
    PolyWithWarmup,
    TrainingError,
    build_optimizer_and_scheduler,
    latest_checkpoint,
    list_checkpoints,
    no_decay_parameter_names,
    parameter_groups,
    save_checkpoint,
    save_pretrained_atomic,
)

SENTENCES = ["the small red circle", "the second triangle from the left", "the biggest green shape", "the blue square"]


def test_wordpiece_tokenizer_has_bert_special_ids_and_round_trips(tmp_path):
    tokenizer = train_wordpiece_tokenizer(SENTENCES, vocab_size=200)
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id,
            tokenizer.mask_token_id) == (0, 1, 2, 3, 4)
    ids = tokenizer("The RED circle")["input_ids"]
    assert ids[0] == 2 and ids[-1] == 3 and 1 not in ids  # [CLS] ... [SEP], every word known (lower-cased)
    assert tokenizer.convert_ids_to_tokens(ids[1:-1]) == ["the", "red", "circle"]
    assert len(tokenizer) <= 200
    tokenizer.save_pretrained(str(tmp_path))
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert reloaded("the red circle")["input_ids"] == tokenizer("the red circle")["input_ids"]
    assert len(reloaded) == len(tokenizer)


def test_wordpiece_vocabulary_does_not_depend_on_sentence_order():
    # tokenizers' WordPieceTrainer breaks frequency ties differently in every process, which broke exact resume.
    forward = train_wordpiece_tokenizer(SENTENCES * 2 + ["zebra"]).get_vocab()
    assert train_wordpiece_tokenizer(["zebra"] + SENTENCES[::-1] * 2).get_vocab() == forward
    assert forward["##z"] > 4 and forward["zebra"] > 4  # characters and continuations make any such word encodable


def test_wordpiece_tokenizer_rejects_empty_corpus():
    with pytest.raises(ValueError, match="non-empty"):
        train_wordpiece_tokenizer(["", "   "])


@pytest.fixture(scope="module")
def small_model():
    from magnet_hf import MagNetConfig, MagNetForReferringSegmentation

    return MagNetForReferringSegmentation(MagNetConfig.from_preset("magnet-tiny", image_size=64))


def test_norms_and_position_bias_tables_are_not_decayed(small_model):
    exempt = no_decay_parameter_names(small_model)
    names = dict(small_model.named_parameters())
    bias_tables = [n for n in names if "relative_position_bias_table" in n]
    norm_params = [
        f"{module_name}.{p}" for module_name, module in small_model.named_modules()
        if isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)) for p, _ in module.named_parameters(recurse=False)
    ]
    assert bias_tables and norm_params
    assert set(bias_tables) <= exempt and set(norm_params) <= exempt
    assert "model.text_encoder.embeddings.LayerNorm.weight" in exempt  # BERT's norms too
    linear_weights = [n for n, m in small_model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert not any(f"{n}.weight" in exempt for n in linear_weights)
    optimizer, _ = build_optimizer_and_scheduler(small_model, learning_rate=1e-3, weight_decay=0.01, total_steps=10)
    decayed, free = optimizer.param_groups
    assert decayed["weight_decay"] == 0.01 and free["weight_decay"] == 0.0
    assert len(decayed["params"]) + len(free["params"]) == len(names)
    assert {id(p) for p in free["params"]} == {id(names[n]) for n in exempt}


def test_poly_schedule_with_warmup():
    schedule = PolyWithWarmup(total_steps=10, warmup_steps=2, power=0.9)
    assert [schedule(0), schedule(1)] == [0.5, 1.0]
    assert schedule(2) == 1.0
    assert schedule(6) == pytest.approx((1 - 4 / 8) ** 0.9)
    assert schedule(10) == 0.0
    no_warmup = PolyWithWarmup(total_steps=4)
    assert [round(no_warmup(s), 6) for s in range(4)] == [1.0, round(0.75**0.9, 6), round(0.5**0.9, 6), round(0.25**0.9, 6)]
    with pytest.raises(ValueError):
        PolyWithWarmup(total_steps=3, warmup_steps=3)


def test_scheduler_follows_poly_per_step():
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = build_optimizer_and_scheduler(model, learning_rate=0.1, weight_decay=0.0, total_steps=5)
    lrs = []
    for _ in range(5):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.1 * (1 - s / 5) ** 0.9 for s in range(5)])


def test_optimizer_is_fused_on_cpu_and_steps_as_the_default_adamw():
    from transformers.utils import is_torch_greater_or_equal

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))
    reference = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))
    reference.load_state_dict(model.state_dict())
    initial = [parameter.detach().clone() for parameter in model.parameters()]
    optimizer, _ = build_optimizer_and_scheduler(model, learning_rate=1e-2, weight_decay=0.1, total_steps=10)
    assert optimizer.defaults["fused"] is (True if is_torch_greater_or_equal("2.4") else None)
    default = torch.optim.AdamW(parameter_groups(reference, 0.1), lr=1e-2)
    inputs = torch.randn(4, 6)
    for _ in range(3):
        for net, opt in ((model, optimizer), (reference, default)):
            opt.zero_grad()
            net(inputs).square().sum().backward()
            opt.step()
    for fused, plain, start in zip(model.parameters(), reference.parameters(), initial):
        assert not torch.equal(fused, start)
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


class FakeAccelerator:
    """What `save_checkpoint` uses of an Accelerator."""

    is_main_process = True

    def wait_for_everyone(self):
        pass


def _state_writer(fail: bool = False):
    """A training-state writer; `fail` makes it die half-way through, as a kill during a save would."""

    def write(folder):
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        if fail:
            raise KeyboardInterrupt("killed during save")
        (Path(folder) / "optimizer.json").write_bytes(b"complete")

    return write


def _extras(folder: Path) -> None:
    (folder / "config.json").write_text("{}")


def test_checkpoints_are_atomic_rotated_and_latest_skips_incomplete(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(FakeAccelerator(), tmp_path, step, TrainerState(global_step=step), _extras, _state_writer(), total_limit=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002", "step-000003"]
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(FakeAccelerator(), tmp_path, 4, TrainerState(global_step=4), _extras, _state_writer(fail=True), total_limit=2)
    # The failed save removed its temporary folder (a kill -9 would leave it hidden, never resumed from).
    assert latest_checkpoint(tmp_path).name == "step-000003"
    assert not (tmp_path / "checkpoints" / ".tmp-step-000004").exists()
    (tmp_path / "checkpoints" / ".tmp-step-000004").mkdir()
    # A folder with the right name but no trainer_state.json (e.g. copied by hand, half) is ignored too.
    (tmp_path / "checkpoints" / "step-000009").mkdir()
    assert latest_checkpoint(tmp_path).name == "step-000003"
    save_checkpoint(FakeAccelerator(), tmp_path, 5, TrainerState(global_step=5), _extras, _state_writer(), total_limit=2)
    assert not (tmp_path / "checkpoints" / ".tmp-step-000004").exists()  # cleaned by the next save
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step-000005" and TrainerState.load(latest) == TrainerState(global_step=5)
    assert json.loads((latest / "trainer_state.json").read_text())["global_step"] == 5
    assert (latest / "optimizer.json").read_bytes() == b"complete"


def test_trainer_state_reads_older_files_and_keeps_the_keys_its_readers_use(tmp_path):
    # The state of a checkpoint written before TrainerState existed: fewer keys, and one this version does not know.
    old = {"global_step": 8, "best_metric": 0.4, "best_step": 4, "eval_history": [{"step": 4, "overall_iou": 0.4}],
           "log_history": [{"step": 8, "loss": 1.5, "seconds_per_step": 0.25}], "total_steps": 10, "global_batch": 16,
           "some_future_key": True}  # fmt: skip
    (tmp_path / "trainer_state.json").write_text(json.dumps(old))
    state = TrainerState.load(tmp_path)
    assert (state.global_step, state.best_step, state.total_steps, state.global_batch) == (8, 4, 10, 16)
    assert state.num_processes == 1 and state.interrupted is False  # the defaults of keys it lacked
    state.global_step = 9
    assert not state.record_evaluation({"overall_iou": 0.3}, "overall_iou") and state.best_step == 4
    state.global_step = 10
    assert state.record_evaluation({"overall_iou": 0.5}, "overall_iou") and (state.best_metric, state.best_step) == (0.5, 10)
    assert state.evaluation_at(10) == {"step": 10, "overall_iou": 0.5} and state.evaluation_at(None) is None
    written = state.to_dict()
    assert [entry["seconds_per_step"] for entry in written["log_history"]] == [0.25]  # what the ablation reads
    assert [entry["step"] for entry in written["eval_history"]] == [4, 9, 10]
    assert TrainerState.from_dict(json.loads(json.dumps(written))) == state
    for bad in ('{"global_step": -1}', '{"global_step": "3"}', "[]", '{"global_step": 4, "total'):
        (tmp_path / "trainer_state.json").write_text(bad)
        with pytest.raises(TrainingError, match="trainer_state.json"):
            TrainerState.load(tmp_path)


def test_save_pretrained_atomic_keeps_the_previous_folder_on_failure(tmp_path):
    class Saver:
        def __init__(self, content, fail=False):
            self.content, self.fail = content, fail

        def save_pretrained(self, folder, **kwargs):
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / "weights").write_text(self.content)
            if self.fail:
                raise OSError("disk full")

    target = tmp_path / "best"
    save_pretrained_atomic(Saver("v1"), Saver("p1"), target, {"eval_results.json": {"oIoU": 1}})
    with pytest.raises(OSError):
        save_pretrained_atomic(Saver("v2"), Saver("p2", fail=True), target)
    assert (target / "weights").read_text() == "p1"
    assert json.loads((target / "eval_results.json").read_text()) == {"oIoU": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no temporary left behind


def test_argument_validation_names_the_flag(tmp_path):
    base = ["--dataset", "synthetic", "--output-dir", str(tmp_path / "run")]
    with pytest.raises(TrainingError, match="--preset"):
        parse_args(base)
    with pytest.raises(TrainingError, match="--preset"):
        parse_args(base + ["--preset", "magnet-tiny", "--model", "x"])
    with pytest.raises(TrainingError, match="unknown --preset"):
        parse_args(base + ["--preset", "magnet-huge"])
    with pytest.raises(TrainingError, match="--eval-steps"):
        parse_args(base + ["--preset", "magnet-tiny", "--eval-strategy", "steps"])
    with pytest.raises(TrainingError, match="--resume"):
        parse_args(base + ["--preset", "magnet-tiny", "--resume", str(tmp_path / "nowhere")])
    args = parse_args(base + ["--preset", "magnet-tiny", "--config-override", "drop_path_rate=0", "--seed", "3"])
    assert args.config_overrides == {"drop_path_rate": 0} and args.seed == 3 and args.max_steps is None
    assert args.resolved_learning_rate() == 2e-3
    assert parse_args(base + ["--preset", "magnet-base"]).resolved_learning_rate() == 5e-5


def test_cli_refuses_an_existing_output_dir(tmp_path, capsys):
    output = tmp_path / "run"
    output.mkdir()
    (output / "keep.txt").write_text("precious")
    code = train_main(["--dataset", "synthetic", "--preset", "magnet-tiny", "--output-dir", str(output)])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.count("\n") == 0
    assert "already exists" in error and "--resume latest" in error and "--overwrite" in error
    assert (output / "keep.txt").read_text() == "precious"
    assert train_main(["--dataset", "synthetic", "--preset", "magnet-tiny", "--output-dir", str(output), "--max-steps", "0"]) == 2


def test_cli_rejects_a_missing_dataset_folder(tmp_path, capsys):
    code = train_main(["--dataset", str(tmp_path / "missing"), "--preset", "magnet-tiny", "--output-dir", str(tmp_path / "o")])
    assert code == 2 and "not a save_to_disk folder" in capsys.readouterr().err


def test_ablation_runs_every_variant_and_seed_and_reports_held_out_numbers(tmp_path, monkeypatch, capsys):
    from magnet_hf.commands import ablate
    from magnet_hf.training import ablation

    variants = ablation.ablation_variants()
    assert set(variants) == {"full", "no-mask-grounding", "no-alignment", "segmentation-only",
                             "mask-grounding-shared", "corrected-language-masking"}  # fmt: skip
    calls = []
    kinds = ["attribute", "relation", "ordinal", "superlative"] * 5

    def fake_train(args):
        calls.append((Path(args.output_dir).name, args.seed, dict(args.config_overrides), args.resume))
        Path(args.output_dir).mkdir(parents=True)
        (Path(args.output_dir) / "eval_results.json").write_text("{}")
        history = [{"step": s, "overall_iou": 0.1 * s + 0.01 * args.seed} for s in (1, 2)]
        log = [{"step": 2, "seconds_per_step": 0.5 if args.config_overrides.get("use_mask_grounding", True) else 0.4}]
        (Path(args.output_dir) / "trainer_state.json").write_text(json.dumps({"eval_history": history, "log_history": log}))

    def fake_score(model_dir, heldout):
        name = model_dir.name.rsplit("-seed", 1)[0]
        hits = 6 if name == "full" else 4  # the full model finds 60 % of each target, the others 40 %
        return {"intersections": [hits] * 20, "unions": [10] * 20, "kinds": kinds}

    monkeypatch.setattr(ablation, "train", fake_train)
    monkeypatch.setattr(ablation, "heldout_split", lambda run_dir, seed, num_images: (seed, num_images))
    monkeypatch.setattr(ablation, "score_heldout", fake_score)
    argv = ["--dataset", "synthetic", "--preset", "magnet-tiny", "--output-dir", str(tmp_path), "--seeds", "0", "1",
            "--bootstrap", "200"]  # fmt: skip
    assert ablate.main(argv) == 0
    report = capsys.readouterr().out
    assert sorted(calls) == sorted((f"{name}-seed{seed}", seed, overrides, None) for name, overrides in variants.items() for seed in (0, 1))
    assert "| full | 60.0, 60.0 | 60.0 ± 0.0 | – | 0.500 |" in report
    assert "| no-mask-grounding | 40.0, 40.0 | 40.0 ± 0.0 | -20.0 [-20.0, -20.0] | 0.400 |" in report
    assert "| full | 60.0 | 60.0 | 60.0 | 60.0 |" in report  # per kind
    assert "| val oIoU | 10.5 | 20.5 |" in report  # the full model's curve, mean over seeds
    assert (tmp_path / "ablation.md").read_text().strip() == report.split("\nreport written to")[0].strip()
    calls.clear()
    assert ablate.main(argv) == 0 and calls == []  # finished runs are read back, not retrained
    assert ablate.main([*argv, "--no-mask-grounding"]) == 2
    assert ablate.main([*argv, "--heldout-seed", "0"]) == 2  # the training scenes' seed


def test_ablation_records_rebuild_the_report_without_the_run_folders_and_refuse_other_settings(tmp_path, monkeypatch, capsys):
    import shutil

    from magnet_hf.commands import ablate
    from magnet_hf.training import ablation

    trained = []

    def fake_train(args):
        trained.append(Path(args.output_dir).name)
        Path(args.output_dir).mkdir(parents=True)
        (Path(args.output_dir) / "eval_results.json").write_text("{}")
        state = {"eval_history": [{"step": 1, "overall_iou": 0.25}], "log_history": [{"step": 1, "seconds_per_step": 0.5}]}
        (Path(args.output_dir) / "trainer_state.json").write_text(json.dumps(state))

    def fake_score(model_dir, heldout):
        hits = 3 + int(model_dir.name.endswith("seed1"))  # 30 % for seed 0, 40 % for seed 1
        return {"intersections": [hits] * 4, "unions": [10] * 4, "kinds": ["attribute", "relation"] * 2}

    monkeypatch.setattr(ablation, "train", fake_train)
    monkeypatch.setattr(ablation, "heldout_split", lambda run_dir, seed, num_images: None)
    monkeypatch.setattr(ablation, "score_heldout", fake_score)
    records = tmp_path / "kept"
    argv = ["--dataset", "synthetic", "--preset", "magnet-tiny", "--output-dir", str(tmp_path / "runs"), "--seeds", "0",
            "1", "--variants", "no-alignment", "--bootstrap", "50", "--records", str(records)]  # fmt: skip
    assert ablate.main(argv) == 0
    first = capsys.readouterr().out.split("\nreport written to")[0]
    assert sorted(path.name for path in records.iterdir()) == [f"{v}-seed{k}.json" for v in ("full", "no-alignment") for k in (0, 1)]
    assert json.loads((records / "full-seed1.json").read_text())["settings"]["seed"] == 1
    assert "| full | 30.0, 40.0 | 35.0 ± 7.1 |" in first
    shutil.rmtree(tmp_path / "runs")  # the machine that trained them is gone; the records are all that is left
    trained.clear()
    assert ablate.main(argv) == 0 and trained == []
    assert capsys.readouterr().out.split("\nreport written to")[0] == first
    assert ablate.main([*argv, "--learning-rate", "5e-4"]) == 2 and trained == []
    error = capsys.readouterr().err
    assert "full-seed0.json was made with other settings (learning_rate;" in error and len(error.strip().splitlines()) == 1
    (records / "full-seed0.json").write_text("{not json")
    assert ablate.main(argv) == 2 and "is not an ablation record" in capsys.readouterr().err


def test_ablation_bootstrap_intervals_are_paired_over_expressions():
    from magnet_hf.training.ablation import summarise

    rng = np.random.default_rng(0)
    unions = rng.integers(50, 100, size=400)
    full = (unions * rng.uniform(0.3, 0.9, size=400)).astype(int)
    better = np.minimum(full + 5, unions)  # better on every expression, by little
    noisy = (unions * rng.uniform(0.3, 0.9, size=400)).astype(int)  # as good on average, unrelated per expression
    kinds = ["attribute", "relation"] * 200

    def runs(intersections):
        record = {"unions": unions.tolist(), "kinds": kinds, "seconds_per_step": [1.0]}
        return [{**record, "intersections": intersections.tolist()}]

    summary = summarise({"full": runs(full), "better": runs(better), "same": runs(full), "noisy": runs(noisy)}, 500)
    low, high = summary["better"]["difference_ci95"]
    assert 0 < low <= summary["better"]["difference"] <= high  # pairing makes a small consistent gain significant
    assert summary["same"]["difference_ci95"] == [0.0, 0.0]
    low, high = summary["noisy"]["difference_ci95"]
    assert low < summary["noisy"]["difference"] < high and high - low > 0.01
    expected = full[::2].sum() / unions[::2].sum()
    assert summary["full"]["per_kind"]["attribute"] == pytest.approx(expected)

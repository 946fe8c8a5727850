"""Rule sets: one per LamRA release, chosen from the checkpoint, recorded, shown and checked by name
(docs/format.md#rule-sets). Model-free: settings, fingerprints, configs and the CLI's text."""

from __future__ import annotations

import json

import pytest

from lamra.errors import IncompatibleArtifactError
from lamra.index.checks import check_fingerprint
from lamra.settings import SETTINGS_FILE, ModelSettings


def test_the_two_releases_rules():
    qwen2, qwen25 = ModelSettings(rules="lamra-qwen2vl"), ModelSettings(rules="lamra-qwen25vl")
    assert (qwen2.positions, qwen2.rgba, qwen2.max_tokens, qwen2.rerank_instructions) == \
        ("1d", "convert", 1024, "spaced")
    assert (qwen25.positions, qwen25.rgba, qwen25.max_tokens, qwen25.rerank_instructions) == \
        ("mrope", "white", 0, "single")
    assert ModelSettings().for_model_type("qwen2_5_vl").rules == "lamra-qwen25vl"
    assert ModelSettings().for_model_type("qwen2_vl").rules == "lamra-qwen2vl"
    assert ModelSettings().for_model_type(None).rules == "lamra-qwen2vl"
    with pytest.raises(ValueError, match="rules must be one of"):
        ModelSettings(rules="lamra-qwen3vl")


def test_a_folder_picks_its_rule_set(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    assert ModelSettings.for_model(tmp_path).rules == "lamra-qwen25vl"
    # A lamra-trained model records its rule set, and that wins over the model type.
    ModelSettings(rules="lamra-qwen2vl", max_pixels=100_352).save(tmp_path)
    loaded = ModelSettings.for_model(tmp_path)
    assert (loaded.rules, loaded.positions, loaded.max_pixels) == ("lamra-qwen2vl", "1d", 100_352)
    # A settings file of lamra's trainer from before rule sets: lamra then had only the Qwen2-VL
    # release's rules. One without positions (written by hand): the model type decides.
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"positions": "1d", "max_tokens": 1024}))
    assert ModelSettings.for_model(tmp_path).rules == "lamra-qwen2vl"
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"max_pixels": 3136, "min_pixels": 3136}))
    assert ModelSettings.for_model(tmp_path).rules == "lamra-qwen25vl"
    # An adapter's recorded settings come first.
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    ModelSettings(rules="lamra-qwen25vl").save(adapter)
    assert ModelSettings.for_model(tmp_path, adapter).rules == "lamra-qwen25vl"


def test_fields_override_one_by_one_and_a_new_rule_set_keeps_them():
    qwen25 = ModelSettings(rules="lamra-qwen25vl")
    custom = qwen25.with_overrides(positions="1d")
    assert (custom.positions, custom.rgba) == ("1d", "white")
    moved = custom.with_overrides(rules="lamra-qwen2vl")
    assert (moved.positions, moved.rgba, moved.max_tokens) == ("1d", "convert", 1024)
    assert qwen25.with_overrides(rules="lamra-qwen2vl") == ModelSettings(rules="lamra-qwen2vl")


def test_an_index_of_one_rule_set_is_refused_under_the_other_by_name():
    def fingerprint(settings):
        return {"model": "m", "adapter": None, "prompt_format": "lamra-ret-2", "dim": 8,
                "settings": settings.fingerprint()}

    qwen2, qwen25 = ModelSettings(rules="lamra-qwen2vl"), ModelSettings(rules="lamra-qwen25vl")
    check_fingerprint(fingerprint(qwen25), fingerprint(qwen25), where="x")
    with pytest.raises(IncompatibleArtifactError, match="rule set: index was built under 'lamra-qwen2vl', "
                                                        "you use 'lamra-qwen25vl'"):
        check_fingerprint(fingerprint(qwen2), fingerprint(qwen25), where="x")
    # An index from before rule sets holds the Qwen2-VL release's vectors: accepted under its rules only.
    old = fingerprint(qwen2)
    old["settings"] = {k: v for k, v in old["settings"].items() if k not in ("rules", "rgba")}
    check_fingerprint(old, fingerprint(qwen2), where="x")
    with pytest.raises(IncompatibleArtifactError, match="rule set"):
        check_fingerprint(old, fingerprint(qwen25), where="x")


@pytest.mark.parametrize("name", ["stage1", "stage2", "rerank"])
def test_the_qwen25_presets_train_under_their_rule_set(name):
    from lamra.training.args import RerankerTrainingArgs, RetrieverTrainingArgs, load_args

    args_class = RerankerTrainingArgs if name == "rerank" else RetrieverTrainingArgs
    args = load_args(f"configs/qwen25vl/{name}.yaml", args_class=args_class, model="m", data="d",
                     **({"mined": "x.jsonl"} if name == "rerank" else {}))
    settings = ModelSettings().with_overrides(**args.settings)
    assert settings.rules == "lamra-qwen25vl"
    expected = {"stage1": (576, 2e-4, 64), "stage2": (960, 1e-4, 128), "rerank": (128, 2e-5, 128)}[name]
    assert (args.global_batch_size, args.learning_rate, args.lora_r) == expected


def test_lamra_prompt_shows_the_rule_set(tmp_path):
    from typer.testing import CliRunner

    from lamra.cli import app

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    result = CliRunner().invoke(app, ["prompt", "--text", "a dog", "--model", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "rule set: lamra-qwen25vl (positions mrope, RGBA white, no whole-sequence cut" in result.stderr
    assert result.stdout.startswith("<|im_start|>system\n")
    result = CliRunner().invoke(app, ["prompt", "--text", "a dog"])
    assert "rule set: lamra-qwen2vl (positions 1d, RGBA convert, cut at 1024 tokens" in result.stderr


def test_lamra_index_info_names_the_rule_set():
    from lamra.cli.index import _rule_set

    assert _rule_set({"settings": ModelSettings(rules="lamra-qwen25vl").fingerprint()}) == "lamra-qwen25vl"
    assert _rule_set({"settings": {"positions": "1d"}}).startswith("lamra-qwen2vl")


def test_video_sampling_follows_each_releases_qwen_vl_utils():
    from lamra.qwen2vl.video import frame_pixel_range, sample_count

    qwen2, qwen25 = ModelSettings(rules="lamra-qwen2vl"), ModelSettings(rules="lamra-qwen25vl")
    # 140 frames at 25 fps, sampled at 2 fps: 11.2 frames -> 12 (round, master) or 10 (floor, the branch).
    assert sample_count(140, 25.0, qwen2) == 12 and sample_count(140, 25.0, qwen25) == 10
    assert sample_count(140, 25.0, ModelSettings()) == 12  # no rule set yet: the default's
    # 100 frames: the per-frame cap is the total budget's share, 24576*28*28 vs 128000*28*28*0.9 in all.
    assert frame_pixel_range(100, qwen2)[1] == pytest.approx(24576 * 28 * 28 / 100 * 2)
    assert frame_pixel_range(100, qwen25)[1] == 768 * 28 * 28


def test_zero_shot_rerank_prompts_follow_the_rule_set():
    from lamra.evaluation.zeroshot_sets.prompts import rerank_text

    single = ("I will provide you with a query and a candidate. Please evaluate whether the candidate meets the "
              "requirements of the query.")
    assert single in rerank_text(["a dog"], ["a cat"], instructions="single")
    assert single not in rerank_text(["a dog"], ["a cat"])  # the Qwen2-VL release's runs of spaces


def test_the_server_info_names_the_rule_set(tmp_path, small_tokenizer):
    from fastapi.testclient import TestClient

    from lamra import Retriever
    from lamra.demo.tiny import save_tiny_checkpoint
    from lamra.index import Index
    from lamra.serving.app import create_app

    folder = save_tiny_checkpoint(tmp_path / "q25", tokenizer=small_tokenizer, family="qwen2_5_vl")
    retriever = Retriever.from_pretrained(folder, device="cpu")
    index = Index.from_vectors(retriever.encode(["a red car", "a dog"], show_progress=False), ["a", "b"],
                               retriever.fingerprint())
    with TestClient(create_app(retriever, index)) as client:
        info = client.get("/info").json()
    assert info["rules"] == "lamra-qwen25vl" and info["model"]["settings"]["rules"] == "lamra-qwen25vl"

"""The recipes' systems files (conf/systems.yaml) are the one list of systems: w2p.bin.systems reads them for
w2p.sh, and w2p.bin.decode / w2p.bin.score take their systems, exp dirs and labels from them."""
import json
import os
import types

import pytest
import yaml

from w2p.bin import systems as S
from w2p.tasks import TASKS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = {r: os.path.join(ROOT, "egs", r, "w2p1") for r in ("mini_en", "librispeech")}
MINI_SYSTEMS = os.path.join(RECIPES["mini_en"], "conf", "systems.yaml")


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_systems_files(recipe):
    systems = S.load_systems(os.path.join(RECIPES[recipe], "conf", "systems.yaml"))
    assert {s["kind"] for s in systems.values()} >= set(S.KINDS)  # every kind the decoder knows
    labels = [s["label"] for s in systems.values() if s["kind"]]
    assert len(labels) == len(set(labels))  # RESULTS.md rows are distinguishable
    assert [n for n, s in systems.items() if s["stage"] == 4] == ["wav2prompt"]  # stage 10 packs exp/wav2prompt
    run_sh = open(os.path.join(RECIPES[recipe], "run.sh")).read()
    assert "--systems_config conf/systems.yaml" in run_sh
    for s in systems.values():
        if s["config"] and s["config"].startswith("--"):  # a run.sh option: the recipe passes it
            assert f"{s['config']} conf/" in run_sh, s["config"]
    for key in ("decode.yaml", "decode_gpu.yaml"):  # one list: decode configs hold none
        p = os.path.join(RECIPES[recipe], "conf", key)
        if os.path.isfile(p):
            conf = yaml.safe_load(open(p))
            # the default task map (w2p.sh passes --tasks.<task> <task>_test): tasks of w2p.tasks, ASR included
            assert "systems" not in conf and "asr" in conf["tasks"] and set(conf["tasks"]) <= set(TASKS)


def test_stage_lines_are_what_w2p_sh_trains(monkeypatch, capsys):
    monkeypatch.chdir(RECIPES["mini_en"])  # config paths are relative to the recipe dir
    assert S.main(["conf/systems.yaml", "--stage", "5"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "asr_ctc conf/train_asr_ctc.yaml wav2prompt -",
        "encoder_llm conf/train_encoder_llm.yaml asr_ctc -",
        "wav2prompt_nomse conf/train_wav2prompt_nomse.yaml asr_ctc -"]
    assert S.main(["conf/systems.yaml", "--stage", "7"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "wav2prompt_fewshot --fewshot_config wav2prompt -",
        "wav2prompt_fewshot_nomse --fewshot_config wav2prompt st --model_conf.mse_weight 0",
        "cascade_fewshot --fewshot_config asr_ctc - --only_with_lora"]
    assert S.main(["conf/systems.yaml", "--stage", "7", "--names"]) == 0
    assert capsys.readouterr().out.split() == ["wav2prompt_fewshot", "wav2prompt_fewshot_nomse", "cascade_fewshot"]
    monkeypatch.chdir(RECIPES["librispeech"])  # paper-scale configs, and the smoke list naming the smoke ones
    assert S.main(["conf/systems.yaml", "--stage", "5"]) == 0
    assert [x.split()[1] for x in capsys.readouterr().out.splitlines()] == [
        "conf/train_asr_ctc.yaml", "conf/train_encoder_llm.yaml", "conf/train_wav2prompt_nomse.yaml"]
    assert S.main(["conf/tuning/systems_smoke.yaml", "--stage", "5"]) == 0
    assert [x.split()[1] for x in capsys.readouterr().out.splitlines()] == [
        "conf/tuning/train_asr_ctc_smoke.yaml", "conf/tuning/train_encoder_llm_smoke.yaml",
        "conf/tuning/train_wav2prompt_nomse_smoke.yaml"]
    monkeypatch.chdir(RECIPES["mini_en"])
    assert S.main(["conf/nope.yaml", "--stage", "5"]) == 1 and "nope.yaml" in capsys.readouterr().err


def test_decode_specs_derive_every_dir_from_the_name():
    specs = S.decode_specs(S.load_systems(MINI_SYSTEMS), "x/exp")
    assert "asr_ctc" not in specs  # trained only (the cascade decodes it)
    assert specs["cascade"] == {"kind": "cascade", "exp": "x/exp/asr_ctc", "out": "x/exp/cascade",
                                "label": "ASR→LLM cascade (CTC)"}
    assert specs["gold"] == {"kind": "gold", "out": "x/exp/gold", "label": "gold-text topline"}
    assert specs["wav2prompt_nomse"]["exp"] == specs["wav2prompt_nomse"]["out"] == "x/exp/wav2prompt_nomse"
    assert specs["wav2prompt_fewshot"]["exp"] == "x/exp/wav2prompt_fewshot/{task}"
    assert all(s["out"] == f"x/exp/{n}" for n, s in specs.items())


@pytest.mark.parametrize("text,pattern", [
    ("a: {stage: 5, config: c.yaml, kind: wav2prompt}", r"system 'a': a decoded system needs a `label`"),
    ("a: {stage: 6, config: c.yaml}", r"stage 6 does not train systems"),
    ("a: {stage: 5}", r"a trained system needs `config`"),
    ("a: {stage: 5, config: c.yaml, init: b}\nb: {stage: 4, config: c.yaml}",
     r"init 'b' is not a trained system listed above"),
    ("a: {kind: cascade, label: A}", r"kind cascade needs a trained model"),
    ("a: {kind: cascade, label: A, model: nope}", r"model 'nope' is not a trained system"),
    ("a: {kind: gold, label: G, stage: 5, config: c.yaml}", r"kind gold decodes the reference text"),
    ("a: {stage: 7, config: --fewshot_config}", r"few-shot system is fine-tuned from a trained one"),
    ("a: {stage: 5, config: c.yaml, tasks: [st]}", r"`tasks` is for stage-7 systems"),
    ("a: {kind: gold, label: G, colour: red}", r"unknown key\(s\) \['colour'\]"),
    ("a-b: {kind: gold, label: G}", r"a name is a letter then letters"),
    ("- a\n- b", r"expected a mapping of system names"),
    ("a: [", r"not valid YAML"),
])
def test_bad_systems_files_name_file_system_and_fix(tmp_path, text, pattern):
    p = tmp_path / "systems.yaml"
    p.write_text(text)
    with pytest.raises(S.SystemsError, match=pattern) as e:
        S.load_systems(str(p))
    assert str(p) in str(e.value)
    with pytest.raises(S.SystemsError, match="systems file .*nope.yaml not found"):
        S.load_systems(str(tmp_path / "nope.yaml"))


# ---------------------------------------------------------------------------- decode + score on a fake layout
@pytest.fixture
def fake_decoder(monkeypatch, tmp_path):
    """w2p.bin.decode with its model-dependent parts replaced: records which model dir each system loads."""
    import w2p.decode
    import w2p.llm
    import w2p.models

    loaded = []
    utts = ["u1", "u2"]
    ts = types.SimpleNamespace(utt_ids=utts, text={u: "the cat sat" for u in utts})

    def load_set(path, max_utts=None, allow_pipes=False):
        return types.SimpleNamespace(name=os.path.basename(path), **vars(ts))

    def decode_task(llm, system, task, tset, **kw):
        return {u: "the cat sat" for u in utts}, {"decode_sec": 1.0, "audio_sec": 4.0, "n_utts": 2}

    monkeypatch.setattr(w2p.llm.FrozenLLM, "load", classmethod(lambda cls, *a, **k: object()))
    monkeypatch.setattr(w2p.models, "load_trained", lambda exp, llm, **k: (loaded.append(exp) or object(), {}))
    monkeypatch.setattr(w2p.decode, "load_set", load_set)
    monkeypatch.setattr(w2p.decode, "decode_task", decode_task)
    monkeypatch.setattr(w2p.decode, "references", lambda task, tset: {u: "the cat sat" for u in utts})
    monkeypatch.chdir(tmp_path)
    with open("decode.yaml", "w") as f:
        yaml.safe_dump({"beam": 1, "tasks": {"asr": "test", "st": "st_test"}}, f)
    return loaded


def test_decode_and_score_follow_the_systems_file(fake_decoder):
    from w2p.bin import decode as dec
    from w2p.bin import score as sc

    base = ["--config", "decode.yaml", "--systems_config", MINI_SYSTEMS, "--expdir", "exp"]
    assert dec.main(base) == 0  # stage 6: every system but the few-shot ones
    assert fake_decoder == ["exp/wav2prompt", "exp/asr_ctc", "exp/encoder_llm", "exp/wav2prompt_nomse"]
    zero_shot = ["wav2prompt", "cascade", "encoder_llm", "wav2prompt_nomse", "gold"]
    assert sorted(os.listdir("exp")) == sorted(zero_shot)
    for name in zero_shot:
        assert sorted(os.listdir(f"exp/{name}")) == ["decode_asr_test", "decode_st_st_test"]
    # stage 8: a few-shot system, one model per task, one task per process
    assert dec.main(base + ["--systems", "wav2prompt_fewshot", "--tasks", "st"]) == 0
    assert fake_decoder[-1] == "exp/wav2prompt_fewshot/st"
    assert os.listdir("exp/wav2prompt_fewshot") == ["decode_st_st_test"]
    with pytest.raises(SystemExit, match="one model per task: decode one task per process"):
        dec.main(base + ["--systems", "wav2prompt_fewshot"])
    with pytest.raises(SystemExit, match=r"unknown system 'w2p_nomse'; .*systems.yaml defines: wav2prompt, cascade,"):
        dec.main(base + ["--systems", "w2p_nomse"])
    # stage 9: the rows are the decoded systems in file order, with their labels; undecoded ones are left out
    assert sc.main(base + ["--no_plots", "--skip_missing", "--out", "RESULTS.md"]) == 0
    rows = [r.split(" | ")[0].lstrip("| ") for r in open("RESULTS.md").read().split("\n| system |")[1].splitlines()[2:]
            if r.startswith("|")]
    assert rows == ["Wav2Prompt (zero-shot)", "ASR→LLM cascade (CTC)", "Encoder-LLM (prior work)",
                    "Wav2Prompt w/o MSE (ablation)", "gold-text topline",
                    "Wav2Prompt few-shot (E2E through the frozen LLM)"]
    assert json.load(open("exp/gold/decode_st_st_test/scores.json"))["n_utts"] == 2
    assert f"systems: {MINI_SYSTEMS}" in open("RESULTS.md").read()


def test_further_asr_test_set_is_decoded_and_scored_beside_the_first(fake_decoder):
    """Stage 6's call for test_heldout (--tasks asr --tasks.asr test_heldout) and stage 9's table of both sets
    (--asr_sets)."""
    from w2p.bin import decode as dec
    from w2p.bin import score as sc
    from w2p.io import write_kv_atomic

    base = ["--config", "decode.yaml", "--systems_config", MINI_SYSTEMS, "--expdir", "exp"]
    assert dec.main(base) == 0 and dec.main(base + ["--tasks", "asr", "--tasks.asr", "test_heldout"]) == 0
    assert sorted(os.listdir("exp/wav2prompt")) == ["decode_asr_test", "decode_asr_test_heldout", "decode_st_st_test"]
    write_kv_atomic("exp/wav2prompt/decode_asr_test_heldout/hyp", {"u1": "the cat", "u2": "the cat sat"})
    assert sc.main(base + ["--no_plots", "--skip_missing", "--out", "R.md", "--asr_sets", "test test_heldout"]) == 0
    md = open("R.md").read()
    assert "| system | asr wer ↓ test | asr wer ↓ test_heldout |\n" in md  # no task decoded on test_heldout
    assert "| Wav2Prompt (zero-shot) | 0.00 | 16.67 |" in md and "| ASR→LLM cascade (CTC) | 0.00 | 0.00 |" in md
    assert sc.main(base + ["--no_plots", "--skip_missing", "--out", "R2.md"]) == 0
    assert "test_heldout" not in open("R2.md").read()  # without further sets: the table as before
    # a set stage 6 did not decode: its column shows no number (w2p.sh scores with --skip_missing)
    assert sc.main(base + ["--no_plots", "--skip_missing", "--out", "R3.md", "--asr_sets", "test test_nope"]) == 0
    assert "| Wav2Prompt (zero-shot) | 0.00 | – |" in open("R3.md").read()


def test_spoken_questions_on_a_further_test_set_are_scored_beside_the_first(fake_decoder):
    """Stage 6's call for test_heldout with the task sets it has (--tasks asr,sqqa --tasks.sqqa sqqa_test_heldout ->
    decode_sqqa_sqqa_test_heldout) and stage 9's table: each task's metrics on test and on test_heldout side by side."""
    from w2p.bin import decode as dec
    from w2p.bin import score as sc
    from w2p.io import write_kv_atomic

    base = ["--config", "decode.yaml", "--systems_config", MINI_SYSTEMS, "--expdir", "exp", "--tasks.sqqa", "sqqa_test"]
    assert dec.main(base + ["--tasks", "asr,sqqa"]) == 0
    assert dec.main(base + ["--systems", "wav2prompt,cascade", "--tasks", "asr,sqqa", "--tasks.asr", "test_heldout",
                            "--tasks.sqqa", "sqqa_test_heldout"]) == 0
    assert sorted(os.listdir("exp/wav2prompt")) == ["decode_asr_test", "decode_asr_test_heldout",
                                                    "decode_sqqa_sqqa_test", "decode_sqqa_sqqa_test_heldout"]
    assert sorted(os.listdir("exp/gold")) == ["decode_asr_test", "decode_sqqa_sqqa_test"]
    # Wav2Prompt on the held-out questions: one answer contains the gold one, none is exact
    write_kv_atomic("exp/wav2prompt/decode_sqqa_sqqa_test_heldout/hyp", {"u1": "it is the cat sat", "u2": "a dog"})
    assert sc.main(base + ["--no_plots", "--skip_missing", "--out", "R.md", "--asr_sets", "test test_heldout",
                           "--tasks", "asr,sqqa"]) == 0
    md = open("R.md").read()
    assert ("| system | asr wer ↓ test | asr wer ↓ test_heldout | sqqa exact ↑ test | sqqa exact ↑ test_heldout | "
            "sqqa contains ↑ test | sqqa contains ↑ test_heldout |") in md
    assert "| Wav2Prompt (zero-shot) | 0.00 | 0.00 | 100.00 | 0.00 | 100.00 | 50.00 |" in md
    assert "| ASR→LLM cascade (CTC) | 0.00 | 0.00 | 100.00 | 100.00 | 100.00 | 100.00 |" in md
    assert "| gold-text topline | 0.00 | – | 100.00 | – | 100.00 | – |" in md  # not decoded on test_heldout
    # the main table is the first set's, as before
    assert "| Wav2Prompt (zero-shot) | 0.00 | 100.00 | 100.00 |" in md


def test_one_list_only(fake_decoder):
    from w2p.bin import decode as dec
    from w2p.bin import score as sc

    with open("decode.yaml", "a") as f:
        f.write("systems: {gold: {kind: gold}}\n")
    for main in (dec.main, sc.main):
        with pytest.raises(SystemExit, match="systems are listed both in the decode config .*keep one list"):
            main(["--config", "decode.yaml", "--systems_config", MINI_SYSTEMS])
    with pytest.raises(SystemExit, match="systems file missing.yaml not found"):
        dec.main(["--systems_config", "missing.yaml", "--tasks", "asr", "--tasks.asr", "test"])

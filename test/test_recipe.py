"""Recipe shell layer: run.pl / slurm.pl, option parsing, stages 0-2 end to end through run.sh (each recipe's
local/data.sh), the mini_en corpus generator (w2p.synth), stages 6/9 following --tasks / --test_sets, and
egs/librispeech/w2p1 stages 0-10 on fixture corpora in the real layouts."""
import os
import re
import subprocess

import kaldiio
import numpy as np
from conftest import fake_slurm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UTILS = os.path.join(ROOT, "egs", "TEMPLATE", "w2p1", "utils")
MINI = os.path.join(ROOT, "egs", "mini_en", "w2p1")
LIBRI = os.path.join(ROOT, "egs", "librispeech", "w2p1")


def sh(cmd, cwd=None, env=None, check=False, timeout=300):
    e = dict(os.environ, **(env or {}))
    p = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def test_run_pl_substitutes_job_logs_and_reports_failures(tmp_path):
    log = tmp_path / "log"
    p = sh(f"{UTILS}/run.pl JOB=1:3 {log}/x.JOB.log echo 'job JOB of two words'", check=True)
    for j in (1, 2, 3):
        text = (log / f"x.{j}.log").read_text()
        assert f"job {j} of two words" in text and "# Ended (code 0)" in text
    p = sh(f"{UTILS}/run.pl --max-jobs-run 1 JOB=1:3 {log}/y.JOB.log bash -c '[ JOB != 2 ]'")
    assert p.returncode == 1 and "1 / 3 jobs failed (jobs 2)" in p.stderr and "y.2.log" in p.stderr
    assert "# Ended (code 1)" in (log / "y.2.log").read_text()
    p = sh(f"{UTILS}/run.pl {log}/z.log echo single", check=True)
    assert "single" in (log / "z.log").read_text()


def test_slurm_pl_submits_one_array_and_substitutes_the_task_id(tmp_path):
    env = fake_slurm(tmp_path)
    # cmd.sh's --gpu 1, then w2p.sh's --gpu ${ngpu}: the last one is what the job asks for
    sh(f"cd {tmp_path} && {UTILS}/slurm.pl --mem 2G --gpu 1 --gpu 4 JOB=1:2 log/s.JOB.log echo task JOB", env=env,
       check=True)
    args = (tmp_path / "fake_args").read_text()
    assert "--wait" in args and "--array=1-2" in args and "--mem=2G" in args and "--gres=gpu:4" in args
    assert "gpu:1" not in args and "--nodes" not in args and "srun" not in args
    for j in (1, 2):
        assert f"task {j}" in (tmp_path / "log" / f"s.{j}.log").read_text()
    p = sh(f"cd {tmp_path} && {UTILS}/slurm.pl JOB=1:2 log/f.JOB.log false", env=env)
    assert p.returncode == 1 and "job array failed" in p.stderr
    # JOB=n: one index, substituted (not taken for the log file name)
    sh(f"cd {tmp_path} && {UTILS}/slurm.pl --gpu 0 JOB=3 log/one.JOB.log echo only JOB", env=env, check=True)
    assert "only 3" in (tmp_path / "log" / "one.3.log").read_text() and not (tmp_path / "JOB=3").exists()
    assert "--array=3-3" in (tmp_path / "fake_args").read_text().splitlines()[-1]
    p = sh(f"cd {tmp_path} && {UTILS}/slurm.pl --gpu two log/x.log true", env=env)
    assert p.returncode == 2 and "--gpu takes a number" in p.stderr


def test_slurm_pl_multi_node_runs_the_command_once_per_node_through_srun(tmp_path):
    env = fake_slurm(tmp_path)
    cmd = "echo node $SLURM_NODEID of task JOB meets at $W2P_RDZV_ENDPOINT id $W2P_RDZV_ID"
    sh(f"cd {tmp_path} && W2P_RDZV_PORT=29877 {UTILS}/slurm.pl --gpu 8 --num_nodes 2 JOB=1:1 log/m.JOB.log "
       f"bash -c '{cmd}'", env=env, check=True)
    sbatch, srun = (tmp_path / "fake_args").read_text().splitlines()
    assert "--nodes=2" in sbatch and "--ntasks-per-node=1" in sbatch and "--gres=gpu:8" in sbatch
    assert srun.startswith("srun --nodes=2 --ntasks-per-node=1")
    text = (tmp_path / "log" / "m.1.log").read_text()
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    for node in (0, 1):
        assert f"node {node} of task 1 meets at {host}:29877 id 4242" in text, text
    assert "# Ended (code 0)" in text


def test_help_and_option_errors():
    p = sh("./run.sh --help", cwd=MINI, check=True)
    for opt in ("--stage", "--stop_stage", "--nj", "--ngpu", "--num_nodes", "--nproc", "--seed", "--llm",
                "--train_config", "--ce_config", "--systems_config", "--fewshot_config", "--decode_config", "--tasks"):
        assert opt in p.stdout, opt
    p = sh("./run.sh --no_such_option 1", cwd=MINI)
    assert p.returncode != 0 and "invalid option --no_such_option" in p.stderr


def _help_value(text, opt):
    line = next(x for x in text.splitlines() if x.strip().startswith(opt + " "))
    return line.split(None, 2)[1]


def test_help_shows_the_values_the_recipe_passes():
    """--help is printed after run.sh's own options are parsed: it shows the recipe's values, not the template's
    defaults (mini_en passes --nbpe 100 --bpe_type char --nproc 2 and a CE phase, librispeech two tasks)."""
    mini = sh("./run.sh --help", cwd=MINI, check=True).stdout
    assert [_help_value(mini, o) for o in ("--nbpe", "--bpe_type", "--nproc", "--ce_config", "--tasks")] == [
        "100", "char", "2", '"conf/train_wav2prompt_ce.yaml"', '"st']
    libri = sh("./run.sh --help", cwd=LIBRI, check=True).stdout
    assert [_help_value(libri, o) for o in ("--nbpe", "--bpe_type", "--ce_config")] == [
        "5000", "bpe", '"conf/train_wav2prompt_ce.yaml"']
    assert '--tasks "st st_es slu" ' in libri and "--llm /path/to/bloomz-7b1 " in libri
    assert mini.startswith("Usage:") and "Successfully" not in mini  # nothing runs
    # options given before --help count too; the recipe's local/data.sh shows its db.sh corpus dir
    assert _help_value(sh("./run.sh --nbpe 7 --help", cwd=MINI, check=True).stdout, "--nbpe") == "7"
    p = sh("local/data.sh --help", cwd=MINI, env={"MINI_EN": "/some/corpus"}, check=True)
    assert "--corpus_dir /some/corpus" in p.stdout


def test_template_has_one_delimited_block_per_stage():
    src = open(os.path.join(ROOT, "egs", "TEMPLATE", "w2p1", "w2p.sh")).read()
    for n in range(11):
        assert re.search(rf"# =+ Stage {n}: .*\n"
                         rf"if \[ \$\{{stage\}} -le {n} \] && \[ \$\{{stop_stage\}} -ge {n} \]; then",
                         src), n


def test_template_knows_no_corpus():
    """Stages 0-1 are the recipe's local/data.sh: the template has no corpus option, no corpus branch and calls
    no corpus-specific code."""
    src = open(os.path.join(ROOT, "egs", "TEMPLATE", "w2p1", "w2p.sh")).read()
    lines = [line.split("#")[0] for line in src.splitlines()]  # comments may name recipes
    code = "\n".join(lines)
    assert not re.search(r"^\s*corpus(_dir)?=|\$\{?corpus", code, re.M)
    branches = [x for x in lines if re.search(r"\b(if|elif|case)\b|\[ |&&|\|\|", x)]
    assert not [x for x in branches if re.search(r"mini_en|librispeech|covost|slurp|MINI_EN|LIBRISPEECH", x, re.I)]
    for name in ("w2p.synth", "synth_mini_en", "prepare_data", "espeak"):
        assert name not in code, name
    assert code.count("local/data.sh \"$@\"") == 1 and "local_data --stage 0 --stop_stage 0" in code
    for recipe in (MINI, LIBRI):
        assert os.access(os.path.join(recipe, "local", "data.sh"), os.X_OK), recipe


def test_missing_local_data_sh_is_a_clear_error(tmp_path):
    r = tmp_path / "recipe"
    r.mkdir()
    for f in ("cmd.sh", "utils", "w2p.sh"):
        os.symlink(os.path.join(MINI, f), r / f)
    (r / "path.sh").write_text(": # the test's python is on PATH already\n")
    p = sh("./w2p.sh --stop_stage 0", cwd=str(r))
    assert p.returncode != 0 and "local/data.sh missing" in p.stderr


def _feats(dump, s):
    return dict(kaldiio.load_scp(os.path.join(dump, "fbank", s, "feats.scp")))


def test_mini_en_stages_0_to_2_end_to_end(tmp_path):
    c, d, u = tmp_path / "corpus", tmp_path / "data", tmp_path / "dump"
    base = f"./run.sh --nj 2 --max_utts 3 --local_data_opts '--corpus_dir {c}' --datadir {d} --dumpdir {u}"
    # missing inputs name the stage to run
    p = sh(f"{base} --stage 1 --stop_stage 1", cwd=MINI)
    assert p.returncode != 0 and "run stage 0 first" in p.stderr
    p = sh(f"{base} --stage 2 --stop_stage 2", cwd=MINI)
    assert p.returncode != 0 and "run stage 1 (data prep) first" in p.stderr
    p = sh(f"{base} --stop_stage 2", cwd=MINI, check=True)
    # the recipe's defaults: test_heldout and the held-out spoken questions besides the other sets
    sets = ["train", "dev", "test", "test_heldout", "sqqa_test_heldout"] + [
        f"{t}_{s}" for t in ("st", "slu", "sqqa", "sqa") for s in ("fewshot", "test")]
    for s in sets:
        f = _feats(str(u), s)
        assert len(f) == 3 and all(v.shape[1] == 80 and v.dtype == np.float32 for v in f.values())
        assert len(open(d / s / "wav.scp").readlines()) == 3
    assert (u / "fbank" / "slu_test" / "intents").read_text().count("\n") >= 12
    assert (u / "fbank" / "sqa_test" / "question").exists() and (u / "fbank" / "st_test" / "ref").exists()
    st = np.load(u / "fbank" / "train" / "cmvn.npz")
    assert int(st["count"]) == sum(v.shape[0] for v in _feats(str(u), "train").values())
    before = _feats(str(u), "dev")
    wav_mtime = os.path.getmtime(next((c / "wav" / "dev").iterdir()))
    # re-running a finished stage is safe and redoes only that stage, with the same result
    p = sh(f"{base} --stage 2 --stop_stage 2", cwd=MINI, check=True)
    assert "Stage 0" not in p.stdout and "Stage 1" not in p.stdout and "Stage 2" in p.stdout
    after = _feats(str(u), "dev")
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert os.path.getmtime(next((c / "wav" / "dev").iterdir())) == wav_mtime


def test_synth_reuses_wavs_and_refuses_a_corpus_made_with_other_options(tmp_path):
    import json

    import pytest
    import soundfile as sf

    from w2p.synth import make_corpus as synth_mini_en

    c = str(tmp_path / "corpus")
    assert synth_mini_en.main(["--corpus", c, "--max_utts", "1"]) == 0
    assert synth_mini_en.main(["--corpus", c, "--max_utts", "1", "--finalize"]) == 0
    man = [json.loads(x) for x in open(os.path.join(c, "sqa_test.jsonl"))]
    assert len(man) == 1 and man[0]["question"].endswith("?") and man[0]["ref"]
    info = sf.info(man[0]["wav"])
    assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16" and 0.5 < info.duration < 6
    stats = json.load(open(os.path.join(c, "stats.json")))
    assert stats["total_utterances"] == 11 and stats["vocabulary_size"] > 20 and stats["total_hours"] > 0
    mtime = os.path.getmtime(man[0]["wav"])
    assert synth_mini_en.main(["--corpus", c, "--max_utts", "1"]) == 0  # re-run: nothing re-synthesised
    assert os.path.getmtime(man[0]["wav"]) == mtime
    os.remove(man[0]["wav"])
    with pytest.raises(SystemExit, match="wavs missing.*re-run stage 0"):
        synth_mini_en.main(["--corpus", c, "--max_utts", "1", "--finalize"])
    with pytest.raises(SystemExit, match="remove"):
        synth_mini_en.main(["--corpus", c, "--max_utts", "2"])


def _manifests(corpus):
    """{set: [records]} of a synthesised corpus, wav paths relative to it (two corpus dirs compare equal)."""
    import json

    out = {}
    for f in sorted(os.listdir(corpus)):
        if f.endswith(".jsonl"):
            recs = [json.loads(x) for x in open(os.path.join(corpus, f))]
            for r in recs:
                r["wav"] = os.path.relpath(r["wav"], corpus)
            out[f[:-6]] = recs
    return out


def test_generator_is_deterministic_across_runs_and_job_splits(tmp_path):
    """The corpus is a function of the seed: two runs (split over 1 and over 3 jobs) give the same manifests and
    the same audio, and the manifests follow the corpus conventions."""
    import json

    import soundfile as sf

    from w2p.synth import espeak, mini_en
    from w2p.synth import make_corpus as mk

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert mk.main(["--corpus", a, "--max_utts", "2", "--seed", "5"]) == 0
    for j in (1, 2, 3):
        assert mk.main(["--corpus", b, "--max_utts", "2", "--seed", "5", "--nj", "3", "--job", str(j)]) == 0
    for c in (a, b):
        assert mk.main(["--corpus", c, "--max_utts", "2", "--seed", "5", "--finalize"]) == 0
    ma, mb = _manifests(a), _manifests(b)
    assert ma == mb and set(ma) == set(mini_en.ALL_SETS)
    for s, recs in ma.items():
        assert open(os.path.join(a, recs[0]["wav"]), "rb").read() == open(os.path.join(b, recs[0]["wav"]), "rb").read()
        assert len(recs) == 2
        for r in recs:
            assert re.fullmatch(rf"{re.escape(r['spk'])}-{s}-\d{{5}}", r["id"]) and r["wav"] == f"wav/{s}/{r['id']}.wav"
            assert r["spk"] == espeak.speaker_id(r["voice"], r["variant"]) and r["voice"] in espeak.VOICES
            assert espeak.SPEED[0] <= r["speed"] <= espeak.SPEED[1] and espeak.PITCH[0] <= r["pitch"] <= espeak.PITCH[1]
            assert re.fullmatch(r"[A-Z][A-Za-z' ]+\??", r["text"]), r["text"]
            assert abs(sf.info(os.path.join(a, r["wav"])).duration - r["dur"]) < 1e-3
            if s in mini_en.ASR_SETS:  # ASR sets mix the families: no task references
                assert not {"ref", "question", "slots"} & set(r)
            else:
                assert r["ref"] and r["family"].split("_")[0] == s.split("_")[0]
    assert all(r["ref"] in mini_en.INTENTS and isinstance(r["slots"], dict) for r in ma["slu_test"])
    assert all(r["question"].endswith("?") for r in ma["sqa_test"] + ma["sqa_fewshot"])
    ids = [r["id"] for recs in ma.values() for r in recs]
    assert len(ids) == len(set(ids)) == 22
    assert open(os.path.join(a, "intents")).read().split() == list(mini_en.INTENTS)
    assert json.load(open(os.path.join(a, "stats.json")))["seed"] == 5
    other = mk.plan(6, 2, str(tmp_path / "c"))  # another seed: another corpus
    assert [u["item"].text for u in other] != [u["item"].text for u in mk.plan(5, 2, a)]


def test_stages_4_to_9_follow_the_systems_file(tmp_path):
    """w2p.sh trains, fine-tunes, decodes and scores exactly the systems of conf/systems.yaml, system X in exp/X.
    The trainers and decoders are stand-ins that record their arguments; w2p.bin.systems runs for real."""
    import sys

    calls, exp = tmp_path / "calls", tmp_path / "exp"
    fake = tmp_path / "python"
    fake.write_text(f"""#!/usr/bin/env bash
case "$2" in
  w2p.bin.systems) exec {sys.executable} "$@" ;;
  w2p.bin.finetune) echo "$*" >> {calls}
    [[ " $* " == *" --only_with_lora "* ]] && exit 0  # as without a LoRA config: no model
    all="$*"; out=${{all##*--output_dir }}; out=${{out%% *}}; mkdir -p $out; touch $out/model.pt ;;
  *) echo "$*" >> {calls} ;;
esac
""")
    fake.chmod(0o755)
    sh(f"./run.sh --stage 4 --stop_stage 9 --python {fake} --expdir {exp} --dumpdir {tmp_path}/dump", cwd=MINI,
       check=True)
    lines = [x for x in calls.read_text().splitlines() if "validate_data_dir" not in x]

    def arg(line, opt):
        w = line.split()
        return w[w.index(opt) + 1]

    train = [x for x in lines if x.startswith("-m w2p.bin.train ")]
    assert [arg(x, "--output_dir") for x in train] == [
        f"{exp}/{n}" for n in ("wav2prompt_pre", "wav2prompt", "asr_ctc", "encoder_llm", "wav2prompt_nomse")]
    assert "--config conf/train_wav2prompt.yaml --llm" in train[0] and "--init" not in train[0]
    assert "--config conf/train_wav2prompt_ce.yaml" in train[1]
    assert arg(train[1], "--init") == f"{exp}/wav2prompt_pre/model.pt"
    assert arg(train[2], "--config") == "conf/train_asr_ctc.yaml"
    assert arg(train[2], "--init") == f"{exp}/wav2prompt/model.pt"
    assert [arg(x, "--init") for x in train[3:]] == [f"{exp}/asr_ctc/model.pt"] * 2
    readouts = [(arg(x, "--model_dir"), os.path.basename(arg(x, "--data_dir")))
                for x in lines if "w2p.bin.readout" in x]
    assert readouts == [(f"{exp}/{e}", s) for s in ("test", "test_heldout") for e in ("wav2prompt_pre", "wav2prompt")]
    ft = [(arg(x, "--output_dir"), arg(x, "--init_exp"), arg(x, "--config")) for x in lines if "w2p.bin.finetune" in x]
    want = []
    for t in ("st", "slu", "sqqa", "sqa"):
        want += [(f"{exp}/wav2prompt_fewshot/{t}", f"{exp}/wav2prompt", "conf/finetune_fewshot.yaml")]
        nomse = (f"{exp}/wav2prompt_fewshot_nomse/st", f"{exp}/wav2prompt", "conf/finetune_fewshot.yaml")
        want += [nomse] * (t == "st")
        want += [(f"{exp}/cascade_fewshot/{t}", f"{exp}/asr_ctc", "conf/finetune_fewshot.yaml")]
    assert ft == want
    assert all("--model_conf.mse_weight 0" in x for x in lines if "fewshot_nomse" in x and "finetune" in x)
    dec = [x for x in lines if "w2p.bin.decode" in x]
    # zero-shot: every system, ASR on each test set of run.sh (test with the tasks, then test_heldout on its own)
    assert all("--systems " not in x and arg(x, "--systems_config") == "conf/systems.yaml" for x in dec[:2])
    assert arg(dec[0], "--expdir") == str(exp) and arg(dec[1], "--tasks.asr") == "test_heldout"
    fewshot = dec[2:]
    assert [(arg(x, "--systems"), arg(x, "--tasks")) for x in fewshot] == [
        ("wav2prompt_fewshot", "st"), ("wav2prompt_fewshot_nomse", "st"), ("wav2prompt_fewshot", "slu"),
        ("wav2prompt_fewshot", "sqqa"), ("wav2prompt_fewshot", "sqa")]
    assert all(arg(x, "--calibrate") == "false" for x in fewshot)
    score = [x for x in lines if "w2p.bin.score" in x]
    assert len(score) == 1 and arg(score[0], "--systems_config") == "conf/systems.yaml"
    # a bad systems file stops the stage with the reader's message
    bad = tmp_path / "bad.yaml"
    bad.write_text("x: {stage: 5, config: --nope_config}\n")
    base = f"./run.sh --stage 5 --stop_stage 5 --python {fake} --expdir {exp} --systems_config"
    p = sh(f"{base} {bad}", cwd=MINI)
    assert p.returncode != 0 and "config --nope_config is not a run.sh option" in p.stderr
    p = sh(f"{base} {tmp_path}/missing.yaml", cwd=MINI)
    assert p.returncode != 0 and "missing.yaml not found" in p.stderr and "train x" not in p.stdout


def test_librispeech_recipe_on_fixture_corpora(tmp_path):
    from test_data import _covost, _librispeech, _slurp

    ls, cv, sl = (str(tmp_path / x) for x in ("ls", "cv", "slurp"))
    _librispeech(ls)
    for sub in ("dev-clean", "test-clean"):
        os.symlink(os.path.join(ls, "train-clean-100"), os.path.join(ls, sub))
    _covost(cv)
    os.symlink(os.path.join(cv, "covost_v2.en_fr.test.tsv"), os.path.join(cv, "covost_v2.en_fr.train.tsv"))
    _slurp(sl)
    d, u = tmp_path / "data", tmp_path / "dump"
    # CoVoST 2 as the ST source (ST_CORPUS=covost2), its En->Fr fixture tsv as task st
    base = f"./run.sh --nj 1 --datadir {d} --dumpdir {u} --stop_stage 2 --tasks 'st slu'"
    env = {"ST_CORPUS": "covost2", "COVOST2": cv, "SLURP": sl}
    p = sh(base, cwd=LIBRI, env=dict(env, LIBRISPEECH=str(tmp_path / "absent")))
    assert p.returncode != 0 and "LIBRISPEECH" in p.stderr and "edit db.sh" in p.stderr
    # the LibriSpeech fixture has 3 bad utterances of 6: more than local/data.sh's default --max_skip_frac 0.1
    p = sh(base, cwd=LIBRI, env=dict(env, LIBRISPEECH=ls))
    assert p.returncode != 0 and "LibriSpeech train-clean-100: 3 of 6 utterances would be skipped" in p.stderr
    assert "utterance 26-495-0003: audio file" in p.stderr.split("Skipped:")[1]
    p = sh(f"{base} --local_data_opts '--max_skip_frac 0.5'", cwd=LIBRI, env=dict(env, LIBRISPEECH=ls), check=True)
    assert len(_feats(str(u), "train")) == 3 and len(_feats(str(u), "st_test")) == 2
    assert len(_feats(str(u), "slu_fewshot")) == 2 and len(_feats(str(u), "slu_test")) == 1
    assert (u / "fbank" / "slu_test" / "slots").read_text().strip().endswith('{"place_name": "paris"}')
    assert (u / "fbank" / "train" / "cmvn.npz").exists()


def _recording_python(tmp_path, calls, prefix=""):
    """A stand-in python that records its arguments, after ``prefix`` (shell-expanded), one call a line in
    ``calls`` (w2p.bin.systems runs for real)."""
    import sys

    fake = tmp_path / "python"
    fake.write_text(f"""#!/usr/bin/env bash
case "$2" in
  w2p.bin.systems) exec {sys.executable} "$@" ;;
  *) echo "{prefix}$*" >> {calls} ;;
esac
""")
    fake.chmod(0o755)
    return fake


def test_stage_4_on_slurm_asks_for_ngpu_gpus_on_num_nodes_nodes(tmp_path):
    """run.sh --ngpu 4 --num_nodes 2 with cmd_backend=slurm: each training job asks sbatch for --gres=gpu:4 on 2
    nodes (cmd.sh's --gpu 1 overridden), srun starts the trainer once per node with --ngpu 4 --num_nodes 2."""
    calls = tmp_path / "calls"
    fake = _recording_python(tmp_path, calls, prefix="node ${SLURM_NODEID:-none} ")
    env = dict(fake_slurm(tmp_path), cmd_backend="slurm")
    sh(f"./run.sh --stage 4 --stop_stage 4 --ngpu 4 --num_nodes 2 --python {fake} --expdir {tmp_path}/exp "
       f"--dumpdir {tmp_path}/dump", cwd=MINI, env=env, check=True)
    submitted = [x for x in (tmp_path / "fake_args").read_text().splitlines() if not x.startswith("srun")]
    assert len(submitted) == 2  # wav2prompt_pre, then its CE phase
    for s in submitted:
        assert "--gres=gpu:4" in s and "--nodes=2" in s and "--ntasks-per-node=1" in s and "gpu:1" not in s
    train = [x for x in calls.read_text().splitlines() if "w2p.bin.train" in x]
    assert sorted(x.split()[1] for x in train) == ["0", "0", "1", "1"]  # each job: once on each node
    assert all("--ngpu 4 --num_nodes 2" in x for x in train)


def test_stages_6_and_9_decode_and_score_the_tasks_and_test_sets_given(tmp_path):
    """--tasks and --test_sets decide what stages 6 and 9 decode and score (task T on T_test, ASR on each test set),
    whatever the decode config lists."""
    calls = tmp_path / "calls"
    fake = _recording_python(tmp_path, calls)
    base = (f"./run.sh --stage 6 --stop_stage 9 --python {fake} --expdir {tmp_path}/exp --dumpdir {tmp_path}/dump "
            "--systems_config conf/tuning/systems_smoke.yaml --decode_config conf/tuning/decode_smoke.yaml")

    def run(opts):
        calls.write_text("")
        sh(f"{base} {opts}", cwd=LIBRI, check=True, env={"SQQA": "", "SQA": ""})
        lines = [x.split() for x in calls.read_text().splitlines() if "validate_data_dir" not in x]
        return ([x for x in lines if "w2p.bin.decode" in x and "--systems" not in x],
                [x for x in lines if "w2p.bin.score" in x])

    def opts_of(words):
        return {w: words[i + 1] for i, w in enumerate(words) if w.startswith("--tasks")}

    dec, score = run("--tasks 'st_de sqqa' --test_sets 'test other'")
    sets = {"--tasks.st_de": "st_de_test", "--tasks.sqqa": "sqqa_test"}
    assert [opts_of(x) for x in dec] == [dict(sets, **{"--tasks": "asr,st_de,sqqa", "--tasks.asr": "test"}),
                                         dict(sets, **{"--tasks": "asr", "--tasks.asr": "other"})]
    assert len(score) == 1 and opts_of(score[0]) == dict(sets, **{"--tasks": "asr,st_de,sqqa", "--tasks.asr": "test"})
    assert " ".join(score[0]).count("--asr_sets test other") == 1
    # a task set dumped for the further test set (<task>_<set>: sqqa_other) is decoded with it, in the same call
    # (the later --tasks.sqqa wins: w2p.config overrides apply in order)
    (tmp_path / "dump" / "fbank" / "sqqa_other").mkdir(parents=True)
    dec, _ = run("--tasks 'st_de sqqa' --test_sets 'test other'")
    assert opts_of(dec[1]) == dict(sets, **{"--tasks": "asr,sqqa", "--tasks.asr": "other",
                                            "--tasks.sqqa": "sqqa_other"})
    assert [w for w in dec[1] if w.startswith("--tasks.sqqa")] == ["--tasks.sqqa"] * 2
    assert (tmp_path / "exp" / "decode" / "log" / "decode_other.log").is_file()
    dec, score = run("--tasks slu --test_sets ''")  # no ASR test set: the tasks only
    assert [opts_of(x) for x in dec] == [{"--tasks": "slu", "--tasks.slu": "slu_test"}]
    assert opts_of(score[0]) == {"--tasks": "slu", "--tasks.slu": "slu_test"}


def _librispeech_recipe_copy(tmp_path):
    """The recipe dir copied under <tmp>/egs/librispeech/w2p1 (RESULTS.md, images/, data/, exp/ are written there),
    with the repo's tools/ and egs/TEMPLATE/ linked in, as path.sh and the utils/ links expect."""
    import shutil

    root = tmp_path / "repo"
    (root / "egs").mkdir(parents=True)
    os.symlink(os.path.join(ROOT, "tools"), root / "tools")
    os.symlink(os.path.join(ROOT, "egs", "TEMPLATE"), root / "egs" / "TEMPLATE")
    rec = root / "egs" / "librispeech" / "w2p1"
    shutil.copytree(LIBRI, rec, symlinks=True,
                    ignore=shutil.ignore_patterns("data", "dump", "exp", "RESULTS.md", "images", "downloads"))
    return rec


SMOKE = ("--llm smollm2-135m --ngpu 0 --nproc 2 --nj 2 --nbpe 60 --bpe_type char "
         "--systems_config conf/tuning/systems_smoke.yaml --train_config conf/tuning/train_wav2prompt_smoke.yaml "
         "--ce_config conf/tuning/train_wav2prompt_ce_smoke.yaml "
         "--fewshot_config conf/tuning/finetune_fewshot_smoke.yaml --decode_config conf/tuning/decode_smoke.yaml")


def test_librispeech_recipe_stages_0_to_10_on_fixture_corpora(tmp_path):
    """egs/librispeech/w2p1, every stage with the smoke configs, on espeak-ng fixtures in the corpora's own layouts
    and formats (LibriSpeech flac + trans.txt, Europarl-ST m4a recordings + segment lists, SLURP jsonl + flac):
    RESULTS.md gets a row per system and a column per task; SQQA/SQA without a source are skipped with one line."""
    import sys
    import time

    import yaml

    rec = _librispeech_recipe_copy(tmp_path)
    fx = tmp_path / "fixtures"
    sh(f"{sys.executable} local/make_fixtures.py --out {fx}", cwd=str(rec), check=True)
    assert (fx / "europarl-st" / "en" / "audios").is_dir()
    env = {"LIBRISPEECH": f"{fx}/LibriSpeech", "EUROPARL_ST": f"{fx}/europarl-st", "SLURP": f"{fx}/slurp",
           "SQQA": "", "SQA": ""}
    # a wrong path stops stage 0 naming the db.sh variable
    p = sh(f"./run.sh --stop_stage 0 {SMOKE}", cwd=str(rec), env=dict(env, EUROPARL_ST=str(tmp_path / "nope")))
    assert p.returncode != 0 and "EUROPARL_ST -> " in p.stderr and "edit db.sh" in p.stderr
    t0 = time.time()
    # the timeout only guards against a hang: on a loaded shared machine the run takes several times longer
    p = sh(f"./run.sh --stop_stage 10 {SMOKE}", cwd=str(rec), env=env, check=True, timeout=1800)
    print(f"stages 0-10: {time.time() - t0:.0f} s")
    out = p.stdout + p.stderr
    for t in ("SQQA", "SQA"):
        assert out.count(f"{t} is not set in db.sh: task {t.lower()} skipped") == 1
    # the fixture's mis-timed Europarl-ST segment is skipped, naming utterance and recording
    assert re.search(r"skipping: utterance en\.\S+_0003000-0003350: mis-timed segment 30\.00-33\.50 s .*\.m4a", out)
    assert "Successfully finished" in p.stdout
    res = (rec / "RESULTS.md").read_text()
    head = next(x for x in res.splitlines() if x.startswith("| system |"))
    for col in ("asr wer", "st bleu", "st_es bleu", "slu intent_acc"):
        assert col in head, col
    assert "sqqa" not in head and "sqa " not in head
    systems = yaml.safe_load((rec / "conf" / "tuning" / "systems_smoke.yaml").read_text())
    lines = res.splitlines()
    i = lines.index(head)
    rows = [x.split("|")[1].strip() for x in lines[i + 2:lines.index("", i)]]
    # every system but the LoRA cascade (trained only with a LoRA few-shot config) has its row
    assert rows == [s["label"] for n, s in systems.items() if "label" in s and n != "cascade_fewshot"]
    assert len((rec / "exp" / "packed" / "smoke.out").read_text().splitlines()) == 2
    # the five zero-shot systems and the few-shot one decoded the En->Es task
    assert sorted(p.parent.parent.name for p in (rec / "exp").glob("*/decode_st_es_st_es_test/hyp")) == [
        "cascade", "encoder_llm", "gold", "wav2prompt", "wav2prompt_fewshot", "wav2prompt_nomse"]


def test_librispeech_paper_scale_configs():
    """The configs run.sh names load through the one config loader and are sized as the paper's setting: a ~100M
    Conformer, CTC over run.sh's 5000-unit BPE, a 7B LLM given by path, beam 5 and repetition penalty 1.5."""
    from w2p.decode import load_config as decode_config
    from w2p.models.encoder import SpeechEncoder
    from w2p.train.config import load_config

    conf = os.path.join(LIBRI, "conf")
    w2p = load_config([os.path.join(conf, "train_wav2prompt.yaml"), os.path.join(conf, "train_wav2prompt_ce.yaml")])
    assert w2p["model_conf"]["ce_weight"] == 1.0 and w2p["llm"].endswith("bloomz-7b1") and not w2p["preload"]
    n = sum(p.numel() for p in SpeechEncoder(**w2p["model_conf"]["encoder"]).parameters())
    assert 90e6 < n < 130e6, n
    for f in ("train_asr_ctc.yaml", "train_encoder_llm.yaml", "train_wav2prompt_nomse.yaml", "finetune_fewshot.yaml"):
        c = load_config(os.path.join(conf, f))
        assert c["model_conf"].get("encoder", w2p["model_conf"]["encoder"]) == w2p["model_conf"]["encoder"], f
    d = decode_config(os.path.join(conf, "decode.yaml"))
    assert (d["beam"], d["repetition_penalty"], d["max_utts"], d["device"]) == (5, 1.5, None, "cuda")
    libri = sh("./run.sh --help", cwd=LIBRI, check=True).stdout
    assert _help_value(libri, "--nbpe") == "5000" and _help_value(libri, "--llm") == "/path/to/bloomz-7b1"
    for f in sorted(os.listdir(os.path.join(conf, "tuning"))):  # the smoke set loads too
        if f.startswith(("train_", "finetune_")):
            load_config(os.path.join(conf, "tuning", f))


def test_mini_en_open_vocab_and_heldout_through_local_data_opts(tmp_path):
    """The recipe's way to the held-out split: local/data.sh options + test_heldout listed in --test_sets."""
    c, d = tmp_path / "corpus", tmp_path / "data"
    opts = f"--corpus_dir {c} --engines espeak --open_vocab 0.5 --heldout 2 --heldout_engines flite"
    p = sh(f"./run.sh --nj 1 --max_utts 2 --local_data_opts '{opts}' --datadir {d} --dumpdir {tmp_path}/dump "
           f"--test_sets 'test test_heldout' --stop_stage 2", cwd=MINI, check=True)
    spk = [ln.split()[1] for ln in open(d / "test_heldout" / "utt2spk")]
    assert len(spk) == 2 and all(s.startswith("flite_") for s in spk)
    assert all(ln.split()[1].startswith("en") for ln in open(d / "train" / "utt2spk"))  # espeak speakers
    # test_heldout brings the task sets on it the corpus has (sqqa_test_heldout: sqqa_test's questions and answers
    # in held-out voices) through stages 1 and 2; the others are not in the corpus
    spk = [ln.split()[1] for ln in open(d / "sqqa_test_heldout" / "utt2spk")]
    assert len(spk) == 2 and all(s.startswith("flite_") for s in spk)
    for f in ("text", "ref"):
        assert sorted(ln.split(maxsplit=1)[1] for ln in open(d / "sqqa_test_heldout" / f)) == sorted(
            ln.split(maxsplit=1)[1] for ln in open(d / "sqqa_test" / f))
    assert len(_feats(str(tmp_path / "dump"), "sqqa_test_heldout")) == 2
    assert not (d / "st_test_heldout").exists()
    assert "not prepared: st_test_heldout slu_test_heldout sqa_test_heldout" in p.stdout + p.stderr

"""The optimize loop itself, with fake passes and scripted metrics and timings.

No real model runs here: the candidates are copies of a one-node ONNX graph made by a fake
pass registered in the pass registry, the evaluator returns set metrics, and the measuring
processes answer the worker's protocol with set latencies (optimize's `Dependencies`).
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from leanify.errors import LeanifyError
from leanify.models.artifact import Artifact
from leanify.models.load import load
from leanify.passes.registry import PassConfig, PassContext, register
from leanify.search.optimize import Dependencies, OptimizeSettings, optimize
from leanify.search.plan import Candidate
from leanify.search.select import Targets

STSB = Path(__file__).resolve().parents[2] / "examples" / "data" / "stsb" / "sts-test.csv"
BASE_MS = 10.0


@dataclass(frozen=True)
class FakeConfig(PassConfig):
    """A pass that copies its input under another name (and size): `tag` names the result."""

    name = "fake-loop-pass"
    tag: str = ""
    pad_kb: int = 0


class Script:
    """What the fakes do: metrics by tag, latencies by (tag, batch, round, side by side?),
    pass failures; and a count of what really ran."""

    def __init__(self) -> None:
        self.metric: dict[str, float] = {"source": 82.0}
        self.trial_speedup: dict[str, Any] = {}  # tag -> speed-up, or f(round, batch)
        self.final_speedup: dict[str, Any] = {}
        self.fail: dict[str, type[Exception]] = {}  # tag -> exception raised by the pass
        self.builds: list[str] = []
        self.evaluations: list[str] = []
        self.sessions: list[tuple[str, ...]] = []

    def speedup(self, tag: str, batch: int, rnd: int, final: bool) -> float:
        if tag == "source":
            return 1.0
        table = self.final_speedup if final and tag in self.final_speedup \
            else self.trial_speedup
        value = table[tag]
        return value(rnd, batch) if callable(value) else value


SCRIPT = Script()


@register(FakeConfig)
def _fake_pass(artifact: Artifact, config: FakeConfig, ctx: PassContext) -> Artifact:
    SCRIPT.builds.append(config.tag)
    if config.tag in SCRIPT.fail:
        raise SCRIPT.fail[config.tag](f"{config.tag} broke on purpose")
    with ctx.output_dir(config, artifact) as tmp:
        _write_onnx(tmp / "model.onnx", pad_kb=config.pad_kb)
        final = tmp.with_name(tmp.name.removesuffix(".partial"))
    return load(final / "model.onnx", name=config.tag)


class FakeWorker:
    """Answers the measuring worker's protocol with the script's latencies."""

    def __init__(self, session: list[str], label: str):
        self.session, self.label, self.rounds = session, label, {}

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request["cmd"]
        if cmd == "load":
            return {"ok": True, "runtime": "fake", "runtime_settings": {}, "load_s": 0.0,
                    "import_s": 0.0, "rss_runtime_mb": 100.0, "rss_loaded_mb": 110.0,
                    "input_source": "random", "pid": 1}
        point = (request["batch_size"], request["seq_len"])
        if cmd == "prepare":
            return {"ok": True, "shapes": {"input_ids": list(point)}}
        rnd = self.rounds.get(point, 0)
        self.rounds[point] = rnd + 1
        final = len(self.session) > 2
        ms = BASE_MS / SCRIPT.speedup(self.label, point[0], rnd, final)
        return {"ok": True, "samples_ms": [ms * f for f in (0.99, 1.0, 1.01)],
                "first_run_ms": ms, "peak_rss_mb": 200.0}

    def close(self) -> None:
        pass


class Spawner:
    """One measuring process per model; a session starts with the baseline."""

    def __init__(self) -> None:
        self.current: list[str] = []

    def __call__(self, env: dict[str, str], label: str) -> FakeWorker:
        if label == "source":
            self.current = []
            SCRIPT.sessions.append(())
        self.current.append(label)
        SCRIPT.sessions[-1] = tuple(self.current)
        return FakeWorker(self.current, label)


def fake_evaluate(artifact: Artifact, dataset, settings, threads, reference=None):
    SCRIPT.evaluations.append(artifact.name)
    return {"name": "spearman", "value": SCRIPT.metric[artifact.name], "higher_is_better": True,
            "details": {}}


def deps_for(tags: list[str]) -> Dependencies:
    def fake_plan(source, **_kwargs) -> list[Candidate]:
        return [Candidate(tag, (FakeConfig(tag=tag, pad_kb=_pad(tag)),)) for tag in tags]

    return Dependencies(plan=fake_plan, evaluate=fake_evaluate, spawn=Spawner(),
                        probe=lambda: 0.0)


PADS: dict[str, int] = {}


def _pad(tag: str) -> int:
    return PADS.get(tag, 0)


def _write_onnx(path: Path, pad_kb: int = 0) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inp = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq"])
    node = helper.make_node("Cast", ["input_ids"], ["out"], to=TensorProto.FLOAT)
    inits = [numpy_helper.from_array(np.zeros(pad_kb * 256, dtype=np.float32), "pad")] \
        if pad_kb else []
    graph = helper.make_graph([node], "fake", [inp], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture(autouse=True)
def fresh_script():
    global SCRIPT
    SCRIPT.__init__()
    PADS.clear()
    yield


@pytest.fixture
def source(tmp_path, minilm_path) -> Artifact:
    """A one-node text model with a real tokenizer beside it (the task's checks need one)."""
    import shutil

    folder = tmp_path / "source-model"
    folder.mkdir()
    _write_onnx(folder / "source.onnx")
    shutil.copy(minilm_path / "tokenizer.json", folder / "tokenizer.json")
    return load(folder / "source.onnx", name="source")


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "sts.csv"
    path.write_text("\n".join(STSB.read_text(encoding="utf-8").splitlines()[:30]) + "\n",
                    encoding="utf-8")
    return path


def settings_for(data: Path, out: Path, **kw) -> OptimizeSettings:
    defaults = dict(task="embedding-similarity", data=data, out=out, batch_sizes=(1, 8),
                    seq_lens=(16,), threads=1, rounds=3, calibration_size=4,
                    final_budget_s=60.0, final_max_rounds=6)
    return OptimizeSettings(**{**defaults, **kw})


def candidate(record: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in record["candidates"] if c["name"] == name)


def stored(out: Path) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(out / "trials.db") as con:
        return {name: json.loads(result) for name, result in
                con.execute("SELECT name, result FROM trials")}


# --- the cases ---------------------------------------------------------------------------


def test_a_nan_metric_is_rejected_and_never_selected(tmp_path, source, data):
    SCRIPT.metric.update(constant=float("nan"), good=81.9)
    SCRIPT.trial_speedup.update(constant=3.0, good=1.5)
    record = optimize(source, settings_for(data, tmp_path / "run"),
                      deps=deps_for(["constant", "good"]))
    nan = candidate(record, "constant")
    assert nan["status"] == "done" and not nan["accepted"]
    assert "nan" in nan["reason"] and "accuracy gate" in nan["reason"]
    assert record["selected"]["name"] == "good"


def test_resume_with_other_targets_rejudges_without_rerunning(tmp_path, source, data):
    SCRIPT.metric.update(lossy=81.0, close=81.9)  # drops of 1.0 and 0.1
    SCRIPT.trial_speedup.update(lossy=3.0, close=1.5)
    out = tmp_path / "run"
    deps = deps_for(["lossy", "close"])
    first = optimize(source, settings_for(data, out, targets=Targets(max_drop=0.5)), deps=deps)
    assert not candidate(first, "lossy")["accepted"]
    assert "accuracy gate" in candidate(first, "lossy")["reason"]
    assert candidate(first, "close")["accepted"] and first["selected"]["name"] == "close"
    ran = (list(SCRIPT.builds), list(SCRIPT.evaluations), len(SCRIPT.sessions))
    assert ran[2] == 3  # two trials and the finalist's side-by-side run

    looser = optimize(source, settings_for(data, out, targets=Targets(max_drop=2.0),
                                           resume=True), deps=deps)
    assert candidate(looser, "lossy")["accepted"]  # rejected before, accepted now
    assert looser["selected"]["name"] == "lossy"
    assert any("re-judged" in w for w in looser["warnings"])
    stricter = optimize(source, settings_for(data, out, targets=Targets(max_drop=0.05),
                                             resume=True), deps=deps)
    assert not candidate(stricter, "close")["accepted"]  # accepted before, rejected now
    assert not candidate(stricter, "lossy")["accepted"]
    assert stricter["selected"] is None
    # nothing was built, scored or timed again: only the new finalist set was measured
    assert (SCRIPT.builds, SCRIPT.evaluations) == (ran[0], ran[1])
    assert SCRIPT.sessions[ran[2]:] == [("source", "lossy")]


def test_a_non_finalist_never_wins_on_its_own_trial_numbers(tmp_path, source, data):
    # Four candidates look 3x faster in their own runs; "modest" looks 2x, clearly apart. Side
    # by side the four come out at 1.5-1.8x. Ranking every trial would pick "modest" on its
    # separate numbers; it was never a finalist.
    tags = ["a", "b", "c", "d", "modest"]
    noise = [1.0, 1.05, 0.95]
    for i, tag in enumerate(tags[:4]):
        SCRIPT.trial_speedup[tag] = lambda r, _b, i=i: (3.0 + 0.01 * i) * noise[r % 3]
        SCRIPT.final_speedup[tag] = lambda _r, _b, i=i: 1.5 + 0.1 * i
        SCRIPT.metric[tag] = 81.9
    SCRIPT.trial_speedup["modest"] = 2.0
    SCRIPT.metric["modest"] = 81.9
    record = optimize(source, settings_for(data, tmp_path / "run"), deps=deps_for(tags))
    assert not candidate(record, "modest")["finalist"]
    assert record["selection"]["finalists"] == ["d", "c", "b", "a"]
    assert record["selected"]["name"] == "d"  # the fastest side by side
    assert "separated" in record["selection"]["rule"]


def test_a_tie_is_recorded_with_the_rule_that_broke_it(tmp_path, source, data):
    # Two finalists within noise of each other in every round: no number of rounds separates
    # them; the smaller one is chosen and the record says why.
    wobble = [1.0, 1.04, 0.97, 1.03, 0.98, 1.02]
    SCRIPT.metric.update(big=81.9, small=81.9)
    SCRIPT.trial_speedup.update(big=2.0, small=2.0)
    SCRIPT.final_speedup.update(big=lambda r, _b: 2.0 * wobble[r % 6],
                                small=lambda r, _b: 2.0 / wobble[r % 6])
    PADS.update(big=400, small=40)
    record = optimize(source, settings_for(data, tmp_path / "run"),
                      deps=deps_for(["big", "small"]))
    selection = record["selection"]
    assert record["selected"]["name"] == "small"
    assert selection["tie_within_pct"] is not None and selection["tie_within_pct"] > 0
    assert "smaller size, then lower memory" in selection["rule"]
    assert set(selection["tied"]) == {"big", "small"}
    assert selection["rounds"] == 6  # rounds were added up to the cap before calling a tie
    assert "tie within" in record["verdict"]


def test_an_internal_error_is_recorded_and_retried_on_resume(tmp_path, source, data):
    SCRIPT.metric.update(buggy=81.9, refused=81.9, fine=81.9)
    SCRIPT.trial_speedup.update(buggy=2.0, refused=2.0, fine=1.5)
    SCRIPT.fail.update(buggy=ZeroDivisionError, refused=LeanifyError)
    out = tmp_path / "run"
    deps = deps_for(["buggy", "refused", "fine"])
    record = optimize(source, settings_for(data, out), deps=deps)
    bug = candidate(record, "buggy")
    assert bug["status"] == "failed" and bug["error_kind"] == "internal"
    assert "Traceback" in bug["traceback"] and "ZeroDivisionError" in bug["traceback"]
    assert "buggy broke on purpose" in (out / bug["error_file"]).read_text()
    assert "Traceback" in stored(out)["buggy"]["traceback"]
    assert candidate(record, "refused")["error_kind"] == "input"
    assert record["selected"]["name"] == "fine"  # the run went on

    del SCRIPT.fail["buggy"]  # the bug is fixed; the refused input still fails
    SCRIPT.builds.clear()
    again = optimize(source, settings_for(data, out, resume=True), deps=deps)
    assert SCRIPT.builds == ["buggy"]  # retried; the input failure and the done trial not
    assert candidate(again, "buggy")["status"] == "done"
    assert candidate(again, "buggy")["attempts"] == 2
    assert again["selected"]["name"] == "buggy"


def test_an_internal_error_escaping_optimize_exits_1_with_the_saved_traceback(
        tmp_path, source, data, monkeypatch, capsys):
    import leanify.search.optimize as search
    from leanify import cli

    real = search.optimize

    def broken_baseline(artifact, *_args):
        raise KeyError("a bug in scoring")

    def with_a_bug(model, settings, progress=None, deps=None):
        return real(model, settings, progress,
                    deps=Dependencies(plan=deps_for([]).plan, evaluate=broken_baseline))

    monkeypatch.setattr(search, "optimize", with_a_bug)
    monkeypatch.setenv("COLUMNS", "300")
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["optimize", str(source.path), "--task", "embedding-similarity", "--data",
                  str(data), "--out", str(out), "--quiet"])
    assert exit_info.value.code == 1  # leanify's own failure, not bad input (2)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    saved = out / "errors" / "crash.txt"
    assert str(saved) in err and "KeyError" in err
    assert "Traceback" in saved.read_text() and "a bug in scoring" in saved.read_text()


def test_an_internal_error_outside_a_run_folder_is_saved_to_a_temp_file(capsys):
    from leanify import cli

    with pytest.raises(SystemExit) as exit_info:
        try:
            math.log(-1)
        except ValueError as exc:
            cli._fail(exc)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    path = next(w for w in err.replace(";", " ").split() if "leanify-crash-" in w)
    assert "Traceback" in Path(path).read_text() and "math domain error" in err
    Path(path).unlink()


def test_when_nothing_is_faster_the_original_is_kept_and_the_run_succeeds(tmp_path, source,
                                                                          data):
    SCRIPT.metric.update(same=82.0, lossy=80.0)
    SCRIPT.trial_speedup.update(same=0.95, lossy=2.0)  # exact but slower; fast but lossy
    before = source.sha256()
    out = tmp_path / "run"
    record = optimize(source, settings_for(data, out), deps=deps_for(["same", "lossy"]))
    assert not candidate(record, "same")["accepted"] and not candidate(record, "lossy")[
        "accepted"]
    assert record["selected"]["name"] == "original" and record["targets_met"] is True
    assert record["verdict"].startswith("Keep your model"), record["verdict"]
    assert "not faster" in record["verdict"] and "accuracy gate" in record["verdict"]
    # an unchanged copy of the model and what sits beside it, never the rest of its folder
    (source.path.parent / "unrelated.bin").write_bytes(b"x")
    assert record["selected"]["sha256"] == before == source.sha256()
    copied = sorted(p.name for p in (out / "model").iterdir())
    assert copied == ["source.onnx", "tokenizer.json"]
    assert record["selected"]["snippet"]


def test_the_original_is_not_kept_when_it_misses_a_target_or_nothing_keeps_accuracy(
        tmp_path, source, data):
    SCRIPT.metric.update(same=82.0, lossy=80.0)
    SCRIPT.trial_speedup.update(same=0.95, lossy=2.0)
    too_slow = optimize(source, settings_for(data, tmp_path / "a", targets=Targets(
        max_latency_ms=BASE_MS / 2)), deps=deps_for(["same"]))
    assert too_slow["selected"] is None and too_slow["targets_met"] is False
    assert too_slow["verdict"].startswith("No candidate passed")
    lossy_only = optimize(source, settings_for(data, tmp_path / "b"), deps=deps_for(["lossy"]))
    assert lossy_only["selected"] is None and not (tmp_path / "b" / "model").exists()

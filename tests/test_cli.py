"""The command line: fast help, clear errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

CLI = [sys.executable, "-m", "leanify.cli"]


def run(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_help_does_not_import_heavy_runtimes():
    code = (
        "import sys\n"
        "from leanify.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'transformers', 'onnx')\n"
        "         if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr
    assert "bench" in proc.stdout


def test_version():
    proc = run("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("leanify ")


def test_info_json_on_minilm():
    proc = run("info", "minilm", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["format"] == "hf"
    assert data["meta"]["task"] == "sentence-embedding"
    assert [i["name"] for i in data["inputs"]][:2] == ["input_ids", "attention_mask"]


def test_usage_errors_exit_2_without_traceback():
    for args in (["bench", "minilm", "--batch-size", "a,b"], ["bench"], ["nonsense"]):
        proc = run(*args)
        assert proc.returncode == 2, args
        assert "Traceback" not in proc.stderr


def test_json_path_in_missing_folder_is_refused_before_work(tmp_path):
    proc = run("bench", "minilm", "--json", str(tmp_path / "nope" / "out.json"))
    assert proc.returncode == 2
    assert "nope" in proc.stderr and "Traceback" not in proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    missing = tmp_path / "missing.onnx"
    plain = run("info", str(missing))
    debug = run("--debug", "info", str(missing))
    assert plain.returncode == debug.returncode == 2
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr
    assert str(missing) in plain.stderr

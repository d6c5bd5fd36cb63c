"""The reproduce command: its dry run, and collecting runs into the results file and tables."""

import json
from pathlib import Path

import pytest

from vcb_utils import baselines, reproduce
from vcb_utils.reproduce import (
    END,
    START,
    collect,
    dry_run,
    main,
    read_results,
    reproduction_table,
    write_readme_table,
)

README = Path(__file__).resolve().parents[1] / "README.md"


def write_metrics(path: Path, r1: float, r5: float, r10: float, postprocessing="none") -> None:
    both = {"R1": r1, "R5": r5, "R10": r10, "MdR": 2.0, "MnR": 12.5}
    metrics = {d: {"both": both, "F": both, "V": both} for d in ("t2v", "v2t")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"metrics": metrics, "postprocessing": postprocessing}))


# ---- dry run -----------------------------------------------------------------------------------
def test_dry_run_prints_every_command_and_says_not_measured(tmp_path):
    (tmp_path / "vatex-clip-b16" / "seed1" / "state").mkdir(parents=True)  # interrupted run
    text = dry_run(
        ["msrvtt-clip-b16", "vatex-clip-b16"], [0, 1], tmp_path, ["--anno_path", "A"],
        gpu_file=tmp_path / "none.json",
    )  # fmt: skip
    lines = text.splitlines()
    assert lines[0].startswith("msrvtt-clip-b16: time and GPU memory: not measured")
    assert lines[1] == (
        "  accelerate launch vcb_utils/train.py --preset msrvtt-clip-b16 --seed 0 "
        f"--output_dir {tmp_path}/msrvtt-clip-b16/seed0 --mixed_precision bf16 --anno_path A"
    )
    assert len(lines) == 6 and lines[3].startswith("vatex-clip-b16: time and GPU memory")
    assert "--seed 1" in lines[5] and "--resume" in lines[5] and "--resume" not in lines[4]


def test_dry_run_shows_a_recorded_gpu_measurement(tmp_path):
    gpu = tmp_path / "preset_gpu.json"
    record = {"device": "NVIDIA H100", "batch": 128, "clips_per_s": 250.0, "peak_gib": 61.2}
    gpu.write_text(json.dumps({"msrvtt-clip-b16": record}))
    text = dry_run(["msrvtt-clip-b16", "msvd-clip-b16"], [0], tmp_path, gpu_file=gpu)
    assert "measured on NVIDIA H100 at batch 128: 250 clips/s (4 s per 1000" in text
    assert "peak 61.2 GiB" in text and "msvd-clip-b16: time and GPU memory: not measured" in text


def test_the_command_line_dry_run(capsys):
    assert (
        main(["--presets", "didemo-siglip-b16", "--seeds", "3", "--dry-run", "--", "--x", "1"]) == 0
    )
    out = capsys.readouterr().out
    assert "--preset didemo-siglip-b16 --seed 3 " in out and out.rstrip().endswith("--x 1")
    with pytest.raises(SystemExit, match="unknown preset"):
        main(["--presets", "msrvtt-clip-b64", "--dry-run"])


# ---- collecting and the tables -----------------------------------------------------------------
def test_collect_averages_seeds_into_the_table(tmp_path):
    root, results = tmp_path / "runs", tmp_path / "results.json"
    write_metrics(root / "msrvtt-clip-b16" / "seed0" / "metrics.json", 48.0, 74.0, 83.0)
    write_metrics(root / "msrvtt-clip-b16" / "seed1" / "metrics.json", 50.0, 75.0, 84.0)
    runs = collect(["msrvtt-clip-b16", "msvd-clip-b16"], [0, 1, 2], root, results)
    assert set(runs) == {"msrvtt-clip-b16"} and set(runs["msrvtt-clip-b16"]) == {"0", "1"}
    assert read_results(results)["msrvtt-clip-b16"]["1"]["t2v"]["MnR"] == 12.5
    table = reproduction_table(results)
    # mean of 48 and 50 is 49.0, sample standard deviation sqrt(2) = 1.4
    row = "| `msrvtt-clip-b16` | 51.0 (A) / – / – | 49.0 ± 1.4 / 74.5 ± 0.7 / 83.5 ± 0.7 (2) |"
    assert row in table
    assert "| `msvd-clip-b16` | 50.2 (A) / – / – | not measured |" in table
    assert "Disputed: `msrvtt-clip-b16` t2v R1 50.0 (D)" in table


def test_collect_keeps_earlier_runs_and_refuses_bad_metrics(tmp_path):
    root, results = tmp_path / "runs", tmp_path / "results.json"
    write_metrics(root / "vatex-clip-b16" / "seed0" / "metrics.json", 60.0, 80.0, 90.0)
    collect(["vatex-clip-b16"], [0], root, results)
    write_metrics(root / "vatex-clip-b16" / "seed1" / "metrics.json", 62.0, 82.0, 92.0)
    collect(["vatex-clip-b16"], [1], root, results)
    assert set(read_results(results)["vatex-clip-b16"]) == {"0", "1"}
    bad = root / "vatex-clip-b16" / "seed2" / "metrics.json"
    write_metrics(bad, 1.0, 2.0, 3.0, postprocessing="dual_softmax")
    with pytest.raises(ValueError, match=f"{bad}: post-processed"):
        collect(["vatex-clip-b16"], [2], root, results)
    bad.write_text('{"metrics": {"t2v": {}}}')
    with pytest.raises(ValueError, match=f"{bad}: not a metrics file"):
        collect(["vatex-clip-b16"], [2], root, results)
    assert set(read_results(results)["vatex-clip-b16"]) == {"0", "1"}  # nothing lost


def test_readme_table_is_replaced_between_the_markers_only(tmp_path):
    readme, results = tmp_path / "README.md", tmp_path / "results.json"
    readme.write_text(f"# title\n\nbefore\n{START}\nold table\n{END}\nafter\n")
    write_readme_table(readme, results)
    text = readme.read_text()
    assert text.startswith(f"# title\n\nbefore\n{START}\n| preset |")
    assert text.endswith(f"{END}\nafter\n") and "old table" not in text
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="needs one line"):
        write_readme_table(readme, results)
    assert readme.read_text() == "no markers\n"


def test_a_run_then_collect_without_training(tmp_path, monkeypatch):
    """main runs each missing (preset, seed) once, then collects it; training is faked."""
    calls = []

    def fake_run(cmd, cwd):
        calls.append(cmd)
        out = Path(cmd[cmd.index("--output_dir") + 1])
        write_metrics(out / "metrics.json", 40.0 + len(calls), 70.0, 80.0)
        return type("Done", (), {"returncode": 0})()

    readme = tmp_path / "README.md"
    readme.write_text(f"{START}\n{END}\n")
    monkeypatch.setattr(reproduce.subprocess, "run", fake_run)
    monkeypatch.setattr(reproduce, "RESULTS_FILE", tmp_path / "results.json")
    monkeypatch.setattr(reproduce, "README", readme)
    args = ["--presets", "msvd-clip-b16", "--seeds", "0", "1", "--root", str(tmp_path / "r")]
    assert main(args) == 0 and main(args) == 0  # the second finds both runs done
    assert len(calls) == 2
    assert "| `msvd-clip-b16` | 50.2 (A) / – / – | 41.5 ± 0.7 / 70.0 ± 0.0" in readme.read_text()


def test_the_readme_shows_the_table_the_results_file_gives():
    assert reproduction_table() in README.read_text()


# ---- baselines ---------------------------------------------------------------------------------
def write_baseline_run(folder: Path, scores: dict[str, float], epochs: int | None) -> None:
    """A finished baseline run: ``metrics.json`` with these R@1 per score, and its last config."""
    metrics = {
        d: {s: {"R1": r1, "R5": r1 + 10, "R10": r1 + 20, "MdR": 3.0, "MnR": 9.0}
            for s, r1 in scores.items()}
        for d in ("t2v", "v2t")
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"metrics": metrics}))
    if epochs is not None:
        (folder / "last").mkdir()
        (folder / "last" / "config.json").write_text(json.dumps({"train": {"epochs": epochs}}))


def table_rows(table: str) -> dict[tuple[str, str], list[str]]:
    """(backbone, baseline) -> the other cells of each row of a markdown table."""
    rows = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| `"):
            rows[cells[0], cells[1]] = cells[2:]
    return rows


def test_baseline_table_from_the_runs_keeps_the_paper_runs(tmp_path):
    root, results = tmp_path / "runs", tmp_path / "results.json"
    results.write_text(json.dumps({"runs": {"msvd-clip-b16": {"0": "kept"}}}))
    write_baseline_run(root / "tiny" / "zero-shot", {"mean": 1.0, "maxsim": 2.0}, None)
    write_baseline_run(root / "tiny" / "F", {"both": 60.0}, 4)
    write_baseline_run(root / "tiny-siglip" / "both", {"both": 70.5, "F": 1.0, "V": 2.0}, 10)
    baselines.collect(["tiny", "tiny-siglip"], root, results)
    assert read_results(results) == {"msvd-clip-b16": {"0": "kept"}}  # the other section stays
    table = baselines.baseline_table(results)
    rows = table_rows(table)
    assert len(rows) == 14  # 2 backbones x 7 rows
    tiny, siglip = "`vcb-tiny`", "`vcb-tiny-siglip`"
    mean = rows[tiny, "zero-shot, mean-pooled frames (CLIP4Clip's zero-shot)"]
    assert mean == ["1.0 / 11.0 / 21.0", "3", "–", "`--preset msrvtt-clip-b16 --zero_shot`"]
    maxsim = rows[tiny, "zero-shot, MeanMaxSim of the real tokens over frames"]
    assert maxsim[:3] == ["2.0 / 12.0 / 22.0", "3", "–"]
    f_only = rows[tiny, "F only (`--mode F`)"]
    assert f_only == ["60.0 / 70.0 / 80.0", "3", "4", "`--preset msrvtt-clip-b16 --mode F`"]
    v_only = rows[tiny, "V only (`--mode V`)"]
    assert v_only == ["not measured", "–", "–", "`--preset msrvtt-clip-b16 --mode V`"]
    both = rows[siglip, "both branches (the method)"]  # the model's total, then its branches
    assert both == ["70.5 / 80.5 / 90.5", "3", "10", "`--preset msrvtt-siglip-b16`"]
    assert rows[siglip, "both, its V score alone"][0] == "2.0 / 12.0 / 22.0"
    assert "chance level" in table and "Synthetic test split (100 videos)" in table


def test_baseline_runs_refuse_what_they_cannot_read(tmp_path):
    root, results = tmp_path / "runs", tmp_path / "results.json"
    write_baseline_run(root / "tiny" / "V", {"both": 50.0}, None)  # trained, but no config
    with pytest.raises(ValueError, match="last/config.json"):
        baselines.collect(["tiny"], root, results)
    (root / "tiny" / "V" / "metrics.json").write_text('{"metrics": {"t2v": []}}')
    with pytest.raises(ValueError, match="not a metrics file"):
        baselines.collect(["tiny"], root, results)
    assert not results.exists()


def test_the_baseline_command_runs_what_is_missing_then_the_table(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, cwd):
        calls.append(cmd)
        out = Path(cmd[cmd.index("--output_dir") + 1])
        zero = "--zero_shot" in cmd
        scores = {"mean": 1.0, "maxsim": 1.0} if zero else {"both": 50.0}
        write_baseline_run(out, scores, None if zero else int(cmd[cmd.index("--epochs") + 1]))
        return type("Done", (), {"returncode": 0})()

    readme = tmp_path / "README.md"
    readme.write_text(f"top\n{baselines.START}\nold\n{baselines.END}\nend\n")
    monkeypatch.setattr(baselines.subprocess, "run", fake_run)
    monkeypatch.setattr(baselines, "RESULTS_FILE", tmp_path / "results.json")
    monkeypatch.setattr(baselines, "README", readme)
    args = ["--presets", "tiny", "--epochs", "2", "--root", str(tmp_path / "r")]
    assert baselines.main(args) == 0 and baselines.main(args) == 0  # the second runs nothing
    runs = [Path(c[c.index("--output_dir") + 1]).name for c in calls]
    assert runs == ["zero-shot", "F", "V", "both"]
    assert calls[1][4:6] == ["--mode", "F"] and "--mode" not in calls[3]
    assert all(("--epochs" in c) != ("--zero_shot" in c) for c in calls)
    text = readme.read_text()
    assert text.startswith(f"top\n{baselines.START}\n| backbone |") and "old" not in text
    assert "| `vcb-tiny` | V only (`--mode V`) | 50.0 / 60.0 / 70.0 | 3 | 2 |" in text


def test_the_readme_shows_the_baseline_table_the_results_file_gives():
    assert baselines.baseline_table() in README.read_text()

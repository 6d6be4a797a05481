"""The grid of runs spread by torchrun: layout, results, same run as alone, faults and restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli import run_cli, wait_for_epochs
from paths import ROOT
from runs import metrics, same_weights

from mnist_cnn import runformat

pytestmark = pytest.mark.slow
GRID = ["--learning_rate", "1e-3", "5e-4", "--seed", "0", "1", "--epoch", "8", "--batch_size", "64"]
RUNS = ["seed0/lr_1e-3", "seed0/lr_5e-4", "seed1/lr_1e-3", "seed1/lr_5e-4"]


def torchrun(*args: str, restarts: int = 0) -> subprocess.Popen:
    """Start `torchrun --standalone --nproc_per_node 2 main.py ARGS` on the CPU."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--max-restarts",
        str(restarts),
        str(ROOT / "main.py"),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory, medium_data: Path) -> Path:
    """An uninterrupted 2-rate x 2-seed grid trained by two torchrun workers."""
    out = tmp_path_factory.mktemp("grid") / "grid"
    proc = torchrun(*GRID, "--data_dir", str(medium_data), "--out_dir", str(out))
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return out


def test_grid_writes_four_runs_and_statistics(grid: Path) -> None:
    for run in RUNS:
        folder = grid / run
        assert {"model.pth", "model.log", "metrics.csv", "figure.png"} <= {
            p.name for p in folder.iterdir()
        }
        assert len(runformat.read_metrics_csv(folder / "metrics.csv")) == 8
        assert (
            "command: torchrun --nnodes 1 --nproc_per_node 2 main.py"
            in (folder / "model.log").read_text()
        )
    results = (grid / "results.md").read_text()
    over_seeds = results.split("## Over seeds")[1]
    # the note and one mean ± sd per rate and rule: 2 rates x 3 rules
    assert over_seeds.split("Paired by seed")[0].count(" ± ") == 1 + 2 * 3
    assert over_seeds.count("| test acc | 0.001 − 0.0005 | 2 |") == 3  # one row per rule
    assert "## Claims" in results and "## Training dynamics" in results
    assert (grid / "compare.png").stat().st_size > 0


def test_a_run_of_the_grid_equals_the_same_run_trained_alone(
    grid: Path, medium_data: Path, tmp_path: Path
) -> None:
    result = run_cli(
        "--learning_rate",
        "5e-4",
        "--seed",
        "1",
        *GRID[6:],
        "--data_dir",
        str(medium_data),
        "--out_dir",
        str(tmp_path / "alone"),
        env={"OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert same_weights(tmp_path / "alone" / "model.pth", grid / "seed1" / "lr_5e-4" / "model.pth")
    assert metrics(tmp_path / "alone") == metrics(grid / "seed1" / "lr_5e-4")


def test_a_killed_worker_is_restarted_and_the_grid_ends_with_the_same_weights(
    grid: Path, medium_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "grid"
    proc = torchrun(*GRID, "--data_dir", str(medium_data), "--out_dir", str(out), restarts=1)
    victim = out / "seed0" / "lr_5e-4"  # rank 1's first run
    wait_for_epochs(victim, 2, proc)
    pid = int((victim / ".lock").read_text())
    os.kill(pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert "resuming after epoch" in stdout
    for run in RUNS:
        assert same_weights(out / run / "model.pth", grid / run / "model.pth"), run
        assert metrics(out / run) == metrics(grid / run)
    assert (out / "results.md").is_file()


def test_sigterm_stops_every_worker_and_the_printed_command_resumes_the_grid(
    grid: Path, medium_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "grid"
    args = [*GRID, "--data_dir", str(medium_data), "--out_dir", str(out)]
    proc = torchrun(*args)
    wait_for_epochs(out / "seed0" / "lr_1e-3", 2, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in stdout
    resume = f"torchrun --nnodes 1 --nproc_per_node 2 main.py {' '.join(args)} --resume"
    assert resume in stdout
    assert not (out / "results.md").exists()
    proc = torchrun(*args, "--resume")
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    for run in RUNS:
        assert same_weights(out / run / "model.pth", grid / run / "model.pth"), run


def grid_of(seeds: int, data: Path, out: Path, *extra: str) -> subprocess.Popen:
    """A one-rate grid of `seeds` seeds on the tiny data, under an open-file limit of 256."""
    import resource

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    command = [sys.executable, str(ROOT / "main.py"), "--epoch", "1", "--limit", "100"]
    command += ["--figure", "false", "--seed", *map(str, range(seeds))]
    command += ["--data_dir", str(data), "--out_dir", str(out), *extra]
    return subprocess.Popen(
        command, preexec_fn=low_limit, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finished(out: Path) -> dict[str, bytes]:
    """The grid's finished runs: folder -> its metrics.csv."""
    return {str(p.parent): p.read_bytes() for p in out.glob("seed*/lr_1e-3/metrics.csv")}


def stop_after(proc: subprocess.Popen, out: Path, runs: int) -> str:
    """SIGTERM once `runs` runs have finished; what the grid printed."""
    while len(finished(out)) < runs:
        assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    said, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    return said + err


def test_a_2000_run_grid_needs_few_open_files_makes_folders_in_turn_and_resumes(
    tiny_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "grid"
    said = stop_after(grid_of(2000, tiny_data, out), out, 3)
    folders = list(out.glob("seed*"))
    assert 3 <= len(folders) <= 5  # made in their turn, not 2,000 up front
    assert all(set(os.listdir(f / "lr_1e-3")) - {".lock"} for f in folders)  # none lock-only
    script = out / "resume.sh"
    # not a 9 KB line; "Resume with" where the signal came within a run, else "resume with"
    assert said.rstrip().endswith(f"esume with:\n  bash {script}")
    assert script.read_text().rstrip().endswith("--resume")
    before = finished(out)
    resumed = grid_of(2000, tiny_data, out, "--resume")
    stop_after(resumed, out, len(before) + 2)
    after = finished(out)
    assert {k: after[k] for k in before} == before  # finished runs are not trained again
    assert all(set(os.listdir(f / "lr_1e-3")) - {".lock"} for f in out.glob("seed*"))


def test_a_job_array_of_run_indices_trains_the_torchrun_grid_run_for_run(
    medium_data: Path, tmp_path: Path
) -> None:
    """Every index of a 3 x 2 grid as its own process, two at a time in a shuffled order, as a
    job array's tasks run, then --summarize: the weights and results.md of the torchrun grid."""
    grid = ["--learning_rate", "1e-3", "5e-4", "1e-4", "--seed", "0", "1", "--epoch", "2"]
    grid += ["--batch_size", "64", "--data_dir", str(medium_data)]
    whole = torchrun(*grid, "--out_dir", str(tmp_path / "torchrun"))
    _, err = whole.communicate(timeout=600)  # read as it runs: a full pipe would block it
    assert whole.returncode == 0, err[-3000:]
    array = tmp_path / "array"
    listed = run_cli(*grid, "--out_dir", str(array), "--list_runs")
    assert (
        listed.stdout.splitlines()[-1] == "6 runs: a job array of indices 0-5 (sbatch --array=0-5)"
    )
    order = [4, 1, 5, 0, 3, 2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    for pair in (order[:2], order[2:4], order[4:]):
        tasks = [
            subprocess.Popen(
                [sys.executable, str(ROOT / "main.py"), *grid, "--out_dir", str(array)]
                + ["--run_index", str(k)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for k in pair
        ]
        for task in tasks:
            assert task.wait(timeout=300) == 0, task.communicate()[1]
    assert not (array / "results.md").exists()  # a task trains its run, nothing more
    again = run_cli(*grid, "--out_dir", str(array), "--run_index", "3")  # a requeued task
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
    assert run_cli("--summarize", str(array), "--out_dir", str(array)).returncode == 0
    for line in listed.stdout.splitlines()[:-1]:
        folder = Path(line.split()[1]).relative_to(array)
        assert same_weights(
            tmp_path / "torchrun" / folder / "model.pth", array / folder / "model.pth"
        )
    assert (array / "results.md").read_text() == (tmp_path / "torchrun" / "results.md").read_text()

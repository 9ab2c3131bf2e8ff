"""Sweeps on other Hydra launchers: Ray (run for real, on CPU) and SLURM (rendered, no cluster here)."""

import os
import stat

import pytest

from conftest import COMMANDS, REPO, SAFETY_TIMEOUT_S, TEMPORAL, THREADS, run_qvedit

pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="pip install -e .[distributed]")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e .[distributed]")

# Two jobs: the acceptance demo sweep's unguided ones (made once per session by Hydra's own launcher). CPU
# frames depend on the thread count (summation order): Ray would give each job num_cpus threads, so its jobs
# get those the local sweep ran with.
SWEEP = ["-m", *[arg for arg in COMMANDS["acceptance_demo_sweep"][0] if arg != "-m"], "ttlg=off"]


def job_frames(sweep_dir):
    """{job folder name: [frame bytes...]} of a finished sweep."""
    return {job.name: [p.read_bytes() for p in sorted((job / "frames").glob("*.png"))]
            for job in sorted(sweep_dir.iterdir()) if (job / ".hydra").is_dir()}


@pytest.mark.xdist_group("acceptance_demo_sweep")  # on the worker that made the local sweep
def test_ray_sweep_runs_jobs_as_ray_tasks_and_matches_the_local_launcher(tmp_path, made):
    ray_dir = tmp_path / "ray"
    local_dir, _ = made("acceptance_demo_sweep")  # the same jobs (and the guided ones), on the basic launcher
    result = run_qvedit(*SWEEP, "hydra/launcher=ray", "hydra.launcher.ray.init.num_cpus=2",
                        "hydra.launcher.ray.remote.num_gpus=0", f"hydra.sweep.dir={ray_dir}",
                        timeout=SAFETY_TIMEOUT_S, env={"RAY_DEDUP_LOGS": "0", **THREADS})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Ray Launcher is launching 2 jobs" in result.stdout + result.stderr
    # Each job ran in a Ray worker process (Ray prefixes their output with the task name and pid).
    assert "(_run_job pid=" in result.stdout + result.stderr
    assert "qvedit.models.loading" in result.stdout + result.stderr
    assert not (tmp_path / "runs").exists()
    assert (ray_dir / "acceptance.md").is_file() and (ray_dir / "acceptance.csv").is_file()
    report = (ray_dir / "acceptance.md").read_text()
    assert all(f"{job.name} |" in report for job in ray_dir.glob("*_seed=*"))

    ray_frames, local_frames = job_frames(ray_dir), job_frames(local_dir)
    first, second = sorted(ray_frames)
    assert first.startswith("0_") and first.endswith("seed=0,ttlg=off") and second.endswith("seed=1,ttlg=off")
    assert all(len(frames) == 3 for frames in ray_frames.values())
    # same config, same bytes, whichever launcher ran it
    assert ray_frames == {name: local_frames[name] for name in ray_frames}
    assert ray_frames[first][1] != ray_frames[second][1]


def fake_slurm_bin(folder, script_copy):
    """``srun`` (submitit checks it is there) and an ``sbatch`` that keeps the script and refuses the job."""
    folder.mkdir()
    scripts = {
        "srun": "#!/bin/sh\nexit 0\n",
        "sbatch": f"#!/bin/sh\ncp \"$1\" '{script_copy}'\necho 'sbatch: error: test cluster takes no jobs' >&2\n"
                  "exit 1\n",
    }
    for name, text in scripts.items():
        (folder / name).write_text(text)
        (folder / name).chmod(stat.S_IRWXU)
    return folder


def test_slurm_preset_renders_the_submission_parameters(tmp_path):
    script = tmp_path / "submitted.sh"
    bin_dir = fake_slurm_bin(tmp_path / "bin", script)
    sweep_dir = tmp_path / "sweep"
    result = run_qvedit(*SWEEP, "hydra/launcher=slurm", "hydra.launcher.partition=gpu-h100",
                        "hydra.launcher.gpus_per_node=2", "hydra.launcher.timeout_min=90",
                        "hydra.launcher.setup=[module load cuda]", "hydra.launcher.array_parallelism=1",
                        f"hydra.sweep.dir={sweep_dir}",
                        timeout=SAFETY_TIMEOUT_S, env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode != 0  # the fake sbatch refused the array
    assert "test cluster takes no jobs" in result.stdout + result.stderr
    text = script.read_text()
    for line in ("#SBATCH --partition=gpu-h100", "#SBATCH --gpus-per-node=2", "#SBATCH --time=90",
                 "#SBATCH --job-name=qvedit", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64GB",
                 "#SBATCH --array=0-1%1", "#SBATCH --ntasks-per-node=1", "module load cuda"):
        assert line in text, f"{line!r} not in the sbatch script:\n{text}"
    assert f"{sweep_dir}/.submitit/" in text
    assert "submitit.core._submit" in text
    assert not any(sweep_dir.glob("*/frames"))  # nothing ran


def test_slurm_preset_defaults_compose():
    result = run_qvedit("hydra/launcher=slurm", "--cfg", "hydra", "--package", "hydra.launcher", timeout=SAFETY_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    for line in ("partition: null", "gpus_per_node: 1", "timeout_min: 240", "name: qvedit",
                 "_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"):
        assert line in result.stdout


def test_ray_preset_gives_each_job_one_gpu_and_no_deprecation_notice():
    result = run_qvedit("hydra/launcher=ray", "--cfg", "hydra", "--package", "hydra.launcher", timeout=SAFETY_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    assert "_target_: hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher" in result.stdout
    assert "num_gpus: 1" in result.stdout.split("remote:")[1]
    assert "address: null" in result.stdout
    assert "deprecated" not in result.stderr


def test_a_ray_sweep_that_could_never_start_is_refused_before_ray_starts(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_qvedit("-m", "experiment=tiny_cpu", "io=demo", "hydra/launcher=ray", "seed=0,1",
                        f"hydra.sweep.dir={sweep_dir}",
                        env={"CUDA_VISIBLE_DEVICES": ""}, timeout=SAFETY_TIMEOUT_S)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "qvedit: error: each Ray job asks for hydra.launcher.ray.remote.num_gpus=1 GPU(s) but the local Ray has 0")
    assert "Traceback" not in result.stderr and not sweep_dir.exists()


def test_ray_gpu_shortfall_counts_the_gpus_ray_may_hand_out():
    from omegaconf import OmegaConf

    from qvedit.cli.launcher_checks import ray_gpu_shortfall

    def launcher(init, remote):
        return OmegaConf.create({"ray": {"init": {"address": None, **init}, "remote": remote}})

    assert ray_gpu_shortfall(launcher({"num_gpus": None}, {"num_gpus": 1}), visible_gpus=2) is None
    assert "has 0" in ray_gpu_shortfall(launcher({"num_gpus": 0}, {"num_gpus": 1}), visible_gpus=2)
    assert "has 1" in ray_gpu_shortfall(launcher({"num_gpus": None}, {"num_gpus": 2}), visible_gpus=1)
    assert ray_gpu_shortfall(launcher({}, {"num_gpus": 0}), visible_gpus=0) is None
    assert ray_gpu_shortfall(launcher({"address": "auto"}, {"num_gpus": 1}), visible_gpus=0) is None
    assert ray_gpu_shortfall(OmegaConf.create({"timeout_min": 60}), visible_gpus=0) is None  # SLURM: not ours


FAKE_SLURM = {  # a cluster of one machine: enough of sbatch, srun, scontrol and sacct for submitit
    "sbatch": '''
import os, re, shutil, subprocess, sys
from pathlib import Path
state = Path(os.environ["FAKE_SLURM"])
script = state / "job.sh"
shutil.copy(sys.argv[-1], script)
array = re.search(r"#SBATCH --array=0-(\\d+)", script.read_text())
for task in range(int(array.group(1)) + 1) if array else [""]:  # one job: no array
    subprocess.Popen([sys.executable, str(state / "bin" / "run_task"), str(task), "0"], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # sbatch returns now
print("Submitted batch job 4242")
''',
    "run_task": '''
import os, subprocess, sys, time
from pathlib import Path
state, task, after = Path(os.environ["FAKE_SLURM"]), sys.argv[1], int(sys.argv[2])
while after:  # a requeued job starts once the process it replaces has ended
    try:
        os.kill(after, 0)
        time.sleep(0.1)
    except ProcessLookupError:
        break
env = dict(os.environ, SLURM_JOB_ID="4242", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_NTASKS="1",
           SLURM_JOB_NUM_NODES="1", SLURM_JOB_NODELIST="localhost", FAKE_SLURM_TASK=task)
if task:
    env.update(SLURM_JOB_ID=str(5000 + int(task)), SLURM_ARRAY_JOB_ID="4242", SLURM_ARRAY_TASK_ID=task)
with open(state / f"task{task}.log", "a") as log:
    subprocess.run(["bash", str(state / "job.sh")], env=env, stdout=log, stderr=log)
''',
    "srun": '''
import os, sys
from pathlib import Path
args = sys.argv[1:]
while args[0].startswith("--"):
    args = args[2:] if args[0] in ("--output", "--error") else args[1:]
with open(Path(os.environ["FAKE_SLURM"]) / f"task{os.environ['FAKE_SLURM_TASK']}.pids", "a") as pids:
    pids.write(f"{os.getpid()}\\n")
os.execvp(args[0], args)  # the job keeps this process id
''',
    "scontrol": '''
import os, subprocess, sys
from pathlib import Path
state = Path(os.environ["FAKE_SLURM"])
with open(state / "requeued", "a") as requeued:
    requeued.write(" ".join(sys.argv[1:]) + "\\n")
subprocess.Popen([sys.executable, str(state / "bin" / "run_task"), os.environ["FAKE_SLURM_TASK"], str(os.getppid())],
                 start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
''',
    "sacct": 'print("JobID|State|NodeList")',
}


@pytest.mark.xdist_group("temporal")  # on the worker that made the uninterrupted clip
def test_a_preempted_slurm_job_is_requeued_into_the_same_folder_and_resumes_to_the_same_frames(tmp_path, made):
    """submitit's preemption signal mid-clip: the job checkpoints (the plugin's checkpoint() gives the same
    job again), asks SLURM to requeue it and exits; the requeued job runs in the same job folder, even
    though the sweep folder's name holds the time to the microsecond, and resumes from its last frame."""
    import re
    import signal
    import subprocess
    import sys
    import time

    state = tmp_path / "slurm"
    (state / "bin").mkdir(parents=True)
    for name, code in FAKE_SLURM.items():
        (state / "bin" / name).write_text(f"#!{sys.executable}\n{code}")
        (state / "bin" / name).chmod(stat.S_IRWXU)
    clip = TEMPORAL  # guided frames: slow enough that the preemption comes mid-clip
    whole, _ = made("temporal")  # the same clip made without interruption (read only)
    env = dict(os.environ, PATH=f"{state / 'bin'}{os.pathsep}{os.environ['PATH']}", FAKE_SLURM=str(state),
               PYTHONUNBUFFERED="1")
    driver = subprocess.Popen([sys.executable, "-m", "qvedit", "-m", *clip, "seed=0", "hydra/launcher=slurm",
                               f"hydra.sweep.dir={tmp_path}/sweep/" + "${now:%H-%M-%S-%f}"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "sweep").glob("*/0_*/frames/00003.png")):
            if driver.poll() is not None or time.monotonic() > deadline:
                driver.kill()  # its output is whole only once it has ended
                job_log = (state / "task.log").read_text()[-3000:] if (state / "task.log").is_file() else ""
                pytest.fail(f"the job made no frame 3:\n{driver.communicate()[0][-3000:]}\n{job_log}")
            time.sleep(0.05)
        job_pid = int((state / "task.pids").read_text().split()[0])
        os.kill(job_pid, signal.SIGUSR2)  # SLURM's word that the job is preempted (submitit's signal)
        output, _ = driver.communicate(timeout=SAFETY_TIMEOUT_S)
    finally:
        driver.kill()
    assert driver.returncode == 0, output[-3000:]
    log = (state / "task.log").read_text()
    assert (state / "requeued").read_text().split() == ["requeue", "4242"], log[-3000:]
    assert "this job is preempted" in log and re.search(r"resuming at frame [3-8]", log), log[-3000:]
    assert len((state / "task.pids").read_text().split()) == 2  # the job ran twice
    (sweep,) = (tmp_path / "sweep").iterdir()
    (job,) = [p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert job.name.startswith("0_") and "seed=0" in job.name.split(",")
    frames = sorted(p.name for p in (job / "frames").glob("*.png"))
    assert frames == sorted(p.name for p in (whole / "frames").glob("*.png")) and len(frames) == 9
    for name in frames:
        assert (job / "frames" / name).read_bytes() == (whole / "frames" / name).read_bytes(), name
    rows = (job / "metrics.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == [str(i) for i in range(1, 9)]

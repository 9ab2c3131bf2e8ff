"""Context-parallel runs: the settings' checks, and the rank-0-decides plumbing on a CPU process group.

Diffusers' context parallelism itself needs CUDA GPUs (benchmarks/context_parallel.py checks it on
two H100s against one). Here two gloo processes run the whole editor as torchrun ranks would,
without splitting the transformer: what is tested is that rank 0's resume point, guidance steps
and frames are what every rank uses, and that only rank 0 writes.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from conftest import REPO, SAFETY_TIMEOUT_S, TEMPORAL, THREADS, run_qvedit
from qvedit.core.errors import QveditError
from qvedit.core.torchrun_ranks import follower_overrides
from qvedit.models.parallel import Team, start_team
from qvedit.run.config_values import check_values
from qvedit.settings.model import ParallelSettings

CLIP = ["experiment=tiny_cpu", "io=demo", "ttlg=edge_gram", "ttlg.last_steps=3"]


def compose(*overrides):
    from hydra import compose as hydra_compose, initialize_config_dir

    from qvedit.settings.schema import register_schemas

    register_schemas()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=[*CLIP, *overrides])


def join(rank: int, rendezvous: Path) -> Team:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    return Team(rank=rank, size=2)


def plumbing_worker(rank: int, rendezvous: Path, out: Path) -> None:
    team = join(rank, rendezvous)
    try:
        assert team.broadcast({"rank": rank}) == {"rank": 0}
        latents = torch.full((1, 4, 3), float(rank))

        def guidance(pipe, step, timestep, tensors):
            return {"latents": tensors["latents"] + 10}  # rank 0's guidance step

        callback = team.step_callback(guidance if rank == 0 else None)
        result = callback(None, 0, 0, {"latents": latents})["latents"]
        torch.save(result, out / f"latents{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_rank0_guidance_and_values_reach_every_rank(tmp_path):
    mp.start_processes(plumbing_worker, args=(tmp_path / "rendezvous", tmp_path), nprocs=2, start_method="spawn")
    for rank in (0, 1):
        assert torch.equal(torch.load(tmp_path / f"latents{rank}.pt"), torch.full((1, 4, 3), 10.0))


def editor_worker(rank: int, rendezvous: Path, shared: Path) -> None:
    from qvedit.run.job import Job
    from qvedit.run.job_settings import job_settings

    torch.set_num_threads(1)
    team = join(rank, rendezvous)
    try:
        cfg = compose("max_frames=4", f"io.out_frames_dir={shared / 'frames'}")
        Job.prepare(job_settings(cfg), shared / f"run{rank}", team).run()
    finally:
        dist.destroy_process_group()


@pytest.mark.long
def test_a_team_resumes_from_rank0s_frames_and_only_rank0_writes(tmp_path):
    from qvedit.run.job import run

    torch.set_num_threads(1)
    whole = run(compose("max_frames=4", f"io.out_frames_dir={tmp_path / 'whole'}"), tmp_path / "whole_run").frames_dir
    # Rank 0's folder already holds frames 0..1 (an interrupted run); rank 1 has none of them.
    run(compose("max_frames=2", f"io.out_frames_dir={tmp_path / 'shared' / 'frames'}"), tmp_path / "shared" / "run0")
    mp.start_processes(editor_worker, args=(tmp_path / "rendezvous", tmp_path / "shared"), nprocs=2,
                       start_method="spawn")

    frames = sorted((tmp_path / "shared" / "frames").glob("*.png"))
    assert [p.name for p in frames] == [p.name for p in sorted(whole.glob("*.png"))]
    assert all(p.read_bytes() == (whole / p.name).read_bytes() for p in frames)
    rows = (tmp_path / "shared" / "run0" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("frame,hops,edge_loss") and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    assert (tmp_path / "shared" / "run0" / "preview.gif").is_file()
    follower = tmp_path / "shared" / "run1"
    assert not (follower / "preview.gif").exists()  # rank 1 wrote nothing of the run's outputs
    assert "edge_loss" not in (follower / "metrics.csv").read_text()


def test_degrees_must_match_the_torchrun_process_count(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert start_team(ParallelSettings(), "cpu").size == 1
    with pytest.raises(QveditError, match="torchrun --nproc-per-node 2"):
        start_team(ParallelSettings(ulysses_degree=2), "cuda")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(QveditError, match="torchrun started 4 processes but the parallel.* degrees multiply to 2"):
        start_team(ParallelSettings(ring_degree=2), "cuda")
    with pytest.raises(QveditError, match="multiply to 1"):
        start_team(ParallelSettings(), "cuda")
    with pytest.raises(QveditError, match="out of range: use an integer >= 1"):
        check_values(OmegaConf.create({"parallel": {"ulysses_degree": 0}}))
    with pytest.raises(QveditError, match="device=cpu: context parallelism"):
        start_team(ParallelSettings(ulysses_degree=2, ring_degree=2), "cpu")
    with pytest.raises(QveditError, match="torchrun started 4 processes but the parallel.* degrees multiply to 2"):
        start_team(ParallelSettings(cfg_degree=2), "cuda")
    assert ParallelSettings(cfg_degree=2, ulysses_degree=2).conflict(4.0) is None  # a pair of GPUs per CFG pass
    with pytest.raises(QveditError, match="device=cpu: context parallelism"):
        start_team(ParallelSettings(cfg_degree=2, ulysses_degree=2), "cpu")


def test_cfg_parallelism_is_refused_where_it_cannot_work():
    with pytest.raises(QveditError, match="from 1 to 2"):
        check_values(OmegaConf.create({"parallel": {"cfg_degree": 3}}))
    assert "raise true_cfg_scale above 1" in ParallelSettings(cfg_degree=2).conflict(1.0)


@pytest.mark.xdist_group("temporal")  # on the worker that made the single-process clip
def test_cfg_parallel_torchrun_on_two_cpu_processes_gives_the_single_process_frames(tmp_path, made):
    single, _ = made("temporal")  # the clip made by one process (read only)
    team = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "qvedit",
         *TEMPORAL, "max_frames=4", "parallel.cfg_degree=2", f"hydra.run.dir={tmp_path / 'team'}"],
        cwd=REPO, capture_output=True, text=True, timeout=SAFETY_TIMEOUT_S,
        env=dict(os.environ, PYTHONUNBUFFERED="1", TMPDIR=str(tmp_path), **THREADS))  # CPU sums depend on threads
    assert team.returncode == 0, team.stderr[-3000:]
    assert "CFG parallelism" in team.stdout + team.stderr
    frames = sorted((tmp_path / "team" / "frames").glob("*.png"))
    assert len(frames) == 4  # a clip's first frames do not depend on how many follow
    assert all(p.read_bytes() == (single / "frames" / p.name).read_bytes() for p in frames)
    metrics = (tmp_path / "team" / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 4 and metrics[0].startswith("frame,hops,edge_loss")
    # rank 1 ran in a scratch folder under TMPDIR, removed at its exit
    assert not any(p.name.startswith("qvedit-rank") for p in tmp_path.rglob("*"))


def test_only_rank0_keeps_a_run_folder(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    assert follower_overrides() == ([], None)
    monkeypatch.setenv("RANK", "1")
    overrides, scratch = follower_overrides()
    try:
        assert f"hydra.run.dir={scratch}" in overrides and "hydra.output_subdir=null" in overrides
        assert scratch.is_dir() and "rank1" in scratch.name
    finally:
        scratch.rmdir()


def test_cli_names_torchrun_when_degrees_ask_for_processes(tmp_path):
    result = run_qvedit(*CLIP, "parallel.ulysses_degree=2", f"hydra.run.dir={tmp_path / 'run'}",
                        env={"WORLD_SIZE": "1"}, timeout=SAFETY_TIMEOUT_S)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "qvedit: error: parallel.* degrees ask for 2 processes, but this is one process: "
        "start it with torchrun --nproc-per-node 2 -m qvedit ...")
    assert "Traceback" not in result.stderr


@pytest.mark.long
def test_cfg_parallel_with_warped_noise_and_a_part_way_start_gives_the_single_process_frames(tmp_path):
    """Rank 0 alone has the flow: it makes each frame's start (warped noise, the warped previous frame encoded and
    noised) and every rank takes it, so the team's frames are the single process's."""
    clip = [*TEMPORAL, "start=warped_previous", "max_frames=3"]
    single = run_qvedit(*clip, f"hydra.run.dir={tmp_path / 'single'}", env=THREADS)
    assert single.returncode == 0, single.stderr[-3000:]
    team = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "qvedit",
         *clip, "parallel.cfg_degree=2", f"hydra.run.dir={tmp_path / 'team'}"],
        cwd=REPO, capture_output=True, text=True, timeout=SAFETY_TIMEOUT_S,
        env=dict(os.environ, PYTHONUNBUFFERED="1", TMPDIR=str(tmp_path), **THREADS))
    assert team.returncode == 0, team.stderr[-3000:]
    frames = sorted((tmp_path / "team" / "frames").glob("*.png"))
    assert len(frames) == 3
    assert all(p.read_bytes() == (tmp_path / "single" / "frames" / p.name).read_bytes() for p in frames)

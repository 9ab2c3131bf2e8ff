"""Every adaptation of diffusers internals still holds, and a broken one is named loudly.

The behaviour each adaptation gives is tested where it is used (condition area and seeding in
test_editor.py, the decode path and x0 in test_guidance.py, CFG passes in test_parallel.py); these
tests check the assumptions themselves against the installed diffusers.
"""

import logging

import pytest

from qvedit.models import diffusers_compat as compat
from qvedit.settings.run import PIPELINE_CONDITION_AREA


@pytest.mark.parametrize("adaptation", compat.ADAPTATIONS, ids=[a.name for a in compat.ADAPTATIONS])
def test_the_assumption_holds_on_the_installed_diffusers(adaptation):
    problem = adaptation.check()
    assert problem is None, (f"diffusers changed under the adaptation {adaptation.name!r} ({adaptation.used_by}), "
                             f"which relies on: {adaptation.relies_on}. What changed: {problem}. Rewrite it in "
                             "qvedit/models/diffusers_compat/")


def test_condition_area_default_is_the_pipelines_own():
    assert compat.pipeline_condition_area() == PIPELINE_CONDITION_AREA


def test_a_vanished_constant_is_reported_by_name(monkeypatch):
    monkeypatch.delattr(compat._pipeline_module(), "VAE_IMAGE_SIZE")
    broken = dict((a.name, problem) for a, problem in compat.broken_adaptations())
    assert list(broken) == ["condition_area"] and "VAE_IMAGE_SIZE" in broken["condition_area"]


def test_a_changed_denoising_loop_is_reported_by_name(monkeypatch):
    source = compat._call_source().replace('cache_context("uncond")', 'cache_context("negative")')
    monkeypatch.setattr(compat, "_call_source", lambda: source)
    broken = dict((a.name, problem) for a, problem in compat.broken_adaptations())
    assert list(broken) == ["CFGPasses"] and "uncond" in broken["CFGPasses"]


def test_another_diffusers_version_warns_once_naming_the_adaptations(monkeypatch, caplog):
    import diffusers

    with caplog.at_level(logging.WARNING, logger=compat.__name__):
        assert not compat.warn_if_untested_diffusers()
        monkeypatch.setattr(diffusers, "__version__", "0.99.0")
        assert compat.warn_if_untested_diffusers()
    (record,) = caplog.records
    assert "diffusers 0.99.0 is not the version qvedit was tested with (0.42.1)" in record.getMessage()
    assert all(a.name in record.getMessage() for a in compat.ADAPTATIONS)


def test_the_tested_version_is_the_pinned_one():
    import tomllib

    from tests.conftest import REPO

    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"diffusers=={compat.TESTED_DIFFUSERS}" in [d.split("#")[0].strip() for d in dependencies]


def test_group_offloading_without_the_record_stream_fix_is_reported(monkeypatch):
    """diffusers 0.35.2 recorded the tensors it copied on the transfer stream (issue 12673: Qwen-Image came
    out as garbage under streamed group offloading with record_stream); 0.36.0 has the fix (PR 12721)."""
    from diffusers.hooks.group_offloading import ModuleGroup

    def _transfer_tensor_to_device(self, tensor, source_tensor):  # diffusers 0.35.2
        tensor.data = source_tensor.to(self.onload_device, non_blocking=self.non_blocking)
        if self.record_stream:
            tensor.data.record_stream(self._torch_accelerator_module.current_stream())

    monkeypatch.setattr(ModuleGroup, "_transfer_tensor_to_device", _transfer_tensor_to_device)
    broken = dict((a.name, problem) for a, problem in compat.broken_adaptations())
    assert list(broken) == ["streamed group offload"] and "record_stream(default_stream)" in broken[
        "streamed group offload"]


def test_a_changed_start_of_qwen_image_21_is_reported_by_name(monkeypatch):
    """2.1's part-way start computes the shift's mu from one token per latent cell, as its __call__ does; a __call__
    that counted otherwise (2509's 2x2 tokens) is named, and so is a pipeline that packed its noise otherwise."""
    from qvedit.models.diffusers_compat import qwenimage21

    source = qwenimage21.call_source().replace("latents.shape[1],", "latents.shape[1] // 4,")
    monkeypatch.setattr(qwenimage21, "call_source", lambda: source)
    broken = dict((a.name, problem) for a, problem in compat.broken_adaptations())
    assert list(broken) == ["start schedule (2.1)"] and "latents.shape[1]," in broken["start schedule (2.1)"]
    monkeypatch.undo()
    pipeline = qwenimage21._module().QwenImage21Pipeline
    monkeypatch.setattr(pipeline, "_pack_latents", staticmethod(lambda latents, *shape: latents))
    broken = dict((a.name, problem) for a, problem in compat.broken_adaptations())
    assert list(broken) == ["start latents (2.1)"] and ".transpose(1, 2)" in broken["start latents (2.1)"]


def test_a_changed_hook_removal_is_reported_by_name(monkeypatch):
    from diffusers.hooks import HookRegistry

    def remove_hook(self, name, recurse=True):  # a diffusers that leaves the hook's forward on the module
        del self.hooks[name]

    monkeypatch.setattr(HookRegistry, "remove_hook", remove_hook)
    broken = dict((a.name, problem) for a, problem in compat.broken_adaptations())
    assert list(broken) == ["hook removal"] and "old_forward" in broken["hook removal"]

"""The supervoxels step through the pipeline and the ``brainbarriers supervoxels`` command.

The skull-stripping step is another capability; a test-only stand-in makes the brain mask (from the
phantom's truth) and the skull-stripped sequences, so the supervoxels step is exercised as the
pipeline runs it: canonical grid in, label maps exported on the user's grid.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from pipeline_standins import standin_skullstrip

from brainbarriers.cli.main import main as cli_main
from brainbarriers.io import load_volume
from brainbarriers.pipeline import PipelineRun
from brainbarriers.supervoxels.step import STEP, compute_supervoxels

SEQ = ("t1", "t1ce", "t2", "flair")


@pytest.fixture(scope="module")
def pipeline_run(small_case_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sv_run")
    inputs = {s: small_case_dir / f"{s}.nii.gz" for s in SEQ}
    events = []
    run = PipelineRun(inputs, out, [standin_skullstrip(small_case_dir / "brain_mask_truth.nii.gz"),
                                    STEP], device="cpu",
                      options={"supervoxels": {"size": 8}}, on_event=events.append)
    outputs = run.run()
    return out, outputs, events


def test_step_declares_its_products():
    assert STEP.name == "supervoxels"
    assert STEP.inputs == ("brain_mask",)
    assert set(STEP.optional_inputs) == {"t1_brain", "t1ce_brain", "t2_brain", "flair_brain",
                                         "tumor", "tumor_probability"}
    assert set(STEP.outputs) == set(STEP.labels) == {"supervoxels", "supervoxels_merged"}
    from brainbarriers.pipeline.registry import all_steps

    names = [s.name for s in all_steps()]
    assert names.index("tumor") < names.index("supervoxels")  # its merging follows the tumour


def test_pipeline_exports_both_maps_on_the_input_grid(pipeline_run, small_case_dir):
    out, outputs, events = pipeline_run
    truth = load_volume(small_case_dir / "brain_mask_truth.nii.gz")
    over = load_volume(outputs["supervoxels"])
    merged = load_volume(outputs["supervoxels_merged"], allow_empty=True)
    assert over.grid.same_as(truth.grid) and merged.grid.same_as(truth.grid)
    brain = truth.array > 0
    assert np.array_equal(over.array > 0, brain)
    assert np.array_equal(merged.array > 0, brain)
    n_over, n_merged = len(np.unique(over.array)) - 1, len(np.unique(merged.array)) - 1
    assert brain.sum() / 8**3 * 0.6 < n_over < brain.sum() / 8**3 * 1.4
    assert 1 < n_merged < n_over
    manifest = json.loads((out / "manifest.json").read_text())
    step = next(s for s in manifest["steps"] if s["name"] == "supervoxels")
    assert step["status"] == "done" and set(step["inputs"]) >= {"brain_mask", "t1_brain", "flair_brain"}
    assert any(e.event == "progress" and e.step == "supervoxels" for e in events)


def test_step_uses_only_the_sequences_present(small_case):
    mask = small_case.truths["brain_mask"].array > 0
    images = [np.where(mask, small_case.sequences["t2"].array, 0)]
    over, merged, record = compute_supervoxels(images, mask, options={"size": 8})
    assert np.array_equal(over > 0, mask) and merged.max() <= over.max()
    hierarchy = record["hierarchy"]
    assert hierarchy.n == over.max() and record["regions"] == merged.max()
    # the merged map is the hierarchy's level at the default count
    np.testing.assert_array_equal(merged, hierarchy.labels(over, regions=record["regions"]))


def test_bad_options_and_missing_sequences_are_input_errors(small_case):
    from brainbarriers.errors import InputError

    mask = small_case.truths["brain_mask"].array > 0
    with pytest.raises(InputError):
        compute_supervoxels([], mask)
    with pytest.raises(InputError):
        compute_supervoxels([small_case.sequences["t1"].array], mask, options={"size": [4, 4]})


def test_cli_runs_the_step(small_case_dir, tmp_path, monkeypatch, capsys):
    from brainbarriers.pipeline import registry

    standin = standin_skullstrip(small_case_dir / "brain_mask_truth.nii.gz")
    monkeypatch.setattr(registry, "all_steps", lambda: [standin, STEP])
    out = tmp_path / "cli"
    code = cli_main(["supervoxels", "--t1", str(small_case_dir / "t1.nii.gz"),
                     "--flair", str(small_case_dir / "flair.nii.gz"), "--out", str(out),
                     "--size", "9", "--plain-slic", "--device", "cpu", "--json-progress"])
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    step = next(s for s in manifest["steps"] if s["name"] == "supervoxels")
    assert step["options"] == {"size": 9, "adaptive": False}
    assert (out / "supervoxels.nii.gz").exists() and (out / "supervoxels_merged.nii.gz").exists()


def test_cli_without_sequences_is_exit_code_2(tmp_path, capsys):
    assert cli_main(["supervoxels", "--out", str(tmp_path / "x")]) == 2
    assert "no input sequence" in capsys.readouterr().err


def test_with_tumour_labels_the_merging_keeps_fine_regions_around_the_tumour(small_case_dir,
                                                                             tmp_path):
    from brainbarriers.pipeline.core import Step

    truth = load_volume(small_case_dir / "tumor_truth.nii.gz")

    def tumour(ctx):  # the phantom's tumour stands in for the model's
        from brainbarriers.tumor.inference import onto

        return {"tumor": ctx.new_volume(onto(truth, ctx.grid, label=True).array)}

    standin = Step(name="tumor", run=tumour, inputs=("brain_mask",), outputs=("tumor",),
                   labels=("tumor",))
    inputs = {s: small_case_dir / f"{s}.nii.gz" for s in SEQ}
    runs = {}
    for focus in (True, False):
        events = []
        run = PipelineRun(inputs, tmp_path / str(focus),
                          [standin_skullstrip(small_case_dir / "brain_mask_truth.nii.gz"), standin,
                           STEP], device="cpu",
                          options={"supervoxels": {"size": 8, "regions": 40, "focus": focus}},
                          on_event=events.append)
        run.run()
        runs[focus] = (run.get("supervoxels").array, run.get("supervoxels_merged").array,
                       " ".join(e.message or "" for e in events if e.step == "supervoxels"))
    near = run.get("tumor").array > 0
    (over_f, merged_f, said_f), (over_p, merged_p, said_p) = runs[True], runs[False]
    np.testing.assert_array_equal(over_f, over_p)  # the same oversegmentation, merged otherwise
    assert "around the tumour" in said_f and "around the tumour" not in said_p
    assert len(np.unique(merged_f[near])) > len(np.unique(merged_p[near]))
    assert len(np.unique(merged_f[merged_f > 0])) == len(np.unique(merged_p[merged_p > 0])) == 40


def test_the_focus_takes_the_models_probability_when_the_run_has_it(small_case_dir, tmp_path):
    from brainbarriers.pipeline.core import Step
    from brainbarriers.supervoxels.hierarchy import focus_around

    truth = load_volume(small_case_dir / "tumor_truth.nii.gz")

    def tumour(ctx):  # the phantom's tumour, with a low-probability fringe 3 voxels deep
        from scipy import ndimage

        from brainbarriers.tumor.inference import onto

        labels = onto(truth, ctx.grid, label=True).array
        fringe = ndimage.binary_dilation(labels > 0, iterations=3)
        return {"tumor": ctx.new_volume(labels),
                "tumor_probability": ctx.new_volume(np.where(
                    labels > 0, 0.9, np.where(fringe, 0.1, 0.0)).astype(np.float32))}

    standin = Step(name="tumor", run=tumour, inputs=("brain_mask",),
                   outputs=("tumor", "tumor_probability"), labels=("tumor",))
    options = {"size": 8, "regions": 40, "focus_mm": 1}  # the fringe lies beyond 1 mm
    run = PipelineRun({s: small_case_dir / f"{s}.nii.gz" for s in SEQ}, tmp_path / "run",
                      [standin_skullstrip(small_case_dir / "brain_mask_truth.nii.gz"), standin,
                       STEP], device="cpu", options={"supervoxels": dict(options)})
    run.run()
    labels = run.get("tumor")
    images = [run.get(f"{s}_brain").array for s in SEQ]
    brain = run.get("brain_mask").array > 0
    for probability, minimum in ((None, 0.05), (run.get("tumor_probability").array, 0.05),
                                 (run.get("tumor_probability").array, 0.5)):
        focus = focus_around(labels.array > 0, labels.grid.spacing, 1.0, probability=probability,
                             min_probability=minimum)
        expected = compute_supervoxels(images, brain, options=options, focus=focus)[1]
        same = np.array_equal(expected, run.get("supervoxels_merged").array)
        assert same == (probability is not None and minimum == 0.05)

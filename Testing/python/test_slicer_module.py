"""Static checks of the Slicer extension that need no Slicer: the panel's widget names, the
parameter node bindings, the CMake listings, the pinned requirements and the import rules."""

from __future__ import annotations

import ast
import re
import struct
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "SlicerBrainBarriers"
MODULE = MODULE_DIR / "BrainBarriers.py"
UI = MODULE_DIR / "Resources" / "UI" / "BrainBarriers.ui"
sys.path.insert(0, str(MODULE_DIR))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _module_constant(name: str):
    for node in _tree(MODULE).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name
                                                for t in node.targets):
            return ast.literal_eval(node.value)
    raise KeyError(name)


def _ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}


def _used_ui_names() -> set[str]:
    names = set()
    for node in ast.walk(_tree(MODULE)):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ui" and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "self"):
            names.add(node.attr)
    # getattr(self.ui, f"{step}ModelComboBox") for each step with models
    source = MODULE.read_text()
    for pattern in re.findall(r'getattr\(self\.ui, f"\{step\}(\w+)"\)', source):
        names |= {f"{step}{pattern}" for step in _module_constant("MODEL_STEPS")}
    return names


def _parameter_fields() -> dict[str, str]:
    for node in _tree(MODULE).body:
        if isinstance(node, ast.ClassDef) and node.name == "BrainBarriersParameterNode":
            return {s.target.id: ast.unparse(s.annotation) for s in node.body
                    if isinstance(s, ast.AnnAssign)}
    raise AssertionError("no parameter node class")


def test_every_widget_the_module_uses_exists_in_the_ui():
    used = _used_ui_names()
    assert {"applyButton", "cancelButton", "progressBar", "statusLabel"} <= used
    missing = used - set(_ui_widgets())
    assert not missing, f"used in BrainBarriers.py but not in the .ui: {sorted(missing)}"


def test_parameter_bindings_match_the_parameter_node():
    fields = _parameter_fields()
    bound = {}
    for name, widget in _ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = (name, widget.get("class"))
    assert set(bound) <= set(fields), set(bound) - set(fields)
    models = {f"{s}Model" for s in _module_constant("MODEL_STEPS")}  # bound in code
    assert set(fields) - set(bound) == models
    for sequence in _module_constant("SEQUENCES"):
        assert bound[sequence][1] == "qMRMLNodeComboBox"
        assert fields[sequence] == "vtkMRMLScalarVolumeNode"
    for step in _module_constant("STEPS"):
        field = "run" + step.capitalize()
        assert bound[field][1] == "QCheckBox" and fields[field] == "bool"
    for field, choices in (("device", "DEVICES"), ("coregister", "COREGISTER")):
        items = [i.find("property/string").text for i in _ui_widgets()[bound[field][0]].findall("item")]
        assert items == list(_module_constant(choices)), field


def test_module_cmake_lists_every_file():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    listed = set(re.findall(r"^\s+([\w${}/.-]+\.(?:py|ui|png|json|txt))\s*$", text, re.M))
    listed = {f.replace("${MODULE_NAME}", "BrainBarriers") for f in listed}
    for f in listed:
        assert (MODULE_DIR / f).is_file(), f"listed but missing: {f}"
    on_disk = {str(p.relative_to(MODULE_DIR)) for p in MODULE_DIR.rglob("*.py")
               if "__pycache__" not in p.parts}
    assert on_disk <= listed, f"not listed in CMakeLists.txt: {sorted(on_disk - listed)}"
    resources = {str(p.relative_to(MODULE_DIR)) for p in (MODULE_DIR / "Resources").rglob("*")
                 if p.is_file()}
    assert resources <= listed, f"resources not listed: {sorted(resources - listed)}"
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_extension_cmake_metadata():
    text = (ROOT / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS",
                "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS",
                "EXTENSION_DEPENDS"):
        assert re.search(rf'set\({key} "[^"]+"\)', text), key
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in text
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    assert "find_package(Slicer REQUIRED)" in text and "add_subdirectory(SlicerBrainBarriers)" in text
    assert "Slicer_EXTENSION_GENERATE_CONFIG" in text and "Slicer_EXTENSION_CPACK" in text


def test_index_urls_point_at_images_in_this_repository():
    text = (ROOT / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        url = re.search(rf'set\({key} "([^"]+)"\)', text).group(1)
        path = ROOT / url.split("/main/", 1)[1]
        assert path.is_file(), f"{key}: {path} does not exist"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert re.search(r'BrainBarriers_MINIMUM_SLICER_VERSION "5\.10"', text)
    module = MODULE.read_text()
    assert "MINIMUM_SLICER_VERSION = (5, 10)" in module


def test_icon_is_a_128_pixel_png():
    data = (MODULE_DIR / "Resources" / "Icons" / "BrainBarriers.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (128, 128)


def test_missing_requirements_are_found(tmp_path):
    from BrainBarriersLib.dependencies import missing_requirements, torch_missing, torch_requirement

    reqs = tmp_path / "r.txt"
    reqs.write_text("# comment\npytest>=1\nno-such-package-xyz==1.0\nnumpy==0.0.1\npytest<1\n"
                    "torch>=2.8\n")
    # torch is left to the PyTorch extension: reported apart, with its range
    assert missing_requirements(reqs) == ["no-such-package-xyz==1.0", "numpy==0.0.1", "pytest<1"]
    assert torch_requirement(reqs) == ">=2.8"
    assert not torch_missing(reqs)  # this environment's torch is recent enough
    reqs.write_text("torch>=99\n")
    assert torch_missing(reqs)


def test_the_install_holds_every_installed_package_at_its_version(tmp_path):
    import importlib.metadata as md

    from BrainBarriersLib.dependencies import installed_constraints, pip_install_command

    lines = installed_constraints(exclude=["scikit-image", "Nibabel"]).splitlines()
    pins = dict(line.split("==") for line in lines)
    assert pins["numpy"] == md.version("numpy") and pins["scipy"] == md.version("scipy")
    assert "scikit-image" not in pins and "nibabel" not in pins  # these may be installed/upgraded
    command = pip_install_command(["py"], ["nibabel==5.4.2"], tmp_path / "c.txt")
    assert command[:4] == ["py", "-m", "pip", "install"]
    assert "--only-binary=:all:" in command and command[-3:] == ["-c", str(tmp_path / "c.txt"),
                                                                  "nibabel==5.4.2"]


def test_pip_run_hands_out_output_without_blocking_and_keeps_the_log():
    from BrainBarriersLib.dependencies import PipRun

    run = PipRun([sys.executable, "-c", "import sys, time; print('Collecting x'); "
                  "sys.stdout.flush(); time.sleep(0.5); print('ERROR: no wheel', file=sys.stderr); "
                  "sys.exit(3)"])
    assert run.poll() == [] or not run.finished  # returns at once, process still running
    assert run.wait(timeout=10) == 3
    assert run.finished and run.lines == ["Collecting x", "ERROR: no wheel"]
    assert "ERROR: no wheel" in run.log


def _top_level_imports(path: Path) -> set[str]:
    names = set()
    for node in _tree(path).body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_module_loads_without_the_core_dependencies():
    """Slicer imports the module at startup, before anything is installed: only the standard
    library and Slicer's own modules at the top; pip only inside installDependencies."""
    allowed = {"__future__", "logging", "os", "typing", "qt", "slicer", "vtk", "ctk"}
    assert _top_level_imports(MODULE) <= allowed, _top_level_imports(MODULE) - allowed
    for node in ast.walk(_tree(MODULE)):
        if isinstance(node, ast.FunctionDef) and node.name != "installDependencies":
            assert "pip_install" not in ast.unparse(node), node.name


@pytest.mark.parametrize("name", ["worker_client", "runner", "dependencies", "__init__"])
def test_helpers_need_no_qt(name):
    imports = _top_level_imports(MODULE_DIR / "BrainBarriersLib" / f"{name}.py")
    assert not imports & {"qt", "ctk", "PythonQt"}, imports


def test_batch_script_rejects_missing_inputs(capsys):
    sys.path.insert(0, str(MODULE_DIR / "Scripts"))
    import run_batch

    with pytest.raises(SystemExit) as e:
        run_batch.parse(["--out", "x"])
    assert e.value.code == 2
    args = run_batch.parse(["--t1", "a.nii.gz", "--out", "o", "--steps", "ctv", "--set",
                            "ctv.margin_mm=15"])
    assert run_batch.parse_options(args.options) == {"ctv": {"margin_mm": 15}}

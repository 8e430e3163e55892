"""``brainbarriers models list|install|verify|import-monai``: model packages."""

from __future__ import annotations

import argparse
import json


def _list(args: argparse.Namespace) -> int:
    from ..models import list_packages, models_dirs

    packages = list_packages(task=args.task)
    if args.json:
        print(json.dumps([{"name": p.name, "version": p.version, "task": p.task,
                           "architecture": p.manifest["architecture"].get("name"),
                           "inputs": p.inputs, "folds": len(p.weight_keys), "path": str(p.path)}
                          for p in packages], indent=2))
        return 0
    if not packages:
        print("no model packages found in: " + ", ".join(str(d) for d in models_dirs()))
    for p in packages:
        print(p.describe())
    return 0


def _install(args: argparse.Namespace) -> int:
    from ..models import install_package

    pkg = install_package(args.source, sha256=args.sha256, dest=args.dest)
    print(f"installed {pkg.name} {pkg.version} to {pkg.path}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ..models import verify_package

    pkg = verify_package(args.package)
    if args.build:
        for key in pkg.weight_keys:
            pkg.build_network(key)
    print(f"OK {pkg.name} {pkg.version}: {len(pkg.weight_keys)} weights file(s), checksums match"
          + (", networks build" if args.build else ""))
    return 0


def _import_monai(args: argparse.Namespace) -> int:
    from ..models.monai_bundle import import_monai_bundle

    pkg = import_monai_bundle(args.bundle, args.out)
    print(f"imported MONAI bundle as {pkg.name} {pkg.version} at {pkg.path} "
          f"(inputs {','.join(pkg.inputs)})")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list, install, verify or import model packages",
                       description="Model packages: a folder or zip with manifest.json and "
                       "safetensors weights (sha256 in the manifest). Looked up in "
                       "$BRAINBARRIERS_MODELS, ~/.brainbarriers/models and the shipped packages.")
    cmds = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    lp = cmds.add_parser("list", help="installed and shipped packages")
    lp.add_argument("--task", help="only packages of this task (tumor, ...)")
    lp.add_argument("--json", action="store_true")
    lp.set_defaults(func=_list)
    ip = cmds.add_parser("install", help="install a package from a folder, zip or URL "
                         "(downloads only when asked, checksum-verified)")
    ip.add_argument("source", metavar="PATH|URL")
    ip.add_argument("--sha256", help="expected sha256 of the zip/download")
    ip.add_argument("--dest", help="models folder (default: $BRAINBARRIERS_MODELS or ~/.brainbarriers/models)")
    ip.set_defaults(func=_install)
    vp = cmds.add_parser("verify", help="check a package's files and checksums")
    vp.add_argument("package", metavar="PATH|NAME")
    vp.add_argument("--build", action="store_true", help="also build the networks and load weights")
    vp.set_defaults(func=_verify)
    mp = cmds.add_parser("import-monai", help="convert a downloaded MONAI Model Zoo "
                         "brats_mri_segmentation bundle folder into a model package")
    mp.add_argument("bundle", metavar="BUNDLE_DIR")
    mp.add_argument("out", metavar="PACKAGE_DIR")
    mp.set_defaults(func=_import_monai)

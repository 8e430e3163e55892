"""Find the cases of a cohort: BraTS 2018/2021/2023 folders, a BIDS data set, or a CSV.

A case is an id, its sequences (``t1``, ``t1ce``, ``t2``, ``flair``, ``ct``: whatever was found) and,
when one lies beside them, a truth label map (BraTS ``seg``, BIDS ``dseg``, the CSV's ``seg``) that
the cohort scores the tumour against. A case lacking a sequence is still a case: the pipeline says
which step needs it, in that case's row, while the other cases run.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..pipeline.core import SEQUENCES

# Case ids become folder names under OUT.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Case:
    id: str
    inputs: dict[str, str]  # sequence -> path
    truth: str | None = None
    layout: str = ""
    problems: tuple[str, ...] = field(default=())  # found while discovering (say, two T1w files)


def find_cohort(data: str | Path) -> list[Case]:
    """The cases under ``data`` (a folder or a ``.csv``), sorted by id; ids are unique."""
    data = Path(data)
    if data.is_file() and data.suffix.lower() == ".csv":
        cases = _csv_cases(data)
    elif not data.is_dir():
        raise InputError(data, "is neither a folder of cases nor a .csv naming them")
    elif any(data.glob("sub-*")):
        cases = _bids_cases(data)
    else:
        cases = _brats_cases(data)
    if not cases:
        raise InputError(data, "holds no cases: expected BraTS files (BraTS2021_00000_t1ce.nii.gz, "
                         "BraTS-GLI-00000-000-t1c.nii.gz), a BIDS data set (sub-*/anat/*_T1w.nii.gz) "
                         "or a CSV with columns id,t1,t1ce,t2,flair[,ct][,seg]")
    ids = [c.id for c in cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputError(data, f"case id(s) found more than once: {', '.join(dup)}")
    bad = [i for i in ids if not _SAFE_ID.match(i)]
    if bad:
        raise InputError(data, f"case id(s) unusable as folder names: {', '.join(bad)}")
    return sorted(cases, key=lambda c: c.id)


def _brats_cases(data: Path) -> list[Case]:
    """BraTS 2018-2021 (``<id>_t1ce.nii.gz``) and 2023 (``<id>-t1c.nii.gz``) names, any depth.

    The naming table is the tumour trainer's (``tumor.train.NAMING``); unlike its ``find_cases``, a
    case missing a file is kept (its row says what is missing) instead of stopping the cohort.
    """
    from ..tumor.train import NAMING

    cases = []
    for folder in sorted({p.parent for p in data.rglob("*.nii.gz")}):
        names = {p.name for p in folder.glob("*.nii.gz")}
        for release, suffixes in NAMING.items():
            seqs = {k: s for k, s in suffixes.items() if k != "seg"}
            ids = set()
            for suffix in seqs.values():
                pattern = re.compile(r"^(.+)" + re.escape(suffix) + r"\.nii\.gz$")
                ids |= {m.group(1) for m in map(pattern.match, names) if m}
            for case_id in sorted(ids):
                files = {k: folder / f"{case_id}{s}.nii.gz" for k, s in seqs.items()}
                seg = folder / f"{case_id}{suffixes['seg']}.nii.gz"
                cases.append(Case(
                    id=case_id,
                    inputs={k: str(p) for k, p in files.items() if p.is_file()},
                    truth=str(seg) if seg.is_file() else None,
                    layout=f"brats{release}",
                ))
    return cases


# BIDS suffixes (anat): a contrast-enhanced T1w carries the ``ce-`` entity.
_BIDS = re.compile(r"^(?P<stem>sub-[^_]+(?:_ses-[^_]+)?)(?P<entities>(?:_[a-zA-Z]+-[^_]+)*)"
                   r"_(?P<suffix>T1w|T2w|FLAIR|dseg)\.nii(?:\.gz)?$")


def _bids_cases(data: Path) -> list[Case]:
    """``sub-X[/ses-Y]/anat/``: ``_T1w`` (``_ce-<agent>_T1w``: t1ce), ``_T2w``, ``_FLAIR``, and a
    ``_dseg`` truth beside them. Several files for one sequence (runs, acquisitions) are a problem
    the case's row names, not a guess."""
    cases = []
    for anat in sorted(data.glob("sub-*/anat")) + sorted(data.glob("sub-*/ses-*/anat")):
        found: dict[str, list[Path]] = {}
        for path in sorted(anat.iterdir()):
            m = _BIDS.match(path.name)
            if not m:
                continue
            suffix = m.group("suffix")
            if suffix == "T1w":
                key = "t1ce" if "_ce-" in m.group("entities") else "t1"
            else:
                key = {"T2w": "t2", "FLAIR": "flair", "dseg": "seg"}[suffix]
            found.setdefault(key, []).append(path)
        if not found:
            continue
        case_id = "_".join(anat.relative_to(data).parts[:-1])
        problems = tuple(f"{len(v)} {k} files: {', '.join(p.name for p in v)}"
                         for k, v in found.items() if len(v) > 1)
        seg = found.get("seg", [])
        cases.append(Case(
            id=case_id,
            inputs={k: str(v[0]) for k, v in found.items() if k != "seg" and len(v) == 1},
            truth=str(seg[0]) if len(seg) == 1 else None,
            layout="bids",
            problems=problems,
        ))
    return cases


def _csv_cases(path: Path) -> list[Case]:
    """Columns ``id`` (or ``case``), any of ``t1,t1ce,t2,flair,ct``, optional ``seg`` (or
    ``truth``); relative paths are read from the CSV's folder; an empty cell is no file."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip().lower() for c in reader.fieldnames or []]
        id_col = next((c for c in ("id", "case") if c in columns), None)
        if id_col is None or not set(columns) & set(SEQUENCES):
            raise InputError(path, "needs an id column and at least one of "
                             f"{', '.join(SEQUENCES)} (found: {', '.join(columns) or 'nothing'})")
        cases = []
        for row in reader:
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}

            def where(value: str) -> str:
                p = Path(value)
                return str(p if p.is_absolute() else path.parent / p)

            truth = row.get("seg") or row.get("truth")
            cases.append(Case(
                id=row[id_col],
                inputs={s: where(row[s]) for s in SEQUENCES if row.get(s)},
                truth=where(truth) if truth else None,
                layout="csv",
            ))
    return cases

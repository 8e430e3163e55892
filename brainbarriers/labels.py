"""The label maps the product writes, their values, segment names, colours and terminology.

This is the one place that says what each label value means; the ``.seg.nrrd`` writer and the Slicer
scene bridge both read it.

Terminology codes are SNOMED CT (scheme ``SCT``). Every segment's category and type is in the
extension's own context, ``SlicerBrainBarriers/Resources/BrainBarriers.term.json`` (name below),
which the module loads at startup: Slicer's General Anatomy list lacks several of them (falx,
tentorium, the venous sinuses, enhancing tumour; issue 16's review found its cerebellum type
missing too), and one context
the tests can load and check is safer than entries spread over lists that change between Slicer
releases. The codes themselves are the standard ones wherever one was verified.
Where we could not verify a SNOMED CT code (tentorium, superior sagittal and transverse sinus) we use
a private coding scheme, ``99BBR`` (DICOM reserves the "99" prefix for private schemes), rather than
risk a wrong standard code in exported DICOM objects.
"""

from __future__ import annotations

from dataclasses import dataclass

OWN_CONTEXT = "Segmentation category and type - BrainBarriers"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"

ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
MORPHOLOGICALLY_ALTERED = ("SCT", "49755003", "Morphologically Altered Structure")
BRAIN = ("SCT", "12738006", "Brain")


@dataclass(frozen=True)
class SegmentSpec:
    key: str  # stable segment ID
    name: str
    color: tuple[float, float, float]
    category: tuple[str, str, str]
    type: tuple[str, str, str]
    context: str = OWN_CONTEXT
    region: tuple[str, str, str] | None = None  # anatomic region, for morphologically altered types

    def terminology_dict(self) -> dict:
        entry = {
            "contextName": self.context,
            "category": list(self.category),
            "type": list(self.type),
            "anatomicContextName": ANATOMIC_CONTEXT,
        }
        if self.region is not None:
            entry["anatomicRegion"] = list(self.region)
        return entry

    def terminology_string(self) -> str:
        """Slicer's seven ``~``-separated parts, each code ``scheme^value^meaning``."""
        region = "^".join(self.region) if self.region else "^^"
        return "~".join(
            [
                self.context,
                "^".join(self.category),
                "^".join(self.type),
                "^^",
                ANATOMIC_CONTEXT,
                region,
                "^^",
            ]
        )


def _rgb(r: int, g: int, b: int) -> tuple[float, float, float]:
    return (round(r / 255, 4), round(g / 255, 4), round(b / 255, 4))


BRAIN_SEGMENT = SegmentSpec("brain", "Brain", _rgb(250, 250, 225), ANATOMICAL_STRUCTURE, BRAIN)

# BraTS 2021 convention: 1 necrotic core, 2 oedema, 4 enhancing tumour.
TUMOR_SEGMENTS: dict[int, SegmentSpec] = {
    1: SegmentSpec(
        "necrotic_core", "Necrotic tumour core", _rgb(220, 60, 60),
        MORPHOLOGICALLY_ALTERED, ("SCT", "6574001", "Necrosis"), region=BRAIN,
    ),
    2: SegmentSpec(
        "edema", "Peritumoral oedema", _rgb(60, 200, 90),
        MORPHOLOGICALLY_ALTERED, ("SCT", "79654002", "Edema"), region=BRAIN,
    ),
    4: SegmentSpec(
        "enhancing_tumor", "Enhancing tumour", _rgb(250, 220, 40),
        MORPHOLOGICALLY_ALTERED, ("SCT", "108369006", "Neoplasm"), region=BRAIN,
    ),
}

# Anatomical Barriers to Cancer spread. The ABCs 2020 challenge joins 3 and 4 as "sinuses".
BARRIER_SEGMENTS: dict[int, SegmentSpec] = {
    1: SegmentSpec("falx", "Falx cerebri", _rgb(230, 150, 35), ANATOMICAL_STRUCTURE,
                   ("SCT", "279275004", "Falx cerebri")),
    2: SegmentSpec("tentorium", "Tentorium cerebelli", _rgb(180, 100, 220), ANATOMICAL_STRUCTURE,
                   ("99BBR", "BBR0002", "Tentorium cerebelli")),
    3: SegmentSpec("sagittal_sinus", "Sagittal brain sinus", _rgb(0, 120, 255),
                   ANATOMICAL_STRUCTURE, ("99BBR", "BBR0003", "Superior sagittal sinus")),
    4: SegmentSpec("transverse_sinus", "Transverse brain sinus", _rgb(0, 200, 230),
                   ANATOMICAL_STRUCTURE, ("99BBR", "BBR0004", "Transverse sinus")),
    5: SegmentSpec("cerebellum", "Cerebellum", _rgb(240, 140, 170), ANATOMICAL_STRUCTURE,
                   ("SCT", "113305005", "Cerebellum")),
    6: SegmentSpec("ventricles", "Ventricles", _rgb(90, 200, 255), ANATOMICAL_STRUCTURE,
                   ("SCT", "35764002", "Brain ventricle")),
}

CTV_SEGMENT = SegmentSpec(
    "ctv", "CTV", _rgb(255, 90, 200), ("SCT", "246464006", "Function"),
    ("SCT", "228792002", "Clinical target volume"),
)

# Output key -> the segments its label map holds. Keys are the pipeline's output names.
SEGMENTS_BY_OUTPUT: dict[str, dict[int, SegmentSpec]] = {
    "brain_mask": {1: BRAIN_SEGMENT},
    "tumor": TUMOR_SEGMENTS,
    "barriers": BARRIER_SEGMENTS,
    "ctv": {1: CTV_SEGMENT},
}

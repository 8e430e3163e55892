"""Clinical target volume (CTV): the GTV grown by a geodesic margin that does not cross the barriers.

Reading of the ESTRO-EANO glioblastoma guideline (Niyazi et al., Radiother Oncol 184, 2023) used
for the defaults:

- GTV = the contrast-enhancing tumour plus the resection cavity, on post-contrast T1; the
  FLAIR/T2 abnormality (oedema) is not routinely included;
- CTV = GTV + 15 mm isotropic margin, edited at the anatomical barriers to spread (bone / outside
  the brain, falx, tentorium, ...): the margin goes around a barrier, never through it.

BraTS labels have no resection-cavity label. Before surgery the necrotic core (label 1, in BraTS
2021 the necrotic and non-enhancing core) is the region enclosed by the enhancing rim that surgery
removes, and after surgery BraTS-style annotations put the cavity there too; so ``gtv="enhancing"``
takes labels 4 + 1. For BraTS 2021 label maps this equals the tumour core (``gtv="core"``, labels
1, 3, 4: 3 is the non-enhancing label of pre-2017 BraTS maps); ``gtv="whole"`` is the whole tumour
(1, 2, 3, 4). ``add_edema`` adds the oedema (label 2, the FLAIR abnormality beyond the core) as the
guideline allows for special situations (e.g. secondary glioblastoma).

The margin is a geodesic distance in millimetres inside the brain mask minus the barriers chosen
(default falx 1, tentorium 2, sagittal sinus 3, transverse sinus 4; ventricles 6 on request): see
``geodesic``. Everything outside the brain mask is an obstacle too.
"""

from __future__ import annotations

from .ctv import DEFAULT_BARRIERS, GTV_LABELS, ctv_from_gtv, grow_ctv, gtv_mask

__all__ = ["DEFAULT_BARRIERS", "GTV_LABELS", "ctv_from_gtv", "grow_ctv", "gtv_mask"]

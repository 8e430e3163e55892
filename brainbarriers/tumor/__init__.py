"""Tumour sub-region segmentation (BraTS labels 1 necrotic core, 2 oedema, 4 enhancing).

``preprocess`` (normalisation, brain box, regions), ``inference`` (sliding window, TTA, ensemble,
label conversion), ``step`` (the pipeline's ``tumor`` step), ``train`` (``brainbarriers train tumor``),
``losses`` (region Dice + BCE, ConResNet's context-residual loss).
"""

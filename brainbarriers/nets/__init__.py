"""Network architectures.

- ``hnfnet.HNFNetv2``: tumour sub-regions (PMF modules, EMA attention, intra/inter-scale SDE);
- ``conresnet.ConResNet``: tumour sub-regions with inter-slice context residual learning;
- ``hmrnet``: the barriers' HMRNet-p/-s with Bidirectional Feature Calibration;
- ``localiser``: the barriers' coarse localisation network.

Model packages name these in their manifests (``brainbarriers.models.ARCHITECTURES``).
"""

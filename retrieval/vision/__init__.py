"""Framework-free image retrieval code (numpy, OpenCV, TensorFlow in extractors only).

Nothing in this package imports Django. One module per pipeline step:

- ``preprocessing``: decoding and validating uploaded images.
- ``features``: the feature containers and their compact binary format.
- ``extractors``: one module per model, behind the ``Extractor`` interface.
- ``matching``: local descriptor matching.
- ``verification``: geometric verification (RANSAC).
- ``datasets``: loading and validating evaluation datasets.
- ``metrics``: retrieval, recognition and pair metrics.
"""

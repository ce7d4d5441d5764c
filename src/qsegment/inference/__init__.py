"""The inference front end, without PyTorch: a weights file's runtime (:mod:`qsegment.runtimes`)
turned into vessel maps of one's own photographs.

:mod:`~qsegment.inference.maps` runs a runtime on a whole image (resize, pad, test-time
views, the rescale to the training scale); :mod:`~qsegment.inference.predict` holds
:class:`~qsegment.inference.predict.Segmenter` (threshold and tiling) and ``qsegment
predict``'s file handling, which the app and ``qsegment batch`` share.
"""

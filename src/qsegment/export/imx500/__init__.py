"""The Sony IMX500 target: INT8 quantization with Sony's MCT (:mod:`.quantize`, needs
PyTorch), then Sony's converter into ``packerOut.zip`` (:mod:`.convert`, needs Java)."""

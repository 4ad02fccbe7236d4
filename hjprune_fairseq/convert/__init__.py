"""What converts to and from other formats: Hugging Face folders in; slim checkpoints, Hugging Face
folders and ONNX graphs out; exports scored as fairseq-generate scores. Imports the core and the
plugin.
"""

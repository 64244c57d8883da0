"""Handlers written the way TorchServe's documentation and examples write them (``ts.*`` imports), for the parity
suite: each is archived with torch-model-archiver 0.12.0 and served by modelserve and by TorchServe."""

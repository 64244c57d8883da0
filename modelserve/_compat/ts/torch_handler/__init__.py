"""TorchServe's default handlers: ``base_handler``, ``vision_handler``, ``image_classifier``, ``image_segmenter``,
``object_detector``, ``text_handler``, ``text_classifier`` and the request envelopes."""
